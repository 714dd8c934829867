"""mnist-noisy-classifier: p(y | x_t, t) trained on noised MNIST, the classifier of classifier guidance."""

import torch

from ..fit import Noised
from ..models.noisy_classifier import NoisyClassifier
from ..schedules import NoiseSchedule
from .judge import train_and_store


def make_noisy_classifier(experiment, meta):
    """The noise-conditional classifier, for the image shape in meta."""
    channels, size, _ = meta["image_shape"]
    return NoisyClassifier(image_channels=channels, image_size=size, width=experiment.config["width"])


def noise_schedule(experiment):
    """The forward process whose noisy images the classifier learns to read."""
    return NoiseSchedule.named(experiment.config["schedule"], T=experiment.config["T"])


@torch.no_grad()
def accuracy_by_step(model, schedule, images, labels, steps, seed):
    """The fraction of x_t ~ q(x_t | x_0) classified as the label of x_0, at each step t in ``steps``."""
    generator = torch.Generator().manual_seed(seed)
    found = {}
    for step in steps:
        t = torch.full((len(images),), step, dtype=torch.long)
        correct = 0
        for start in range(0, len(images), 1000):
            x0, t_batch = images[start : start + 1000], t[start : start + 1000]
            eps = torch.randn(x0.shape, generator=generator).to(x0.device)
            logits = model(schedule.q_sample(x0, t_batch.to(x0.device), eps), t_batch.to(x0.device))
            correct += (logits.argmax(dim=1) == labels[start : start + 1000]).sum().item()
        found[str(step)] = correct / len(images)
    return found


def build_noisy_classifier(experiment, folder, device, time_budget, needed):
    """Train on MNIST training images noised at a uniform random step (resumably, epoch by epoch); store the weights
    and the test accuracy at several steps. Returns the meta, or None when the time budget ran out first."""
    config, schedule = experiment.config, noise_schedule(experiment).to(device)

    def measure(model, train, test):
        steps = config["report_steps"]
        return {"test_accuracy_by_step": accuracy_by_step(model, schedule, *test, steps, config["seed"])}

    return train_and_store(experiment, folder, device, time_budget, make_noisy_classifier,
                           lambda model, generator: Noised(model, schedule, generator), measure)  # fmt: skip
