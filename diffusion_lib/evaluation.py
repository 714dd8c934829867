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


@torch.no_grad()
def per_class_measures(images, requested, judge, reference_images, reference_labels, train_images):
    """The measures of class-conditional samples (chapter 9), images (n, C, H, W) drawn for the labels requested.

    agreement: the fraction the judge assigns to the requested class; confident_fraction: the fraction it assigns
    there with probability >= 0.9; kid: the mean over classes of KID (eq. `kid`) between a class's images and the
    reference images of that class, with kid_standard_error from the classes' jackknife errors (independent, so
    their variances add); fid: the mean over classes of the per-class FID (biased upwards when a class has few
    images: read it beside a floor); variety: the mean over classes of the mean pairwise distance of the judge's
    features; copied_fraction: the fraction of images whose nearest/second-nearest distance ratio to the training
    images is below 1/3 (Gu et al. 2023).
    """
    features, probabilities = metrics.classify(judge, images)
    reference_features = metrics.classify(judge, reference_images)[0]
    found = probabilities.max(dim=1)
    agrees = found.indices == requested
    classes = requested.unique().tolist()
    kids = [metrics.kid(features[requested == k], reference_features[reference_labels == k]) for k in classes]
    return {
        "agreement": agrees.double().mean().item(),
        "confident_fraction": (agrees & (found.values >= 0.9)).double().mean().item(),
        "kid": sum(value for value, _ in kids) / len(classes),
        "kid_standard_error": sum(error**2 for _, error in kids) ** 0.5 / len(classes),
        "fid": sum(metrics.fid(features[requested == k], reference_features[reference_labels == k]) for k in classes)
        / len(classes),
        "variety": sum(metrics.mean_pairwise_distance(features[requested == k]) for k in classes) / len(classes),
        "copied_fraction": metrics.copied_fraction(images.flatten(1), train_images.flatten(1)),
    }


def floor_and_reference_rows(labels, per_class, max_sets, generator):
    """Rows of a labelled set (labels (n,)) for per-class measures read beside their floor: up to ``max_sets``
    disjoint floor sets, each with ``per_class`` rows of every class, and the remaining rows as the reference.

    Each class is shuffled first (by ``generator``), so that no set is taken from one end of the file (MNIST's test
    set has other writers in its first half than in its second); at most half of the smallest class goes to floor
    sets. Returns (list of floor row tensors, reference row tensor).
    """
    class_rows = [rows[torch.randperm(len(rows), generator=generator)] for rows in
                  (torch.nonzero(labels == k)[:, 0] for k in labels.unique().tolist())]  # fmt: skip
    sets = min(max_sets, min(len(rows) for rows in class_rows) // (2 * per_class))
    floor = [torch.cat([rows[k * per_class : (k + 1) * per_class] for rows in class_rows]) for k in range(sets)]
    return floor, torch.cat([rows[sets * per_class :] for rows in class_rows])
