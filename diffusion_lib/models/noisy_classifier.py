"""A noise-conditional classifier: logits of p(y | x_t, t), the classifier of classifier guidance."""

import torch.nn.functional as F
from torch import nn

from .embeddings import TimeEmbedding


class NoisyClassifier(nn.Module):
    """p(y | x_t, t) for noisy images x_t at step t, the classifier of classifier guidance (Dhariwal and Nichol 2021).

    Two stages of two 3x3 convolutions and a 2x2 max-pool, then a hidden layer
    and the class logits, as the judge's; the step's embedding is added to the
    channels of each stage and to the hidden layer, so that one network
    classifies at every noise level. SiLU activations keep grad_x log p(y | x_t, t),
    which guidance follows, continuous in x_t.
    """

    def __init__(self, image_channels=1, image_size=28, num_classes=10, width=32, feature_dim=128):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 poolings), got {image_size}")
        self.image_channels, self.image_size = image_channels, image_size
        embedding_dim = 4 * width
        self.time_embedding = TimeEmbedding(width, embedding_dim)
        self.stages = nn.ModuleList([
            nn.ModuleList([nn.Conv2d(image_channels, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)]),
            nn.ModuleList([nn.Conv2d(width, 2 * width, 3, padding=1), nn.Conv2d(2 * width, 2 * width, 3, padding=1)]),
        ])  # fmt: skip
        self.stage_times = nn.ModuleList([nn.Linear(embedding_dim, width), nn.Linear(embedding_dim, 2 * width)])
        self.hidden = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim)
        self.hidden_time = nn.Linear(embedding_dim, feature_dim)
        self.logits = nn.Linear(feature_dim, num_classes)

    def forward(self, x, t):
        expected = (self.image_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if t.shape != x.shape[:1]:
            raise ValueError(f"t must have shape ({x.shape[0]},), one step per image, got {tuple(t.shape)}")
        embedding = F.silu(self.time_embedding(t))
        h = x
        for (first, second), stage_time in zip(self.stages, self.stage_times, strict=True):
            h = second(F.silu(first(h))) + stage_time(embedding)[:, :, None, None]
            h = F.max_pool2d(F.silu(h), 2)
        h = F.silu(self.hidden(h.flatten(1)) + self.hidden_time(embedding))
        return self.logits(h)
