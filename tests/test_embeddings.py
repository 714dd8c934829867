"""The sinusoidal time embedding (models/embeddings.py), against its formula evaluated in Python floats and its
defining property: inner products that depend only on the difference of steps."""

import math

import pytest
import torch

from diffusion_lib.models import sinusoidal_embedding
from diffusion_lib.models.embeddings import ClassEmbedding


def test_sinusoidal_embedding_matches_the_formula():
    k = 8
    steps = [0, 1, 7, 250, 999]
    embedding = sinusoidal_embedding(torch.tensor(steps), 2 * k)
    for row, t in zip(embedding.tolist(), steps, strict=True):
        omegas = [10000 ** (-i / k) for i in range(k)]
        expected = [math.cos(w * t) for w in omegas] + [math.sin(w * t) for w in omegas]
        assert row == pytest.approx(expected, abs=2e-4)  # float32 angles up to 1000 radians


def test_embedding_inner_product_depends_only_on_the_step_difference():
    k = 16
    e = sinusoidal_embedding(torch.arange(300), 2 * k).to(torch.float64)
    gram = e @ e.T
    assert torch.allclose(gram.diagonal(), torch.full((300,), float(k), dtype=torch.float64), atol=1e-4)
    for shift in (1, 17, 150):
        diagonal = gram.diagonal(shift)
        assert (diagonal - diagonal.mean()).abs().max() < 1e-3, shift


def test_time_embedding_needs_an_even_dimension(mentions):
    with pytest.raises(ValueError, match=mentions("dim", "7")):
        sinusoidal_embedding(torch.arange(3), 7)


def test_class_embedding_reads_labels_with_or_without_steps_and_names_bad_input():
    torch.manual_seed(0)
    embedding = ClassEmbedding(num_classes=3, dim=4)
    y, t = torch.tensor([0, 2, 3]), torch.tensor([5, 6, 7])
    assert torch.equal(embedding(y), embedding.weight[y])  # the steps only fix the expected shape
    assert torch.equal(embedding(y, t), embedding.weight[y])
    assert torch.equal(embedding(None, t), embedding.weight[[3, 3, 3]])  # no labels: the null label 3
    with pytest.raises(ValueError, match="without labels y, the steps t are needed"):
        embedding(None)
    with pytest.raises(ValueError, match=r"labels y must be an int64 or int32 tensor of shape \(3,\)"):
        embedding(y[:2], t)
    with pytest.raises(ValueError, match="label -1 out of range: allowed 0..2, or 3 for the null label"):
        embedding(torch.tensor([-1]))
