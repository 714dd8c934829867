"""mnist-judge-features: the judge's features and class probabilities of the images the chapters measure, once.

The judge (mnist-classifier) reads the MNIST test set, the first images of the
training set and the stored samples of mnist-ddpm; chapters 5 and 6 compute FID,
KID, precision and recall and the confident fraction from these instead of
classifying tens of thousands of images at every build. Features are stored in
float16 (they are ReLU outputs below 100, which float16 keeps to 3 significant
digits; FID moves by about 1e-5 of itself), probabilities in float32.
"""

import time

from .. import data, metrics, store


def image_sets(config, ddpm):
    """{set name: images in [-1, 1]}: the test set, the first config["train_images"] training images, mnist-ddpm's
    stored samples."""
    return {
        "test": data.mnist_images(train=False)[0],
        "train": data.mnist_images(train=True)[0][: config["train_images"]],
        "mnist-ddpm": data.from_bytes(ddpm.tensors("samples.safetensors")["samples"]),
    }


def build_judge_features(experiment, folder, device, time_budget, needed):
    """Classify every set and store features.safetensors ("<set>/features", "<set>/probabilities"). Returns the
    meta."""
    started = time.perf_counter()
    judge = needed["mnist-classifier"].model.to(device)
    tensors = {}
    for name, images in image_sets(experiment.config, needed["mnist-ddpm"]).items():
        features, probabilities = metrics.classify(judge, images.to(device))
        tensors[f"{name}/features"] = features.half()
        tensors[f"{name}/probabilities"] = probabilities.float()
    store.save_tensors(folder, "features.safetensors", tensors)
    return {"seconds": time.perf_counter() - started}
