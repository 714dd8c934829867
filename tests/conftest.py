"""Shared fixtures: the real MNIST files, a small MNIST written in the same layout, and the tiny training configs.

MNIST is read from $DIFFUSION_DATA. When that variable is set (as CI sets it)
and the files are not there, the tests that need them fail; when it is unset,
they are skipped with a message that says how to run them.
"""

import os
from pathlib import Path

import numpy as np
import pytest

from diffusion_lib import data

# A U-Net of a few thousand parameters on 8 x 8 digits: a training step takes milliseconds on the CPU.
TINY_TRAINING = dict(
    dataset="digits",
    channels=8,
    channel_mults=(1, 2),
    attention_resolutions=(4,),
    batch_size=16,
    steps=6,
    warmup=2,
    log_every=1,
    device="cpu",
)


@pytest.fixture
def tiny_training():
    """The options of a tiny training run (a fresh dict: tests may change it)."""
    return dict(TINY_TRAINING)


@pytest.fixture(scope="session")
def mnist_root():
    """The folder holding MNIST/raw/ with the four real files."""
    configured = os.environ.get("DIFFUSION_DATA")
    root = Path(configured or "data")
    missing = [name for name in data.MNIST_FILES if not (root / "MNIST" / "raw" / name).exists()]
    if missing and configured:
        pytest.fail(f"DIFFUSION_DATA={configured} lacks MNIST/raw/{', '.join(missing)}")
    if missing:
        pytest.skip("the MNIST files are not in data/MNIST/raw; set DIFFUSION_DATA to the folder that holds MNIST/")
    return root


def write_idx(path, array):
    """Write a uint8 array in the IDX format of the MNIST files (magic, dimensions, then the bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.tobytes())


@pytest.fixture(scope="session")
def small_mnist_root(mnist_root, tmp_path_factory):
    """A data folder whose MNIST holds the first 256 training and 128 test images of the real one."""
    root = tmp_path_factory.mktemp("small-mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 256), ("t10k", 128)):
        images = np.fromfile(mnist_root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", np.uint8, offset=16)
        labels = np.fromfile(mnist_root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", np.uint8, offset=8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images.reshape(-1, 28, 28)[:n])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[:n])
    return root
