"""Data: two-dimensional toy distributions, and image data sets through torchvision.

Toy sets are float32 tensors of shape (n, 2) that lie (up to their noise) in
the square [-1, 1]^2, the range of image pixels, so that the same samplers,
clipping included, serve both. Image data sets (``image_dataset``) give
(image, label) pairs, images float32 (C, H, W) in [-1, 1]; they live under a
root folder: the ``root`` argument, else the environment variable
``DIFFUSION_DATA``, else ``data/``.
"""

import functools
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
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
CELEBA_FILES = ("img_align_celeba", "list_eval_partition.txt")
IMAGE_DATASETS = ("mnist", "cifar10", "celeba", "digits", "folder:PATH")
IN_MEMORY = ("mnist", "cifar10", "digits")


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


def toy_mixture(name, resolution=4096):
    """The named toy distribution as a mixture of N(mu_k, std^2 I): (means (K, 2), std, weights (K,)).

    Exact for "gaussian_mixture" (8 components). The moons and the swiss roll
    are a curve plus Gaussian noise; their mixture places ``resolution``
    components at evenly spaced values of the curve's parameter (which the
    data draw uniformly), each with the data's noise. The spacing of the
    components is then far below that noise, so the mixture's exact denoiser
    is the data's optimal denoiser up to that discretisation.
    """
    if name == "gaussian_mixture":
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        means = 0.75 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return means, 0.05, torch.full((8,), 1 / 8, dtype=torch.float64)
    u = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    if name == "swiss_roll":
        theta = 1.5 * math.pi * (1 + 2 * u)
        means = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / 15
        return means, 0.02, torch.full((resolution,), 1 / resolution, dtype=torch.float64)
    if name == "moons":
        angle = math.pi * u
        upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
        means = (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 1.6
        return means, 0.05, torch.full((2 * resolution,), 1 / (2 * resolution), dtype=torch.float64)
    raise ValueError(f"unknown toy data set {name!r}; allowed: {', '.join(TOY_DATASETS)}")


def toy_data(name, n, generator=None):
    """n points of the named toy distribution: "moons", "swiss_roll" or "gaussian_mixture"."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; allowed: {', '.join(TOY_DATASETS)}")
    return TOY_DATASETS[name](n, generator)


def data_root(root=None):
    """The folder that holds image data sets: root, else $DIFFUSION_DATA, else data/."""
    return Path(root or os.environ.get("DIFFUSION_DATA") or "data")


def _require(title, root, subfolder, files, remedy):
    """Returns root / subfolder; raises FileNotFoundError naming it, the files it lacks and the remedy."""
    folder = root / subfolder
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{title} not found: {folder.resolve()} lacks {', '.join(missing)}. Point DIFFUSION_DATA (or root=) "
            f"at a folder holding {subfolder}/, or {remedy}."
        )
    return folder


def _to_signed(*steps, size=None):
    """A torchvision transform: steps on a PIL image, Resize(size) if size, then float32 (C, H, W) in [-1, 1]."""
    from torchvision import transforms

    resize = [transforms.Resize(size)] if size else []
    return transforms.Compose([*steps, *resize, transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])


def mnist(train=True, root=None, download=False, image_size=None):
    """torchvision's MNIST under data_root(root): items (image, label), images (1, 28, 28) in [-1, 1].

    image_size, when given, resizes the images to (1, image_size, image_size).
    Raises FileNotFoundError naming the folder and the missing files when
    ``download`` is False.
    """
    from torchvision import datasets

    root = data_root(root)
    if not download:
        _require("MNIST", root, "MNIST/raw", MNIST_FILES, "pass download=True to let torchvision fetch it there")
    return datasets.MNIST(str(root), train=train, download=download, transform=_to_signed(size=image_size))


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


@functools.cache
def _cifar10_files():
    """A subclass of torchvision's CIFAR10, built on first use so that importing this module skips torchvision."""
    from torchvision import datasets

    class CIFAR10Files(datasets.CIFAR10):
        """torchvision's CIFAR10; md5 None makes its integrity check an existence check (downloads keep theirs)."""

        train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
        meta = {**datasets.CIFAR10.meta, "md5": None}

        def __reduce__(self):
            """Pickles (for DataLoader workers) as a torchvision CIFAR10 with the same contents."""
            return object.__new__, (datasets.CIFAR10,), self.__dict__

    return CIFAR10Files


def cifar10(train=True, root=None, download=False, image_size=None):
    """CIFAR-10 in torchvision's layout: items (image, label), images (3, 32, 32) in [-1, 1].

    Reads data_root(root)/cifar-10-batches-py/, checking that the files exist
    but not their md5 sums (so copies and small test files load). image_size,
    when given, resizes the images. Raises FileNotFoundError naming the folder
    and the missing files when ``download`` is False.
    """
    root = data_root(root)
    if not download:
        _require("CIFAR-10", root, "cifar-10-batches-py", CIFAR10_FILES, "pass download=True to fetch it there")
    return _cifar10_files()(str(root), train=train, download=download, transform=_to_signed(size=image_size))


class LabelledTensors(torch.utils.data.TensorDataset):
    """A TensorDataset of (image, label) whose items give the label as an int."""

    def __getitem__(self, index):
        image, label = super().__getitem__(index)
        return image, int(label)


class ImageFiles(torch.utils.data.Dataset):
    """Image files read as RGB through a transform; items (transform(image), 0): the files carry no labels."""

    def __init__(self, paths, transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), 0


def celeba(train=True, root=None, image_size=64):
    """Aligned CelebA under data_root(root)/celeba/: items (image, 0), images (3, image_size, image_size) in [-1, 1].

    Reads img_align_celeba/*.jpg and list_eval_partition.txt, whose lines
    "000001.jpg 0" give each image's partition: train=True takes partition 0
    (train), train=False partition 2 (test). Each image is centre-cropped to
    140 x 140, then resized to image_size (DDPM's CelebA pipeline). Raises
    FileNotFoundError naming the folder and the missing files.
    """
    from torchvision import transforms

    remedy = "download img_align_celeba/ and list_eval_partition.txt from the CelebA site (no automatic download)"
    folder = _require("CelebA", data_root(root), "celeba", CELEBA_FILES, remedy)
    split = ["0" if train else "2"]
    lines = (folder / "list_eval_partition.txt").read_text().splitlines()
    paths = [folder / "img_align_celeba" / line.split()[0] for line in lines if line.split()[1:] == split]
    return ImageFiles(paths, _to_signed(transforms.CenterCrop(140), size=image_size))


def digits(train=True, image_size=None):
    """scikit-learn's 8 x 8 digits: items (image, label), images (1, 8, 8) in [-1, 1] (from the values 0..16).

    train=True gives the first 1500 of the 1797 images, train=False the other 297.
    image_size, when given, resizes the images (bilinear).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    part = slice(None, 1500) if train else slice(1500, None)
    images = torch.tensor(bunch.images[part], dtype=torch.float32).unsqueeze(1) / 8 - 1
    if image_size not in (None, 8):
        images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    return LabelledTensors(images, torch.tensor(bunch.target[part], dtype=torch.int64))


def image_folder(path, image_size):
    """Any folder of images: items (image, label), images RGB (3, image_size, image_size) in [-1, 1].

    With class subfolders it is torchvision's ImageFolder (labels: the
    subfolders' indices in sorted order), else all image files directly in path,
    sorted by name, with label 0. Images are resized (shorter side) to
    image_size, then centre-cropped to a square.
    """
    from torchvision import datasets, transforms
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if image_size is None:
        raise ValueError("image_size is required for a folder of images (they may have any size), got None")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path.resolve()} is not a folder")
    transform = _to_signed(transforms.Resize(image_size), transforms.CenterCrop(image_size))
    if any(entry.is_dir() for entry in path.iterdir()):
        return datasets.ImageFolder(str(path), transform=transform)
    files = sorted(entry for entry in path.iterdir() if entry.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in {path.resolve()}")
    return ImageFiles(files, transform)


def image_dataset(name, train=True, root=None, image_size=None, download=False):
    """The named image data set: a Dataset of (image, label), images float32 (C, H, W) in [-1, 1], labels int.

    name: "mnist" (1 x 28 x 28), "cifar10" (3 x 32 x 32), "celeba" (3 x 64 x 64,
    label 0), "digits" (1 x 8 x 8) or "folder:PATH" (3 x image_size x image_size).
    image_size resizes the images (square); it is required for folders. root
    is resolved by data_root; a folder's PATH is used as given, and ``train`` is
    ignored for folders. download=True lets torchvision fetch MNIST or CIFAR-10
    into the root; the other sets ignore it. Raises ValueError for an unknown
    name, FileNotFoundError, naming the folder and the files, for missing data.
    """
    if isinstance(name, str) and name.startswith("folder:"):
        return image_folder(name.removeprefix("folder:"), image_size)
    if name == "mnist":
        return mnist(train, root, download, image_size)
    if name == "cifar10":
        return cifar10(train, root, download, image_size)
    if name == "celeba":
        return celeba(train, root, image_size or 64)
    if name == "digits":
        return digits(train, image_size)
    raise ValueError(f"unknown image data set {name!r}; allowed: {', '.join(IMAGE_DATASETS)}")


def num_classes(dataset):
    """The number of classes of a data set whose items carry labels; a ValueError for one without."""
    if getattr(dataset, "classes", None):
        return len(dataset.classes)
    if isinstance(dataset, LabelledTensors):
        return int(dataset.tensors[1].max()) + 1
    raise ValueError("this data set carries no class labels, so it cannot train a conditional model")


def as_tensors(dataset, batch_size=1024):
    """The whole data set in order: images as one float32 tensor (N, C, H, W) and labels as int64 (N,)."""
    batches = list(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False))
    if not batches:
        raise ValueError("the data set is empty: there are no images to stack")
    images, labels = zip(*batches, strict=True)
    return torch.cat(images).float(), torch.cat(labels).long()


def to_bytes(images):
    """Images in [-1, 1] quantised to uint8 pixel values 0..255 (as stored and as judged)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_bytes(pixels):
    """uint8 pixel values 0..255 back to floats in [-1, 1]."""
    return pixels.float() / 127.5 - 1
