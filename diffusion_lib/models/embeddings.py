"""Sinusoidal embeddings of the step index t, shared by every denoiser."""

import math

import torch
from torch import nn


def sinusoidal_embedding(t, dim, max_period=10_000):
    """[cos(t w_1), ..., cos(t w_k), sin(t w_1), ..., sin(t w_k)], w_i = max_period^(-i/k), eq. `time-embedding`.

    The Transformer's position encoding (Vaswani et al. 2017) applied to the
    step index: returns shape (B, dim) for t of shape (B,).
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP, as in Ho et al. (2020)."""

    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim))

    def forward(self, t):
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class ClassEmbedding(nn.Embedding):
    """A learned vector for each label 0..num_classes-1 and one more for the null label num_classes ("no label"),
    the class input of a conditional denoiser (Ho and Salimans 2022).

    ``forward(y, t=None)`` checks that y is an integer tensor (of t's shape when the steps t are given) whose
    values are labels, and reads no labels (y None) as the null label for every step of t.
    """

    def __init__(self, num_classes, dim):
        super().__init__(num_classes + 1, dim)
        self.num_classes = num_classes

    def forward(self, y, t=None):
        if y is None:
            if t is None:
                raise ValueError("without labels y, the steps t are needed to give one null label per step")
            y = torch.full_like(t, self.num_classes)
        expected = tuple(y.shape if t is None else t.shape)
        if tuple(y.shape) != expected or y.dtype not in (torch.int32, torch.int64):
            got = f"{y.dtype} {tuple(y.shape)}"
            raise ValueError(f"labels y must be an int64 or int32 tensor of shape {expected}, got {got}")
        if y.device.type == "cpu" and ((y < 0) | (y > self.num_classes)).any():
            bad, k = y[(y < 0) | (y > self.num_classes)][0].item(), self.num_classes
            raise ValueError(f"label {bad} out of range: allowed 0..{k - 1}, or {k} for the null label")
        return super().forward(y)


def check_unconditional(model, y):
    """The error for labels given to a denoiser built without num_classes."""
    if y is not None:
        raise ValueError(f"this {type(model).__name__} is unconditional (num_classes=None) but got labels y")
