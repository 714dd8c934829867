"""The evaluation protocol (evaluation.py): every measure of evaluate_samples against the same measure computed
here from first principles, on a small MNIST (256 training and 128 test images, conftest.py); per_class_measures
against loops over images and classes on small float64 data.

The MNIST images are parsed from the raw IDX files by hand; the judge is a fixed
random Classifier; features, probabilities, fractions and nearest-neighbour
distances are computed directly, and FID through metrics.fid (which
test_metrics.py checks against scipy) on the features computed here.
"""

import numpy as np
import pytest
import torch

from diffusion_lib import metrics
from diffusion_lib.evaluation import evaluate_samples, floor_and_reference_rows, per_class_measures
from diffusion_lib.models.classifier import Classifier


def raw_images(root, split):
    """All images of an IDX3 file of the small MNIST, in [-1, 1], parsed by hand (a 16-byte header, then pixels)."""
    pixels = np.fromfile(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", dtype=np.uint8, offset=16)
    return torch.tensor(pixels.reshape(-1, 1, 28, 28), dtype=torch.float32) / 127.5 - 1


@pytest.fixture(scope="module")
def evaluated(small_mnist_root):
    """evaluate_samples on 64 noisy copies of training images, with reference_size 100, and what it needs."""
    train, test = raw_images(small_mnist_root, "train"), raw_images(small_mnist_root, "t10k")
    assert len(train) == 256 and len(test) == 128
    generator = torch.Generator().manual_seed(0)
    samples = (train[:64] + 0.3 * torch.randn(64, 1, 28, 28, generator=generator)).clamp(-1, 1)
    torch.manual_seed(0)
    judge = Classifier().eval()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFUSION_DATA", str(small_mnist_root))
        found = evaluate_samples(samples, judge, "cpu", reference_size=100)
    return found, samples, judge, train, test


def test_fid_is_against_the_test_images_and_the_floor_against_reference_training_images(evaluated):
    found, samples, judge, train, test = evaluated
    with torch.no_grad():
        features, test_features, train_features = judge.features(samples), judge.features(test), judge.features(train)
    expected = metrics.fid(features, test_features)
    # The same features in the same order: only float64 rounding of the Frechet distance can differ.
    assert found["fid"] == pytest.approx(expected, rel=1e-9)
    assert found["fid_floor"] == pytest.approx(metrics.fid(train_features[:100], test_features), rel=1e-9)
    # The check can tell the sets apart: against the training images (where the samples come from) or against
    # all 256 training images as the floor's reference, the values differ by far more than the tolerance.
    assert abs(metrics.fid(features, train_features) - expected) > 1e-3 * expected
    assert abs(metrics.fid(train_features, test_features) - found["fid_floor"]) > 1e-3 * found["fid_floor"]


def test_classifier_measures_by_hand(evaluated):
    found, samples, judge, _, _ = evaluated
    with torch.no_grad():
        probabilities = judge(samples).double().softmax(dim=1)
    top = probabilities.max(dim=1)
    assert found["num_samples"] == 64
    # float32 logits: probabilities within 1e-6 of these; no sample lies that close to the 0.9 threshold here.
    assert ((top.values - 0.9).abs() > 1e-5).all()
    assert found["confident_fraction"] == pytest.approx((top.values >= 0.9).double().mean().item(), abs=1e-12)
    counts = [(top.indices == k).sum().item() for k in range(10)]
    assert found["class_fractions"] == pytest.approx([c / 64 for c in counts], abs=1e-12)


def test_nearest_training_distances_by_brute_force(evaluated):
    found, samples, _, train, test = evaluated

    def median_nearest(x):
        distances = ((x.flatten(1).double()[:, None] - train.flatten(1).double()[None]) ** 2).sum(-1).sqrt()
        return distances.min(dim=1).values.median().item()

    # float32 distances of about 10 over 784 pixels: a few units of 1e-6 relative.
    assert found["median_nearest_train_distance"] == pytest.approx(median_nearest(samples), rel=1e-5)
    assert found["median_test_nearest_train_distance"] == pytest.approx(median_nearest(test), rel=1e-5)


class LinearJudge:
    """features(x) = tanh(flatten(x) W); logits(f) = f V: a judge whose answers are known."""

    def __init__(self, generator, in_dim=12, feature_dim=4, classes=3):
        self.w = torch.randn(in_dim, feature_dim, generator=generator, dtype=torch.float64)
        self.v = 3 * torch.randn(feature_dim, classes, generator=generator, dtype=torch.float64)

    def features(self, x):
        return torch.tanh(x.flatten(1) @ self.w)

    def logits(self, features):
        return features @ self.v


def test_per_class_measures_match_loops_over_images_and_classes():
    generator = torch.Generator().manual_seed(0)
    judge = LinearJudge(generator)
    images = torch.randn(24, 3, 2, 2, generator=generator, dtype=torch.float64)
    requested = torch.arange(24) % 3
    reference = torch.randn(60, 3, 2, 2, generator=generator, dtype=torch.float64)
    reference_labels = torch.arange(60) % 3
    train = torch.cat([images[:6], torch.randn(40, 3, 2, 2, generator=generator, dtype=torch.float64)])
    found = per_class_measures(images, requested, judge, reference, reference_labels, train)

    probabilities = [judge.logits(judge.features(image[None]))[0].softmax(0) for image in images]
    agreement = [p.argmax().item() == y.item() for p, y in zip(probabilities, requested, strict=True)]
    confident = [a and p.max().item() >= 0.9 for a, p in zip(agreement, probabilities, strict=True)]
    assert found["agreement"] == pytest.approx(sum(agreement) / 24, abs=1e-15)
    assert found["confident_fraction"] == pytest.approx(sum(confident) / 24, abs=1e-15)
    assert 0 < found["confident_fraction"] < found["agreement"] < 1  # the data exercise every case

    features, reference_features = judge.features(images), judge.features(reference)
    kids = [metrics.kid(features[k::3], reference_features[k::3]) for k in range(3)]
    assert found["kid"] == pytest.approx(sum(value for value, _ in kids) / 3, rel=1e-12)
    assert found["kid_standard_error"] == pytest.approx((sum(e**2 for _, e in kids) / 9) ** 0.5, rel=1e-12)
    fids = [metrics.fid(features[k::3], reference_features[k::3]) for k in range(3)]
    assert found["fid"] == pytest.approx(sum(fids) / 3, rel=1e-12)
    spreads = [
        sum((features[i] - features[j]).norm().item() for i in range(k, 24, 3) for j in range(k, 24, 3) if i != j) / 56
        for k in range(3)
    ]  # 8 images per class, 56 ordered pairs
    assert found["variety"] == pytest.approx(sum(spreads) / 3, rel=1e-12)
    assert found["copied_fraction"] == 6 / 24  # the first six images are training images: ratio 0


def test_floor_and_reference_rows_split_every_class_without_overlap():
    labels = torch.tensor([0] * 9 + [1] * 12 + [2] * 7)
    floor, reference = floor_and_reference_rows(
        labels, per_class=1, max_sets=5, generator=torch.Generator().manual_seed(0)
    )
    assert len(floor) == 3  # at most half of the smallest class (7 rows) goes to sets of 1 per class
    for rows in floor:
        assert sorted(labels[rows].tolist()) == [0, 1, 2]
    every = torch.cat([*floor, reference])
    assert sorted(every.tolist()) == list(range(len(labels)))  # disjoint, and nothing left out
    capped, _ = floor_and_reference_rows(labels, per_class=1, max_sets=2, generator=torch.Generator().manual_seed(0))
    assert len(capped) == 2
    shuffled, _ = floor_and_reference_rows(labels, per_class=2, max_sets=1, generator=torch.Generator().manual_seed(1))
    assert shuffled[0][:2].tolist() != [0, 1]  # not the first rows of the class in file order (for this seed)
