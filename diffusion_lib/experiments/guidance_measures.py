"""mnist-guidance-measures: what chapter 9 reads off its classifiers and its guidance sweep, measured once.

* the accuracy of the noise-conditional classifier (mnist-noisy-classifier) and
  of the judge (mnist-classifier, trained on clean digits only) on the MNIST
  test set noised to each of a few steps t;
* the judge's per-digit measures (:func:`~diffusion_lib.evaluation.per_class_measures`)
  of every setting of mnist-guidance, against a reference of test digits, beside
  the same measures of floor sets of real test digits of the sweep's size.
"""

import time

import torch

from .. import data, store
from ..evaluation import floor_and_reference_rows, per_class_measures
from ..schedules import NoiseSchedule


@torch.no_grad()
def noisy_accuracies(classifiers, schedule, images, labels, steps, generator):
    """{name: [accuracy at each step]} of classifiers (x_t, t) -> logits on images noised to each step, every
    classifier on the same noisy images."""
    found = {name: [] for name in classifiers}
    for step in steps:
        t = torch.full((len(images),), step)
        noisy = schedule.q_sample(images, t, torch.randn(images.shape, generator=generator))
        for name, classifier in classifiers.items():
            found[name].append((classifier(noisy, t).argmax(1) == labels).double().mean().item())
    return found


def build_guidance_measures(experiment, folder, device, time_budget, needed):
    """Measure and store metrics.json; on the CPU (a few minutes). Returns the meta."""
    config, started = experiment.config, time.perf_counter()
    judge, noisy = needed["mnist-classifier"].model, needed["mnist-noisy-classifier"]
    sweep = needed["mnist-guidance"]
    test_images, test_labels = data.mnist_images(train=False)
    train_images = data.mnist_images(train=True)[0]
    trained_on = noisy.meta["config"]
    schedule = NoiseSchedule.named(trained_on["schedule"], T=trained_on["T"])
    classifiers = {"noise-conditional classifier": noisy.model, "judge": lambda x, t: judge(x)}
    accuracy = config["accuracy"]
    generator = torch.Generator().manual_seed(accuracy["seed"])
    accuracies = noisy_accuracies(classifiers, schedule, test_images, test_labels, accuracy["steps"], generator)

    per_digit = sweep.metrics["images_per_class"]
    floor_rows, reference_rows = floor_and_reference_rows(
        test_labels, per_digit, config["floor"]["max_sets"], torch.Generator().manual_seed(config["floor"]["seed"])
    )
    reference = (test_images[reference_rows], test_labels[reference_rows])
    stored = sweep.tensors("samples.safetensors")
    requested = stored["labels"]
    settings = {}
    for setting in sweep.metrics["settings"]:  # in the order of the sweep's config
        images = data.from_bytes(stored[setting])
        settings[setting] = per_class_measures(images, requested, judge, *reference, train_images)
        print(f"{setting}: " + ", ".join(f"{key} {value:.3f}" for key, value in settings[setting].items()), flush=True)
    floors = [
        per_class_measures(test_images[rows], test_labels[rows], judge, *reference, train_images) for rows in floor_rows
    ]
    found = {
        "accuracy": {"steps": accuracy["steps"], **accuracies},
        "images_per_class": per_digit,
        "settings": settings,
        "floors": floors,
    }
    store.save_json(folder, "metrics.json", found)
    return {"seconds": time.perf_counter() - started}
