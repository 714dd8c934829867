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
