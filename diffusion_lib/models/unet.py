"""The U-Net denoiser of Ho et al. (2020): residual blocks at several resolutions joined by skip connections.

The encoder halves the resolution level by level; the decoder doubles it
back and concatenates, at each resolution, the activations the encoder saved
there. Every residual block receives the embedding of the step t (and of the
class label, when the network is conditional); self-attention runs at the
chosen resolutions. Images are NCHW; the output has the input's shape.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import ClassEmbedding, TimeEmbedding, check_unconditional


def group_norm(channels, groups=32):
    """GroupNorm over gcd(groups, channels) groups of channels, and at least two channels per group, eq. `group-norm`.

    With one channel per group, normalising would erase any per-channel shift,
    such as the time embedding that :class:`ResidualBlock` adds just before it.
    """
    groups = math.gcd(groups, channels)
    return nn.GroupNorm(groups if groups < channels else max(channels // 2, 1), channels)


class ResidualBlock(nn.Module):
    """h = conv(SiLU(norm(x))) + W emb; out = skip(x) + conv(dropout(SiLU(norm(h)))), eq. `residual-block`."""

    def __init__(self, in_channels, out_channels, embedding_dim, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (or its skip projection)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x, embedding):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """x + W_o softmax(Q K^T / sqrt(d)) V over the H*W positions, eq. `self-attention`."""

    def __init__(self, channels, heads=4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, embedding=None):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, H*W, C/heads)
        return x + self.out(attended.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, embedding=None):
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, embedding=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A residual block, followed by self-attention when ``attention`` is set."""

    def __init__(self, in_channels, out_channels, embedding_dim, dropout, attention):
        super().__init__()
        self.block = ResidualBlock(in_channels, out_channels, embedding_dim, dropout)
        self.attention = SelfAttention(out_channels) if attention else None

    def forward(self, x, embedding):
        x = self.block(x, embedding)
        return x if self.attention is None else self.attention(x)


class UNet(nn.Module):
    """eps_theta(x_t, t[, y]): the U-Net of Ho et al. (2020), eq. `unet`.

    Level i works at resolution image_size / 2^i with ``channels *
    channel_mults[i]`` channels and ``blocks_per_level`` residual blocks;
    self-attention follows each block whose resolution is in
    ``attention_resolutions``. With ``num_classes`` set, the network also
    takes labels y in 0..num_classes-1, or num_classes for "no label" (the
    null class of classifier-free guidance); y=None means the null class.
    """

    def __init__(
        self,
        image_channels=1,
        image_size=28,
        channels=64,
        channel_mults=(1, 2, 2),
        blocks_per_level=2,
        attention_resolutions=(7,),
        dropout=0.1,
        num_classes=None,
    ):
        super().__init__()
        if image_size % 2 ** (len(channel_mults) - 1):
            raise ValueError(
                f"image_size ({image_size}) must be divisible by 2^(levels - 1) = {2 ** (len(channel_mults) - 1)} "
                f"for channel_mults={tuple(channel_mults)}"
            )
        self.image_channels, self.image_size, self.num_classes = image_channels, image_size, num_classes
        embedding_dim = 4 * channels
        self.time_embedding = TimeEmbedding(channels, embedding_dim)
        self.class_embedding = None if num_classes is None else ClassEmbedding(num_classes, embedding_dim)
        self.input = nn.Conv2d(image_channels, channels, 3, padding=1)

        widths = [channels * m for m in channel_mults]
        self.down = nn.ModuleList()
        skip_widths, width, resolution = [channels], channels, image_size
        for level, level_width in enumerate(widths):
            for _ in range(blocks_per_level):
                attention = resolution in attention_resolutions
                self.down.append(Stage(width, level_width, embedding_dim, dropout, attention))
                width = level_width
                skip_widths.append(width)
            if level < len(widths) - 1:
                self.down.append(Downsample(width))
                skip_widths.append(width)
                resolution //= 2

        self.middle = nn.ModuleList(
            [Stage(width, width, embedding_dim, dropout, True), Stage(width, width, embedding_dim, dropout, False)]
        )

        self.up = nn.ModuleList()
        for level, level_width in reversed(list(enumerate(widths))):
            for _ in range(blocks_per_level + 1):
                attention = resolution in attention_resolutions
                self.up.append(Stage(width + skip_widths.pop(), level_width, embedding_dim, dropout, attention))
                width = level_width
            if level > 0:
                self.up.append(Upsample(width))
                resolution *= 2

        self.output = nn.Sequential(group_norm(width), nn.SiLU(), nn.Conv2d(width, image_channels, 3, padding=1))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def embed(self, t, y):
        """The embedding every residual block receives: time features, plus class features when conditional."""
        embedding = self.time_embedding(t)
        if self.class_embedding is None:
            check_unconditional(self, y)
            return embedding
        return embedding + self.class_embedding(y, t)

    def forward(self, x, t, y=None):
        expected = (self.image_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        embedding = self.embed(t, y)
        h = self.input(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, embedding)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, embedding)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), embedding) if isinstance(layer, Stage) else layer(h)
        return self.output(h)
