"""mnist-classifier: the judge of generated digits (chapter 5), a small CNN trained on the MNIST training set."""

import time

import torch
from tqdm import tqdm

from .. import checkpoints, data, metrics, store
from ..fit import classifier_epoch
from ..models.classifier import Classifier
from ..resumable import TimeBudget


def make_classifier(experiment, meta):
    """The judge's network, for the image shape in meta (MNIST's when it names none)."""
    channels, size, _ = meta.get("image_shape", (1, 28, 28))
    return Classifier(image_channels=channels, image_size=size)


def accuracy(model, images, labels):
    """The fraction of images whose largest logit is their label."""
    return (metrics.classify(model, images)[1].argmax(dim=1) == labels).double().mean().item()


def judge_accuracies(model, train, test):
    """The judge's accuracy on the test and the training images."""
    return {"test_accuracy": accuracy(model, *test), "train_accuracy": accuracy(model, *train)}


def build_classifier(experiment, folder, device, time_budget, needed):
    """Train the judge on the MNIST training images, epoch by epoch with a checkpoint after each (so that a time
    budget stops it cleanly and the next call continues); write its weights and accuracies. Returns its meta."""
    return train_and_store(experiment, folder, device, time_budget, make_classifier, lambda model, generator: model,
                           judge_accuracies)  # fmt: skip


def train_and_store(experiment, folder, device, time_budget, make_model, trained_as, measure):
    """Train make_model(experiment, meta) on the MNIST training images (:func:`fit_epochs`, through
    trained_as(model)), then store its weights and, as metrics, measure(model, (train images, labels), (test images,
    labels)) and the epochs' losses. Returns the meta, or None when the time budget ran out first."""
    config, started = experiment.config, time.perf_counter()
    train = tuple(tensor.to(device) for tensor in data.mnist_images(train=True))
    torch.manual_seed(config["seed"])  # the initial weights, and the dropout masks from here on
    meta = {"image_shape": list(train[0].shape[1:])}
    model = make_model(experiment, meta).to(device)
    generator = torch.Generator().manual_seed(config["seed"])
    trained = fit_epochs(experiment, folder / "run", model, trained_as(model, generator), train, generator, device,
                         time_budget)  # fmt: skip
    if trained is None:
        return None
    losses, seconds = trained
    model.eval()
    test = tuple(tensor.to(device) for tensor in data.mnist_images(train=False))
    found = {**measure(model, train, test), "epoch_losses": losses}
    seconds += time.perf_counter() - started
    store.save_weights(folder, model.state_dict())
    store.save_json(folder, "metrics.json", found)
    measured = ", ".join(f"{name} {value}" for name, value in found.items() if name != "epoch_losses")
    print(f"{experiment.name}: {measured}; {seconds:.0f} s", flush=True)
    steps = config["epochs"] * (len(train[0]) // config["batch_size"])
    return {**meta, "seconds": seconds, "steps": steps, "final_loss": losses[-1]}


def fit_epochs(experiment, run, model, trained, examples, generator, device, time_budget):
    """Adam on the cross-entropy of trained(images) for experiment.config["epochs"] epochs (:func:`classifier_epoch`),
    resumably: a checkpoint of model, optimizer and generator in run/ after each epoch, so that a time budget stops
    it cleanly and the next call continues. ``trained`` is model itself, or a wrapper that feeds it (one that noises
    its inputs). Returns (the epochs' mean losses, seconds of the finished epochs), or None when the budget ran out.
    """
    config, budget = experiment.config, TimeBudget(time_budget)
    store.forget_other_runs(run, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    losses, seconds = [], 0.0
    checkpoint = run / "checkpoint.safetensors"
    if checkpoint.exists():
        losses, seconds = _resume(checkpoint, model, optimizer, generator, device)
    epochs = config["epochs"]
    progress = tqdm(total=epochs, initial=len(losses), desc=experiment.name, unit="epoch")
    while len(losses) < epochs:
        if budget.spent():
            progress.close()
            print(f"{experiment.name}: trained {len(losses)}/{epochs} epochs; run the build again", flush=True)
            return None
        trained.train()
        losses.append(classifier_epoch(trained, optimizer, *examples, len(losses), epochs, config["batch_size"],
                                       config["lr"], generator))  # fmt: skip
        _save(checkpoint, model, optimizer, generator, losses, seconds + budget.elapsed(), device)
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        progress.update(1)
    progress.close()
    return losses, seconds


def _save(path, model, optimizer, generator, losses, seconds, device):
    optimizer_tensors, param_groups = checkpoints.optimizer_state(optimizer)
    tensors = {
        **checkpoints.prefixed("model", model.state_dict()),
        **checkpoints.prefixed("optimizer", optimizer_tensors),
        **checkpoints.prefixed("rng", checkpoints.rng_states(device)),
        "generator": generator.get_state(),
    }
    checkpoints.save(path, tensors, {"losses": losses, "seconds": seconds, "param_groups": param_groups})


def _resume(path, model, optimizer, generator, device):
    tensors, meta = checkpoints.load(path, device)
    model.load_state_dict(checkpoints.unprefixed("model", tensors))
    checkpoints.restore_optimizer(optimizer, checkpoints.unprefixed("optimizer", tensors), meta["param_groups"])
    checkpoints.restore_rng_states(checkpoints.unprefixed("rng", tensors), device)
    generator.set_state(tensors["generator"].cpu())
    return meta["losses"], meta["seconds"]
