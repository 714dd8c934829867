"""Small in-memory fitting (fit.py): the learning rate, the shared optimisation step, fit on 2-D data and
fit_classifier.

fit is checked end to end: a small MLP trained on a Gaussian mixture samples
within 3 times the data-vs-data floor of sliced Wasserstein distance.
"""

import copy
import math

import pytest
import torch

from diffusion_lib import NoiseSchedule, sample
from diffusion_lib.data import toy_data
from diffusion_lib.fit import cosine_learning_rate, fit, fit_classifier, optimisation_step
from diffusion_lib.metrics import sliced_wasserstein
from diffusion_lib.models import MLPDenoiser


def test_cosine_learning_rate_falls_from_lr_to_zero():
    assert cosine_learning_rate(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_learning_rate(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_learning_rate(0.1, 100, 100) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("steps, batch_size, name, value", [(0, 8, "steps", "0"), (5, 0, "batch_size", "0")])
def test_fit_needs_positive_steps_and_batch_size(schedule, steps, batch_size, name, value, mentions):
    model = MLPDenoiser(dim=2, width=8, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=mentions(name, value)):
        fit(model, schedule, torch.zeros(16, 2), steps=steps, batch_size=batch_size)


# The shared optimisation step -------------------------------------------------------------------------------------


def tiny_regression(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    return model, torch.randn(16, 3, generator=torch.Generator().manual_seed(seed))


def gradient_by_hand(model, x):
    """The gradient of sum(model(x)^2) in float64, from a copy of the model, and its global norm."""
    reference = copy.deepcopy(model).double()
    reference(x.double()).pow(2).sum().backward()
    grads = [p.grad.detach().clone() for p in reference.parameters()]
    return grads, math.sqrt(sum(g.pow(2).sum().item() for g in grads))


@pytest.mark.parametrize("clip_fraction", [None, 0.25, 4.0], ids=["no clip", "clipped", "clip above the norm"])
def test_optimisation_step_sets_the_rate_and_clips_the_global_norm(clip_fraction):
    """With SGD the step is -lr g' where g' is g scaled by grad_clip / (|g| + 1e-6) when that is below 1 (the
    global norm over all parameters, as clip_grad_norm_ documents it); g and |g| computed in float64 here."""
    model, x = tiny_regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # the second step must see only its own gradient (the first one's is cleared)
        grads, norm = gradient_by_hand(model, x)
        grad_clip = None if clip_fraction is None else clip_fraction * norm
        scale = 1.0 if grad_clip is None else min(1.0, grad_clip / (norm + 1e-6))
        before = [p.detach().double().clone() for p in model.parameters()]
        optimisation_step(optimizer, model(x).pow(2).sum(), lr=0.5, grad_clip=grad_clip)
        assert optimizer.param_groups[0]["lr"] == 0.5
        for b, p, g in zip(before, model.parameters(), grads, strict=True):
            # float32 forward and backward against float64: a few units of 6e-8 relative of the gradient.
            torch.testing.assert_close(b - p.detach().double(), 0.5 * scale * g, rtol=1e-5, atol=1e-6)


# Batches and learning rates of fit and fit_classifier; fit_classifier learns ---------------------------------------


class IndexReader(torch.nn.Module):
    """Logits W flatten(x) + b; records the images each call received (read from their first pixel) and its logits."""

    def __init__(self, pixels, classes):
        super().__init__()
        self.linear = torch.nn.Linear(pixels, classes)
        self.batches, self.logits = [], []

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        self.batches.append(x[:, 0, 0, 0].round().long().tolist())
        self.logits.append(logits.detach().double())
        return logits


def recording_learning_rates(monkeypatch):
    """Wrap fit.py's optimisation_step (it still runs) to record the learning rate of every step."""
    import diffusion_lib.fit as fit_module

    rates, original = [], fit_module.optimisation_step

    def recording(optimizer, loss, lr, grad_clip=None):
        rates.append(lr)
        original(optimizer, loss, lr, grad_clip)

    monkeypatch.setattr(fit_module, "optimisation_step", recording)
    return rates


def test_fit_classifier_visits_each_epoch_in_a_fresh_order_and_averages_its_losses(monkeypatch):
    """50 images of which image i holds i in its first pixel, batches of 8: each epoch takes 6 disjoint batches of
    8 distinct images (the last 2 dropped) in an order that changes between epochs; the learning rate falls along
    a half cosine over the 18 steps; each epoch's loss is the mean over its batches of the cross-entropy, computed
    here by hand from the logits the network gave."""
    n, batch_size, epochs, lr = 50, 8, 3, 0.05
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n, 1, 2, 2, generator=generator)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    labels = torch.randint(0, 3, (n,), generator=generator)
    torch.manual_seed(0)
    model = IndexReader(4, 3)
    rates = recording_learning_rates(monkeypatch)
    losses = fit_classifier(model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr, generator=generator)
    assert not model.training
    steps = epochs * (n // batch_size)
    assert len(model.batches) == steps
    assert rates == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(steps)], rel=1e-12)
    epoch_batches = [model.batches[e * 6 : (e + 1) * 6] for e in range(epochs)]
    for batches in epoch_batches:
        assert all(len(batch) == batch_size for batch in batches)
        assert len({i for batch in batches for i in batch}) == 6 * batch_size
    assert len({tuple(map(tuple, batches)) for batches in epoch_batches}) == epochs
    assert len(losses) == epochs
    for e, loss in enumerate(losses):
        by_hand = []
        for batch, logits in zip(epoch_batches[e], model.logits[e * 6 : (e + 1) * 6], strict=True):
            log_probabilities = logits - logits.exp().sum(dim=1, keepdim=True).log()
            by_hand.append(-log_probabilities[torch.arange(batch_size), labels[batch]].mean().item())
        assert loss == pytest.approx(sum(by_hand) / len(by_hand), rel=1e-5)  # float32 logits


def test_fit_draws_batches_from_the_data_and_follows_the_learning_rate(monkeypatch):
    """fit's minibatches are rows of the data drawn with replacement, every row alike (over 400 draws of 10 rows
    from 8 each row's count is Binomial(4000, 1/8), within 5 standard deviations of 500); the learning rate falls
    along a half cosine with decay, stays at lr without; the losses are those of the steps; the model ends in eval
    mode."""
    import diffusion_lib.fit as fit_module

    data = torch.arange(8.0)[:, None].expand(8, 2).contiguous()
    batches, losses_seen, original = [], [], fit_module.l_simple

    def recording(model, schedule, batch, generator=None, labels=None):
        batches.append(batch[:, 0].long())
        loss = original(model, schedule, batch, generator, labels)
        losses_seen.append(loss.item())
        return loss

    monkeypatch.setattr(fit_module, "l_simple", recording)
    rates = recording_learning_rates(monkeypatch)
    schedule = NoiseSchedule.linear(T=10)
    model = MLPDenoiser(width=8, depth=1, time_dim=8)
    generator = torch.Generator().manual_seed(0)
    losses = fit(model, schedule, data, steps=400, batch_size=10, lr=0.01, generator=generator)
    assert not model.training
    assert losses == pytest.approx(losses_seen, rel=1e-12) and len(losses) == 400
    assert rates == pytest.approx([0.005 * (1 + math.cos(math.pi * k / 400)) for k in range(400)], rel=1e-12)
    drawn = torch.cat(batches)
    assert all(len(batch) == 10 for batch in batches)
    counts = torch.bincount(drawn, minlength=8)
    assert len(counts) == 8 and ((counts - 500).abs() < 5 * math.sqrt(4000 / 8 * 7 / 8)).all(), counts
    rates.clear()
    fit(model, schedule, data, steps=3, batch_size=4, lr=0.01, generator=generator, decay=False)
    assert rates == [0.01, 0.01, 0.01]


def reference_fit(model, images, labels, epochs, batch_size, lr, generator):
    """Adam on the cross-entropy over a fresh random order of minibatches each epoch, the learning rate falling
    along a half cosine from lr to 0: the recipe fit_classifier documents, written out here."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = len(images) // batch_size
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * per_epoch + i) / (epochs * per_epoch)))
            batch = order[i * batch_size : (i + 1) * batch_size]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
            optimizer.step()
    return model.eval()


def test_fit_classifier_learns_digits_far_above_chance_and_as_well_as_the_recipe():
    """A small classifier fitted on 1500 of scikit-learn's digits, judged on the other 297.

    Chance (1/10): the number right is then Binomial(297, 0.1), mean 29.7, standard deviation 5.2; the bar is that
    mean plus 5 standard deviations (accuracy 0.19; a chance-level classifier clears it with probability below
    1e-6). The recipe written out in reference_fit reaches an accuracy p; two classifiers of accuracy p on the same
    297 images differ by at most sqrt(2 p (1 - p) / 297) in one standard deviation, so fit_classifier must come
    within 5 of those of it (about 0.16 at p = 0.8).
    """
    from diffusion_lib.data import as_tensors, image_dataset
    from diffusion_lib.models.classifier import Classifier

    train_images, train_labels = as_tensors(image_dataset("digits"))
    test_images, test_labels = as_tensors(image_dataset("digits", train=False))
    n = len(test_labels)

    def accuracy(model):
        with torch.no_grad():
            return (model(test_images).argmax(dim=1) == test_labels).double().mean().item()

    options = dict(epochs=3, batch_size=16, lr=3e-3)
    torch.manual_seed(0)
    model = Classifier(image_size=8, width=8, feature_dim=32)
    losses = fit_classifier(model, train_images, train_labels, generator=torch.Generator().manual_seed(0), **options)
    assert not model.training
    assert losses[-1] < losses[0] < math.log(10) + 0.5
    torch.manual_seed(1)
    reference = Classifier(image_size=8, width=8, feature_dim=32)
    reference_fit(reference, train_images, train_labels, generator=torch.Generator().manual_seed(1), **options)

    found, expected = accuracy(model), accuracy(reference)
    chance = 0.1
    assert found * n > n * chance + 5 * math.sqrt(n * chance * (1 - chance)), found
    assert found > expected - 5 * math.sqrt(2 * expected * (1 - expected) / n), (found, expected)


@pytest.mark.parametrize("epochs, batch_size, name", [(0, 8, "epochs"), (2, 0, "batch_size")])
def test_fit_classifier_needs_positive_epochs_and_batch_size(epochs, batch_size, name, mentions):
    with pytest.raises(ValueError, match=mentions(name, "0")):
        fit_classifier(torch.nn.Linear(4, 2), torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), epochs, batch_size)


def test_fit_classifier_refuses_a_batch_larger_than_the_data(mentions):
    with pytest.raises(ValueError, match=mentions("batch_size", "(9)", "(8)")):
        fit_classifier(torch.nn.Linear(4, 2), torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), batch_size=9)


def test_counts_are_integers_from_1_not_booleans_or_floats(mentions):
    images, labels = torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)
    for bad in (True, 2.0):
        with pytest.raises(ValueError, match=mentions("epochs", repr(bad))):
            fit_classifier(torch.nn.Linear(4, 2), images, labels, epochs=bad)
    assert len(fit_classifier(torch.nn.Linear(4, 2), images, labels, epochs=1, batch_size=8)) == 1


# fit end to end ---------------------------------------------------------------------------------------------------


def test_a_small_trained_model_samples_close_to_the_data():
    """After 600 steps the samples are within 3x the data-vs-data floor and 3x closer than an untrained model's."""
    torch.manual_seed(11)
    g = torch.Generator().manual_seed(11)
    schedule = NoiseSchedule.cosine(T=200)
    data = toy_data("gaussian_mixture", 5000, g)
    n = 1000

    def distance(x):
        return sum(sliced_wasserstein(x, toy_data("gaussian_mixture", n, g), generator=g) for _ in range(3)) / 3

    floor = sum(distance(toy_data("gaussian_mixture", n, g)) for _ in range(3)) / 3
    model = MLPDenoiser(width=64, depth=2, time_dim=32)
    with torch.no_grad():
        untrained = distance(sample(model, schedule, (n, 2), generator=g, clip_x0=True))
    losses = fit(model, schedule, data, steps=600, batch_size=256, lr=3e-3, generator=g)
    with torch.no_grad():
        trained = distance(sample(model, schedule, (n, 2), generator=g, clip_x0=True))
    assert sum(losses[-50:]) < sum(losses[:50])
    assert trained < 3 * floor, (trained, floor)
    assert untrained > 3 * trained, (untrained, trained)


def test_fitting_draws_only_from_the_generator_it_is_given():
    """Randomness is explicit: with the same generator seed and the same initial weights, fit (with and without
    labels, whose dropout draws from the generator too) and fit_classifier repeat exactly, whatever the global
    generator's state (reseeded differently before each run)."""

    def run_fit(global_seed):
        torch.manual_seed(0)
        model = MLPDenoiser(width=8, depth=1, time_dim=8)
        torch.manual_seed(global_seed)
        data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
        schedule = NoiseSchedule.linear(T=10)
        return fit(model, schedule, data, steps=5, batch_size=4, generator=torch.Generator().manual_seed(2))

    def run_conditional_fit(global_seed):
        torch.manual_seed(0)
        model = MLPDenoiser(width=8, depth=1, time_dim=8, num_classes=3)
        torch.manual_seed(global_seed)
        data = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(32) % 3
        return fit(model, NoiseSchedule.linear(T=10), data, steps=5, batch_size=4, labels=labels, class_dropout=0.5,
                   generator=torch.Generator().manual_seed(2))  # fmt: skip

    def run_fit_classifier(global_seed):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        torch.manual_seed(global_seed)
        images = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
        labels = torch.arange(40) % 3
        generator = torch.Generator().manual_seed(2)
        return fit_classifier(model, images, labels, epochs=3, batch_size=8, lr=0.1, generator=generator)

    assert run_fit(10) == run_fit(11)
    assert run_conditional_fit(10) == run_conditional_fit(11)
    assert run_fit_classifier(10) == run_fit_classifier(11)
