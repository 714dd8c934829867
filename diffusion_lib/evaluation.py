"""The book's evaluation protocol for a set of generated MNIST digits (chapter 5).

The judge is a classifier; its hidden-layer features serve FID. Every
measure is reported beside the value that real images reach, so that a
number can be read against its floor.
"""

import torch

from . import data, metrics


@torch.no_grad()
def evaluate_samples(samples, classifier, device, reference_size=10_000):
    """The book's measures of generated digits, against the MNIST test set; see the evaluation chapter.

    Returns the fraction classified with confidence >= 0.9, the class
    fractions, the FID to the test set beside its floor (reference_size
    training images against the test set), and the median distance from a
    sample, and from a test image, to its nearest training image.
    """
    train_images = data.mnist_images(train=True)[0].to(device)
    test_images = data.mnist_images(train=False)[0].to(device)
    features, probabilities = metrics.classify(classifier, samples)
    test_features, _ = metrics.classify(classifier, test_images)
    train_features, _ = metrics.classify(classifier, train_images[:reference_size])
    flat_train = train_images.flatten(1)
    return {
        "num_samples": len(samples),
        "confident_fraction": metrics.confident_fraction(probabilities, 0.9),
        "class_fractions": metrics.class_fractions(probabilities).tolist(),
        "fid": metrics.fid(features, test_features),
        "fid_floor": metrics.fid(train_features, test_features),
        "median_nearest_train_distance": metrics.nearest_distances(samples.flatten(1), flat_train).median().item(),
        "median_test_nearest_train_distance": metrics.nearest_distances(test_images.flatten(1), flat_train)
        .median()
        .item(),
    }
