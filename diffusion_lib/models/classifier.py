"""A small convolutional classifier: the judge of generated digits and the feature map of FID."""

import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """Two stages of two 3x3 convolutions and a 2x2 max-pool, then a hidden layer and the class logits.

    ``features(x)`` returns the hidden layer's activations (the penultimate
    layer, eq. `fid`); ``forward(x)`` returns logits over ``num_classes``.
    """

    def __init__(self, image_channels=1, image_size=28, num_classes=10, width=32, feature_dim=128, dropout=0.25):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4 (two 2x2 poolings), got {image_size}")
        self.image_channels, self.image_size = image_channels, image_size
        self.convolutions = nn.Sequential(
            nn.Conv2d(image_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.hidden = nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Linear(feature_dim, num_classes)

    def features(self, x):
        expected = (self.image_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        return F.relu(self.hidden(self.convolutions(x).flatten(1)))

    def forward(self, x):
        return self.logits(self.dropout(self.features(x)))
