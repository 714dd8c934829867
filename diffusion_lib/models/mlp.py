"""A small residual MLP that predicts the noise eps from (x_t, t) for low-dimensional data."""

from torch import nn

from .embeddings import TimeEmbedding


class ResidualBlock(nn.Module):
    """x + W2 SiLU(W1 LayerNorm(x) + time features)."""

    def __init__(self, width):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.outer = nn.Sequential(nn.SiLU(), nn.Linear(width, width))

    def forward(self, h, time_features):
        return h + self.outer(self.inner(self.norm(h)) + time_features)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) for data of shape (B, dim): an input layer, residual blocks, an output layer."""

    def __init__(self, dim=2, width=128, depth=3, time_dim=64):
        super().__init__()
        self.dim = dim
        self.time = TimeEmbedding(time_dim, width)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, t):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        time_features = self.time(t)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, time_features)
        return self.output(h)
