"""Data (data.py): image data sets (layouts, value range, splits, labels, in-memory stacking), pixel levels, and the
errors for unknown names and missing data.

CIFAR-10, CelebA and image folders are small fakes written in tmp_path in the
exact on-disk layouts; MNIST is compared with the raw IDX files parsed by hand.
"""

import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib.data import (
    IN_MEMORY,
    as_tensors,
    data_root,
    from_bytes,
    image_dataset,
    mnist,
    mnist_images,
    to_bytes,
    toy_data,
)

CIFAR_TRAIN_PER_BATCH = 2  # 5 batches: 10 training images


CIFAR_TEST = 3


def signed(value):
    """A uint8 pixel value as the loaders give it, in [-1, 1]."""
    return value / 127.5 - 1


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def cifar_batch(values, labels):
    """A CIFAR-10 batch dict: image i is the constant values[i], as rows of 3072 uint8 (1024 red, green, blue).

    The real files are Python 2 pickles whose keys torchvision (encoding="latin1") reads as these str keys.
    """
    data = np.repeat(np.array(values, dtype=np.uint8)[:, None], 3072, axis=1)
    return {"batch_label": "fake", "labels": list(labels), "data": data, "filenames": [f"{v}.png" for v in values]}


@pytest.fixture
def cifar_root(tmp_path):
    """A fake CIFAR-10: training image i has the constant value 10 i and label i % 10; test images are marked."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    n = CIFAR_TRAIN_PER_BATCH
    for b in range(5):
        indices = range(b * n, (b + 1) * n)
        write_pickle(folder / f"data_batch_{b + 1}", cifar_batch([10 * i for i in indices], [i % 10 for i in indices]))
    test = cifar_batch([0] * CIFAR_TEST, [3, 1, 4])
    test["data"][0, 2 * 32 + 5] = 255  # red channel, row 2, column 5
    test["data"][0, 1024 + 7] = 51  # green channel, row 0, column 7
    test["data"][0, 2048 + 31 * 32 + 31] = 255  # blue channel, row 31, column 31
    test["data"][1] = 255
    write_pickle(folder / "test_batch", test)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_pickle(folder / "batches.meta", {"num_cases_per_batch": n, "label_names": names, "num_vis": 3072})
    return tmp_path


def test_cifar10_train_split_in_order(cifar_root):
    dataset = image_dataset("cifar10", root=cifar_root)
    assert len(dataset) == 5 * CIFAR_TRAIN_PER_BATCH
    image, label = dataset[7]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 7 and isinstance(label, int)
    torch.testing.assert_close(image, torch.full((3, 32, 32), signed(70)))


def test_cifar10_test_split_pixels_round_trip(cifar_root):
    dataset = image_dataset("cifar10", train=False, root=cifar_root)
    assert len(dataset) == CIFAR_TEST
    assert [dataset[i][1] for i in range(CIFAR_TEST)] == [3, 1, 4]
    image = dataset[0][0]
    assert image[0, 2, 5] == 1.0 and image[1, 2, 5] == -1.0 and image[2, 2, 5] == -1.0
    assert image[2, 31, 31] == 1.0 and image[0, 31, 31] == -1.0
    assert image[1, 0, 7].item() == pytest.approx(signed(51)) and image[0, 0, 7] == -1.0
    assert (image == -1).sum() == 3 * 1024 - 3
    assert torch.all(dataset[1][0] == 1.0)


def test_cifar10_resizes_and_finds_the_root_in_diffusion_data(cifar_root, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(cifar_root))
    image = image_dataset("cifar10", image_size=16)[3][0]
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image, torch.full((3, 16, 16), signed(30)))


def test_cifar10_pickles_with_its_contents(cifar_root):
    """DataLoader workers that spawn receive the data set pickled."""
    dataset = image_dataset("cifar10", train=False, root=cifar_root)
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy) == CIFAR_TEST
    assert torch.equal(copy[0][0], dataset[0][0]) and copy[2][1] == 4


def test_as_tensors_stacks_in_order(cifar_root):
    images, labels = as_tensors(image_dataset("cifar10", root=cifar_root), batch_size=3)
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(10))
    torch.testing.assert_close(images[:, 0, 0, 0], signed(10 * torch.arange(10.0)))


# CelebA: 178 x 218 JPEGs; the central 140 x 140 square spans columns 19..158 and rows 39..178.


PARTITION = {1: 0, 2: 0, 3: 1, 4: 2, 5: 2}


@pytest.fixture
def celeba_root(tmp_path):
    """Image k is white outside the central square and grey 40 k inside it; partitions as in PARTITION."""
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    for k in PARTITION:
        pixels = np.full((218, 178, 3), 255, dtype=np.uint8)
        pixels[39:179, 19:159] = 40 * k
        Image.fromarray(pixels).save(folder / "img_align_celeba" / f"{k:06d}.jpg", quality=100)
    lines = [f"{k:06d}.jpg {part}" for k, part in PARTITION.items()]
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize("train, expected", [(True, [1, 2]), (False, [4, 5])])
def test_celeba_split_crop_and_resize(celeba_root, train, expected):
    dataset = image_dataset("celeba", train=train, root=celeba_root)
    assert len(dataset) == len(expected)
    for (image, label), k in zip(dataset, expected, strict=True):
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and label == 0
        assert image.min() >= -1 and image.max() <= 1
        # the white border is cropped away: every pixel is the grey (up to JPEG error at the square's edge)
        torch.testing.assert_close(image, torch.full_like(image, signed(40 * k)), atol=0.06, rtol=0)
        torch.testing.assert_close(image[:, 4:-4, 4:-4].mean(), torch.tensor(signed(40 * k)), atol=0.01, rtol=0)


def test_celeba_image_size(celeba_root):
    images, labels = as_tensors(image_dataset("celeba", root=celeba_root, image_size=32))
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [0, 0]


# Folders of images.


def save_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def test_folder_with_class_subfolders(tmp_path):
    save_png(tmp_path / "dogs" / "a.png", np.full((20, 20, 3), 255))
    save_png(tmp_path / "cats" / "b.png", np.full((30, 40, 3), 0))
    save_png(tmp_path / "cats" / "c.png", np.full((16, 16), 51))  # greyscale becomes RGB
    dataset = image_dataset(f"folder:{tmp_path}", image_size=16)
    images, labels = as_tensors(dataset)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == [0, 0, 1]  # cats, then dogs
    torch.testing.assert_close(images[:, 0, 0, 0], torch.tensor([-1.0, signed(51), 1.0]))


def test_folder_of_files_centre_crops_after_resizing(tmp_path):
    wide = np.zeros((20, 40, 3))
    wide[:, :4] = 255  # the left tenth: outside the central square once resized to 32 x 16 (squashing would keep it)
    save_png(tmp_path / "1_wide.png", wide)
    save_png(tmp_path / "2_white.png", np.full((8, 8, 3), 255))
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = image_dataset(f"folder:{tmp_path}", train=False, image_size=16)
    assert len(dataset) == 2
    (wide_image, wide_label), (white_image, white_label) = dataset[0], dataset[1]
    assert wide_label == white_label == 0
    assert wide_image.shape == white_image.shape == (3, 16, 16)
    assert torch.all(wide_image == -1) and torch.all(white_image == 1)


# Digits and MNIST.


def test_digits_split_range_and_labels():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, test = image_dataset("digits"), image_dataset("digits", train=False)
    assert len(train) == 1500 and len(test) == 297
    images, labels = as_tensors(test)
    assert images.shape == (297, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert labels.tolist() == bunch.target[1500:].tolist()
    torch.testing.assert_close(images[0, 0], torch.tensor(bunch.images[1500], dtype=torch.float32) / 8 - 1)
    image, label = train[3]
    assert label == bunch.target[3] and isinstance(label, int)
    torch.testing.assert_close(image[0], torch.tensor(bunch.images[3], dtype=torch.float32) / 8 - 1)


def test_mnist_matches_the_raw_files(mnist_root):
    raw = np.fromfile(mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte", dtype=np.uint8, offset=16)
    dataset = image_dataset("mnist", train=False, root=mnist_root)
    assert len(dataset) == 10_000 and len(image_dataset("mnist", root=mnist_root)) == 60_000
    image, label = dataset[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 7
    torch.testing.assert_close(image[0], signed(torch.tensor(raw[:784].reshape(28, 28), dtype=torch.float32)))
    assert image.min() == -1 and image.max() == 1
    assert image_dataset("mnist", train=False, root=mnist_root, image_size=32)[0][0].shape == (1, 32, 32)


def read_idx_images(path, n):
    """The first n images of an IDX3 file, parsed by hand: a 16-byte header, then uint8 pixels row by row."""
    with open(path, "rb") as file:
        magic, count, rows, cols = (int.from_bytes(file.read(4), "big") for _ in range(4))
        assert magic == 2051, f"{path} is not an IDX3 image file"
        pixels = torch.frombuffer(bytearray(file.read(n * rows * cols)), dtype=torch.uint8)
    return pixels.reshape(n, 1, rows, cols)


def test_mnist_images_are_signed_and_match_the_raw_file():
    raw = data_root() / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST is not under {raw.resolve()} (set DIFFUSION_DATA to a folder holding MNIST/raw/)")
    images, labels = mnist_images(100)
    assert images.shape == (100, 1, 28, 28) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert labels.shape == (100,) and 0 <= labels.min() and labels.max() <= 9
    expected = read_idx_images(raw / "train-images-idx3-ubyte", 100).double() / 255 * 2 - 1
    torch.testing.assert_close(images.double(), expected, rtol=0, atol=1e-6)


def test_in_memory_sets_are_known_names():
    assert set(IN_MEMORY) == {"mnist", "cifar10", "digits"}


def test_pixel_levels_round_trip():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    signed_levels = from_bytes(levels)
    assert signed_levels.dtype == torch.float32
    assert signed_levels.min() == -1 and signed_levels.max() == 1
    assert (signed_levels.flatten().diff() > 0).all()
    assert torch.equal(to_bytes(signed_levels), levels)
    clamped = to_bytes(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    assert torch.equal(clamped, torch.tensor([0, 0, 128, 255, 255], dtype=torch.uint8))


# Errors.


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="'imagenet'") as error:
        image_dataset("imagenet")
    for allowed in ("mnist", "cifar10", "celeba", "digits", "folder:PATH"):
        assert allowed in str(error.value)


@pytest.mark.parametrize(
    "name, subfolder, files",
    [
        ("mnist", "MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("cifar10", "cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch", "batches.meta"]),
        ("celeba", "celeba", ["img_align_celeba", "list_eval_partition.txt"]),
    ],
)
def test_missing_data_set_names_the_folder_files_and_fix(tmp_path, name, subfolder, files):
    with pytest.raises(FileNotFoundError) as error:
        image_dataset(name, root=tmp_path)
    message = str(error.value)
    assert str((tmp_path / subfolder).resolve()) in message
    assert all(file in message for file in files)
    assert "DIFFUSION_DATA" in message and "root=" in message
    assert ("download=True" in message) == (name != "celeba")


def test_partly_missing_cifar10_names_only_the_missing_files(cifar_root):
    (cifar_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="lacks data_batch_3\\."):
        image_dataset("cifar10", train=False, root=cifar_root)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        image_dataset(f"folder:{tmp_path / 'absent'}", image_size=16)


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no image files"):
        image_dataset(f"folder:{tmp_path}", image_size=16)


def test_folder_needs_image_size(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8, 3)))
    with pytest.raises(ValueError, match="image_size"):
        image_dataset(f"folder:{tmp_path}")


def test_mnist_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str((tmp_path / "MNIST" / "raw").resolve()))):
        mnist_images(4, root=tmp_path)


def test_mnist_images_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be a positive number of images"):
        mnist_images(0)


def test_unknown_toy_data_set(mentions):
    with pytest.raises(ValueError, match=mentions("'spiral'", "moons", "swiss_roll", "gaussian_mixture")):
        toy_data("spiral", 10)


def test_missing_mnist_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist_images(10, root=tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist(train=False, root=tmp_path)


def test_missing_mnist_under_diffusion_data(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path.resolve()))):
        mnist_images(10)


@pytest.mark.parametrize("n", [0, -5, 2.5])
def test_mnist_images_needs_a_positive_count(tmp_path, n, mentions):
    with pytest.raises(ValueError, match=mentions("n", repr(n))):
        mnist_images(n, root=tmp_path)
