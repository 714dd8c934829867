"""Data: two-dimensional toy distributions and MNIST through torchvision.

Toy sets are float32 tensors of shape (n, 2) that lie (up to their noise) in
the square [-1, 1]^2, the range of image pixels, so that the same samplers,
clipping included, serve both. Image
data sets live under a root folder: the ``root`` argument, else the
environment variable ``DIFFUSION_DATA``, else ``data/``.
"""

import math
import os
from pathlib import Path

import torch

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def two_moons(n, generator=None, noise=0.05):
    """Two interleaved half circles, centred and scaled into [-1, 1]^2."""
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator)
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x - 0.5, y - 0.25], dim=1) / 1.6
    return points + noise * torch.randn(n, 2, generator=generator)


def swiss_roll(n, generator=None, noise=0.02):
    """A spiral: angle theta in [1.5 pi, 4.5 pi], radius proportional to theta, scaled into [-1, 1]^2."""
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator))
    points = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 15
    return points + noise * torch.randn(n, 2, generator=generator)


def gaussian_mixture(n, generator=None, modes=8, radius=0.75, std=0.05):
    """Equal-weight Gaussians with standard deviation std at `modes` points on a circle."""
    k = torch.randint(0, modes, (n,), generator=generator)
    angle = 2 * math.pi * k / modes
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * torch.randn(n, 2, generator=generator)


TOY_DATASETS = {"moons": two_moons, "swiss_roll": swiss_roll, "gaussian_mixture": gaussian_mixture}


def toy_data(name, n, generator=None):
    """n points of the named toy distribution: "moons", "swiss_roll" or "gaussian_mixture"."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; allowed: {', '.join(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, generator)


def data_root(root=None):
    """The folder that holds image data sets: root, else $DIFFUSION_DATA, else data/."""
    return Path(root or os.environ.get("DIFFUSION_DATA") or "data")


def mnist(train=True, root=None, download=False):
    """torchvision's MNIST under data_root(root), images as (1, 28, 28) tensors in [-1, 1].

    Raises FileNotFoundError naming the folder and the files when they are
    missing and ``download`` is False.
    """
    from torchvision import datasets, transforms

    root = data_root(root)
    raw = root / "MNIST" / "raw"
    missing = [name for name in MNIST_FILES if not (raw / name).exists()]
    if missing and not download:
        raise FileNotFoundError(
            f"MNIST not found: {raw.resolve()} lacks {', '.join(missing)}. Point DIFFUSION_DATA (or root=) at a "
            "folder holding MNIST/raw/, or call mnist(download=True) to let torchvision fetch it there."
        )
    to_signed = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return datasets.MNIST(root=str(root), train=train, download=download, transform=to_signed)


def mnist_images(n=None, train=True, root=None, download=False):
    """The first n MNIST images as a float tensor (n, 1, 28, 28) in [-1, 1], and their labels (all when n is None).

    ``download=True`` lets torchvision fetch missing files into the root (as in
    Colab or Binder); files already there are used as they are.
    """
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive number of images or None (all of them), got {n!r}")
    dataset = mnist(train=train, root=root, download=download)
    images = dataset.data[:n].unsqueeze(1).float() / 127.5 - 1
    return images, dataset.targets[:n]
