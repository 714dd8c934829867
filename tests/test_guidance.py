"""Guidance against closed forms and finite differences.

On a Gaussian mixture whose components are the classes every quantity is exact: the unconditional and per-class
noise predictions (MixtureDenoiser) and the class posterior p(y | x_t) (its responsibilities). Bayes' rule for scores
then says that classifier guidance at scale 1 with the exact posterior is the exact conditional model, and that with
exact models classifier guidance and classifier-free guidance coincide at every scale. Float64 throughout: the
quantities pass through a softmax, one autograd pass and a division by sqrt(1 - alpha_bar_t) >= 0.01, so their
rounding errors stay far below the 1e-10 tolerance (RTOL64), which is still millions of times smaller than any
difference of formulas.
"""

import pytest
import torch

from diffusion_lib.fit import Noised, drop_labels, fit
from diffusion_lib.guidance import classifier_free, classifier_guided, limited_interval, log_likelihood_gradient
from diffusion_lib.models.mlp import MLPDenoiser
from diffusion_lib.models.noisy_classifier import NoisyClassifier
from diffusion_lib.models.unet import UNet
from diffusion_lib.optimal import ClassMixture, MixtureDenoiser
from diffusion_lib.sampling import SAMPLERS, sample
from diffusion_lib.schedules import NoiseSchedule

RTOL64 = ATOL64 = 1e-10
MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
STD = 0.5
NULL = len(MEANS)


@pytest.fixture(scope="module")
def mixture():
    """(schedule, conditional eps(x, t, y) with y = 3 the null label, class posterior logits(x, t)) of the mixture."""
    schedule = NoiseSchedule.linear(100)
    unconditional = MixtureDenoiser(MEANS, schedule, std=STD)
    per_class = [MixtureDenoiser(MEANS[k : k + 1], schedule, std=STD) for k in range(NULL)]

    def conditional(x, t, y):
        eps = unconditional(x, t)
        for k, denoiser in enumerate(per_class):
            chosen = y == k
            eps[chosen] = denoiser(x[chosen], t[chosen])
        return eps

    conditional.num_classes = NULL

    def class_logits(x, t):
        """log p(y = k | x_t) up to a constant: -|x_t - sqrt(alpha_bar_t) mu_k|^2 / (2 v_t), v_t = alpha_bar_t std^2
        + 1 - alpha_bar_t, the components' equal weights cancelling."""
        alpha_bar = schedule.alpha_bars[t][:, None]
        v = alpha_bar * STD**2 + 1 - alpha_bar
        return -(x[:, None, :] - alpha_bar[:, :, None].sqrt() * MEANS).pow(2).sum(-1) / (2 * v)

    return schedule, conditional, class_logits


@pytest.fixture(scope="module")
def points():
    generator = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    t = torch.randint(0, 100, (64,), generator=generator)
    y = torch.randint(0, NULL, (64,), generator=generator)
    return x, t, y


def test_classifier_free_is_unconditional_at_0_conditional_at_1_and_linear_in_the_scale(mixture, points):
    _, conditional, _ = mixture
    x, t, y = points
    unconditional, labelled = conditional(x, t, torch.full_like(y, NULL)), conditional(x, t, y)
    torch.testing.assert_close(classifier_free(conditional, y, 0.0)(x, t), unconditional, rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(classifier_free(conditional, y, 1.0)(x, t), labelled, rtol=RTOL64, atol=ATOL64)
    expected = unconditional + 3.5 * (labelled - unconditional)
    torch.testing.assert_close(classifier_free(conditional, y, 3.5)(x, t), expected, rtol=RTOL64, atol=ATOL64)
    # one label for every image is the same as that label repeated
    torch.testing.assert_close(
        classifier_free(conditional, 2, 2.0)(x, t), classifier_free(conditional, torch.full_like(y, 2), 2.0)(x, t)
    )


def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_model_bayes_rule(mixture, points):
    """grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x): at scale 1 the guided eps is the class's own."""
    schedule, conditional, class_logits = mixture
    x, t, y = points
    unconditional = lambda x, t: conditional(x, t, torch.full_like(t, NULL))  # noqa: E731
    guided = classifier_guided(unconditional, class_logits, schedule, y, 1.0)
    with torch.no_grad():  # as inside a sampler: the gradient is still computed
        torch.testing.assert_close(guided(x, t), conditional(x, t, y), rtol=RTOL64, atol=ATOL64)
    # with exact models, classifier guidance and classifier-free guidance are the same at every scale
    for scale in (0.0, 0.5, 2.0, 5.0):
        torch.testing.assert_close(
            classifier_guided(unconditional, class_logits, schedule, y, scale)(x, t),
            classifier_free(conditional, y, scale)(x, t),
            rtol=RTOL64,
            atol=ATOL64,
        )


def test_the_classifier_gradient_matches_central_differences():
    """Central differences of log p(y | x_t, t) with h = 1e-5 in float64: their error, h^2/6 times a third derivative
    of order one, is about 1e-11, and the rounding error of the difference about 1e-16 / h = 1e-11."""
    torch.manual_seed(0)
    classifier = NoisyClassifier(width=4, feature_dim=16).double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64)
    t, y = torch.tensor([0, 400, 999]), torch.tensor([3, 7, 1])
    with torch.no_grad():
        gradient = log_likelihood_gradient(classifier, x, t, y)

        def log_p(z):
            return classifier(z, t).log_softmax(dim=1).gather(1, y[:, None]).squeeze(1)

        h = 1e-5
        for pixel in [(0, 0, 0), (0, 14, 14), (0, 27, 3), (0, 9, 20)]:
            step = torch.zeros_like(x)
            step[(slice(None), *pixel)] = h
            difference = (log_p(x + step) - log_p(x - step)) / (2 * h)
            torch.testing.assert_close(gradient[(slice(None), *pixel)], difference, rtol=1e-6, atol=1e-8)


def test_classifier_guidance_shifts_eps_by_the_scaled_gradient():
    schedule = NoiseSchedule.linear(1000)
    torch.manual_seed(0)
    classifier = NoisyClassifier(width=4, feature_dim=16).double().eval()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    t, y = torch.tensor([10, 900]), torch.tensor([4, 5])
    eps = torch.randn_like(x)
    guided = classifier_guided(lambda x, t: eps, classifier, schedule, y, 2.5)(x, t)
    gradient = log_likelihood_gradient(classifier, x, t, y)
    expected = eps - 2.5 * (1 - schedule.alpha_bars[t]).sqrt()[:, None, None, None] * gradient
    torch.testing.assert_close(guided, expected, rtol=RTOL64, atol=ATOL64)


@pytest.fixture(scope="module")
def small_networks():
    torch.manual_seed(0)
    unet = UNet(image_size=8, channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(),
                num_classes=10).eval()  # fmt: skip
    classifier = NoisyClassifier(image_size=8, width=4, feature_dim=8).eval()
    return unet, classifier


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_both_guided_models(small_networks, sampler):
    unet, classifier = small_networks
    schedule = NoiseSchedule.linear(20)
    calls = []

    def counted(x, t, y):
        calls.append(len(x))
        return unet(x, t, y)

    counted.num_classes = 10
    y = torch.arange(4)
    free = classifier_free(counted, y, 3.0)
    guided = classifier_guided(lambda x, t: unet(x, t), classifier, schedule, y, 3.0)
    for model in (free, guided):
        x = sample(model, schedule, (4, 1, 8, 8), sampler=sampler, num_steps=5,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    per_step = SAMPLERS[sampler].calls_per_step
    network_calls = 5 * per_step - (per_step - 1)  # Heun's last step, to sigma = 0, is one Euler step
    assert calls == [8] * network_calls  # one network call of 2B images per evaluation
    calls.clear()
    sample(classifier_free(counted, y, 1.0), schedule, (4, 1, 8, 8), sampler=sampler, num_steps=5)
    assert calls == [4] * network_calls  # scale 1 is the conditional model alone: B images per evaluation


def test_bad_input_is_named(small_networks):
    unet, classifier = small_networks
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="labels y must be integers, got dtype torch.float32"):
        classifier_free(unet, torch.tensor([1.0, 2.0]), 2.0)(x, t)
    with pytest.raises(ValueError, match=r"labels y must be one integer or one per image, shape \(2,\); got \(3,\)"):
        classifier_free(unet, torch.tensor([1, 2, 3]), 2.0)(x, t)
    with pytest.raises(ValueError, match="label 12 out of range: allowed 0..9, or 10 for the null label"):
        classifier_free(unet, 12, 2.0)(x, t)
    with pytest.raises(ValueError, match="scale must be a real number, got '2'"):
        classifier_free(unet, 1, "2")
    with pytest.raises(ValueError, match="scale must be a real number, got True"):
        classifier_guided(unet, classifier, NoiseSchedule.linear(10), 1, True)
    for infinite in (float("nan"), float("inf"), -float("inf")):  # would sample NaN images without a word
        with pytest.raises(ValueError, match=f"scale must be a finite number, got {infinite}"):
            classifier_free(unet, 1, infinite)
    with pytest.raises(ValueError, match="model has no num_classes to name its null label; pass null_label"):
        classifier_free(lambda x, t, y: x, 1, 2.0)
    assert classifier_free(lambda x, t, y: y.double(), 1, 2.0, null_label=5)(x, t).tolist() == [-3.0, -3.0]
    unconditional = UNet(image_size=8, channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=())
    with pytest.raises(ValueError, match="model has no num_classes"):
        classifier_free(unconditional, 1, 2.0)
    with pytest.raises(ValueError, match="label 10 out of range: the classifier knows labels 0..9"):
        classifier_guided(unconditional, classifier, NoiseSchedule.linear(10), 10, 2.0)(x, t)
    with pytest.raises(ValueError, match=r"t must have shape \(2,\), one step per image, got \(\)"):
        classifier(x, torch.tensor(3))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got \(2, 1, 28, 28\)"):
        classifier(torch.zeros(2, 1, 28, 28), t)


def test_the_noisy_classifier_depends_on_the_step(small_networks):
    _, classifier = small_networks
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        early, late = classifier(x, torch.tensor([0, 0])), classifier(x, torch.tensor([900, 900]))
    assert early.shape == (2, 10) and not torch.allclose(early, late)


def test_noised_feeds_the_classifier_x_t_drawn_from_its_generator():
    """Noised draws t then eps (in the images' dtype) from its generator and feeds q_sample(x_0, t, eps): the same
    draws made by hand give the same input, and a generator restored to an earlier state repeats them (so a
    checkpoint resumes them)."""
    schedule = NoiseSchedule.linear(1000)
    seen = []

    def recording(x, t):
        seen.append((x, t))
        return torch.zeros(len(x), 10)

    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    x0 = torch.rand(6, 1, 4, 4, dtype=torch.float64) * 2 - 1
    Noised(recording, schedule, generator)(x0)
    by_hand = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (6,), generator=by_hand)
    eps = torch.randn(x0.shape, generator=by_hand, dtype=torch.float64)
    torch.testing.assert_close(seen[0][0], schedule.q_sample(x0, t, eps), rtol=0, atol=0)
    assert torch.equal(seen[0][1], t)
    generator.set_state(state)
    Noised(recording, schedule, generator)(x0)
    assert torch.equal(seen[1][0], seen[0][0]) and torch.equal(seen[1][1], seen[0][1])


def test_limited_interval_guides_exactly_the_steps_whose_noise_level_lies_in_it():
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) computed here from the betas, step by step."""
    schedule = NoiseSchedule.linear(1000)
    alpha_bars = torch.cumprod(1 - schedule.betas, dim=0)
    sigma = ((1 - alpha_bars) / alpha_bars).sqrt()
    model = limited_interval(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x), schedule, 0.28, 5.42)
    t = torch.arange(1000)
    guided = model(torch.zeros(1000, 1), t)[:, 0].bool()
    assert torch.equal(guided, (sigma > 0.28) & (sigma <= 5.42)) and 0 < guided.sum() < 1000

    # a batch entirely inside or outside calls only one of the two
    def never(x, t):
        raise AssertionError("called outside its interval")

    assert (
        limited_interval(never, lambda x, t: x, schedule, 0.28, 5.42)(torch.ones(2, 1), torch.tensor([0, 0])).sum() == 2
    )
    assert limited_interval(lambda x, t: x, never, schedule, 0.28, 5.42)(torch.ones(1, 1), torch.tensor([300])) == 1
    # the interval is open below and closed above: alpha_bar_0 = 1/2 makes sigma_0 = 1 exactly
    exact = NoiseSchedule.from_alpha_bars(torch.tensor([0.5, 0.25], dtype=torch.float64))
    step_0 = torch.tensor([0])
    for low, high, expected in ((0.5, 1.0, 1.0), (1.0, 2.0, 0.0)):
        chosen = limited_interval(lambda x, t: torch.ones_like(x), lambda x, t: torch.zeros_like(x), exact, low, high)
        assert chosen(torch.zeros(1, 1), step_0).item() == expected
    with pytest.raises(ValueError, match="need 0 <= sigma_low < sigma_high, got sigma_low=3, sigma_high=1"):
        limited_interval(model, model, schedule, 3, 1)


def test_class_mixture_is_the_per_class_and_unconditional_denoiser_and_its_logits_the_class_posterior(mixture, points):
    schedule, conditional, class_logits = mixture
    x, t, y = points
    exact = ClassMixture(MEANS, schedule, STD)
    for labels in (y, torch.full_like(y, NULL)):
        torch.testing.assert_close(exact(x, t, labels), conditional(x, t, labels), rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(exact(x, t), conditional(x, t, torch.full_like(y, NULL)), rtol=RTOL64, atol=ATOL64)
    torch.testing.assert_close(
        exact.class_logits(x, t).softmax(1), class_logits(x, t).softmax(1), rtol=RTOL64, atol=ATOL64
    )


def test_the_class_posterior_and_conditional_denoiser_match_monte_carlo_over_clean_points():
    """p_t(k | x_t) is proportional to E_{x_0 ~ class k} q(x_t | x_0), and E[x_0 | x_t, k] is the average of x_0
    weighted by q(x_t | x_0): both estimated from 400,000 clean points per class. Tolerance: 5 standard errors of
    the self-normalised estimates (delta method), computed from the same draws."""
    schedule = NoiseSchedule.linear(100)
    exact = ClassMixture(MEANS, schedule, STD)
    generator = torch.Generator().manual_seed(1)
    xt, t = torch.tensor([[0.3, 0.4]], dtype=torch.float64), torch.tensor([60])
    alpha_bar = schedule.alpha_bars[60].double()
    likelihoods, x0_means, x0_errors = [], [], []
    for mean in MEANS:
        x0 = mean + STD * torch.randn(400_000, 2, generator=generator, dtype=torch.float64)
        q = torch.exp(-(xt - alpha_bar.sqrt() * x0).pow(2).sum(1) / (2 * (1 - alpha_bar)))  # q(x_t | x_0) / const
        weights = q / q.sum()
        x0_mean = weights @ x0
        likelihoods.append((q.mean(), q.std() / len(q) ** 0.5))
        x0_means.append(x0_mean)
        x0_errors.append(((weights[:, None] * (x0 - x0_mean)).pow(2).sum(0)).sqrt())
    mass = torch.stack([value for value, _ in likelihoods])
    monte_carlo_posterior = mass / mass.sum()
    posterior_error = torch.stack([error for _, error in likelihoods]) / mass.sum()
    exact_posterior = exact.class_logits(xt, t).softmax(1)[0]
    assert ((exact_posterior - monte_carlo_posterior).abs() <= 5 * posterior_error).all()
    for k in range(NULL):
        eps = exact(xt, t, torch.tensor([k]))
        exact_x0 = (xt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
        assert ((exact_x0[0] - x0_means[k]).abs() <= 5 * x0_errors[k]).all()


def test_a_conditional_mlp_reads_its_labels_and_refuses_bad_ones():
    torch.manual_seed(0)
    model = MLPDenoiser(dim=2, width=16, depth=1, time_dim=8, num_classes=3)
    x, t = torch.randn(4, 2), torch.tensor([0, 5, 9, 50])
    with torch.no_grad():
        model.label.weight.normal_()  # the label vectors differ, so the labels change eps
        by_label = [model(x, t, torch.full((4,), k)) for k in range(4)]
        assert all(not torch.allclose(by_label[0], other) for other in by_label[1:])
        assert torch.equal(model(x, t), by_label[3])  # no labels: the null label 3
    with pytest.raises(ValueError, match="label 4 out of range: allowed 0..2, or 3 for the null label"):
        model(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match=r"labels y must be an int64 or int32 tensor of shape \(4,\)"):
        model(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="this MLPDenoiser is unconditional"):
        MLPDenoiser(dim=2, width=16, depth=1, time_dim=8)(x, t, torch.zeros(4, dtype=torch.long))


def test_class_dropout_replaces_labels_by_the_null_label_at_its_rate():
    """Of 200,000 labels about 10 % become the null label: the count is binomial(200,000, 0.1), so 5 standard
    deviations is 671; the labels that stay are unchanged."""
    labels = torch.arange(200_000) % 3
    dropped = drop_labels(labels, 3, 0.1, torch.Generator().manual_seed(0))
    n, p = len(labels), 0.1
    assert abs((dropped == 3).sum().item() - n * p) <= 5 * (n * p * (1 - p)) ** 0.5
    assert torch.equal(dropped[dropped != 3], labels[dropped != 3])
    assert torch.equal(drop_labels(labels, 3, 0.0), labels)  # no dropout: every label stays
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=f"class_dropout must be in \\[0, 1\\), got {bad}"):
            drop_labels(labels, 3, bad)


def test_fit_trains_a_conditional_model_on_labels_with_class_dropout():
    seen = []

    class Recorder(torch.nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t, y):
            seen.append(y.clone())
            return self.scale * x

    data = torch.randn(30, 2)
    labels = torch.arange(30) % 3
    fit(Recorder(), NoiseSchedule.linear(10), data, steps=50, batch_size=400, labels=labels, class_dropout=0.2,
        generator=torch.Generator().manual_seed(0))  # fmt: skip
    seen = torch.cat(seen)
    n, p = len(seen), 0.2  # 20,000 labels, binomial count of nulls: 5 standard deviations is 283
    assert abs((seen == 3).sum().item() - n * p) <= 5 * (n * p * (1 - p)) ** 0.5
    assert set(seen.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="got 29 labels for 30 data points"):
        fit(Recorder(), NoiseSchedule.linear(10), data, steps=1, labels=labels[:29])
