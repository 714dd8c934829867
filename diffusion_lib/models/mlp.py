"""A small residual MLP that predicts the noise eps from (x_t, t), or (x_t, t, y), for low-dimensional data."""

from torch import nn

from .embeddings import ClassEmbedding, TimeEmbedding, check_unconditional


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
    """eps_theta(x_t, t) for data of shape (B, dim): an input layer, residual blocks, an output layer.

    With ``num_classes`` set it is conditional, eps_theta(x_t, t, y): a label's learned vector is added to the time
    features, and label num_classes (or no label) is the null label of classifier-free guidance.
    """

    def __init__(self, dim=2, width=128, depth=3, time_dim=64, num_classes=None):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.time = TimeEmbedding(time_dim, width)
        self.label = None if num_classes is None else ClassEmbedding(num_classes, width)
        self.input = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, t, y=None):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        time_features = self.time(t)
        if self.label is None:
            check_unconditional(self, y)
        else:
            time_features = time_features + self.label(y, t)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, time_features)
        return self.output(h)
