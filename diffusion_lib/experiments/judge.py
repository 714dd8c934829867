"""mnist-classifier: the judge of generated digits (chapter 5), a small CNN trained on the MNIST training set."""

import time

import torch

from .. import data, metrics, store
from ..fit import fit_classifier
from ..models.classifier import Classifier


def make_classifier(experiment, meta):
    """The judge's network, for the image shape in meta (MNIST's when it names none)."""
    channels, size, _ = meta.get("image_shape", (1, 28, 28))
    return Classifier(image_channels=channels, image_size=size)


def accuracy(model, images, labels):
    """The fraction of images whose largest logit is their label."""
    return (metrics.classify(model, images)[1].argmax(dim=1) == labels).double().mean().item()


def build_classifier(experiment, folder, device, time_budget, needed):
    """Train the judge on the MNIST training images; write its weights and accuracies. Returns its meta."""
    config, started = experiment.config, time.perf_counter()
    train_images, train_labels = (tensor.to(device) for tensor in data.mnist_images(train=True))
    test_images, test_labels = (tensor.to(device) for tensor in data.mnist_images(train=False))
    torch.manual_seed(config["seed"])
    meta = {"image_shape": list(train_images.shape[1:])}
    model = make_classifier(experiment, meta).to(device)
    generator = torch.Generator().manual_seed(config["seed"])
    losses = fit_classifier(
        model, train_images, train_labels, config["epochs"], config["batch_size"], config["lr"], generator
    )
    found = {
        "test_accuracy": accuracy(model, test_images, test_labels),
        "train_accuracy": accuracy(model, train_images, train_labels),
        "epoch_losses": losses,
    }
    seconds = time.perf_counter() - started
    store.save_weights(folder, model.state_dict())
    store.save_json(folder, "metrics.json", found)
    print(f"{experiment.name}: test accuracy {found['test_accuracy']:.4f} in {seconds:.0f} s", flush=True)
    steps = config["epochs"] * (len(train_images) // config["batch_size"])
    return {**meta, "seconds": seconds, "steps": steps, "final_loss": losses[-1]}
