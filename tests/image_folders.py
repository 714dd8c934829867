"""Folders of small random images, as a user's own data set of image files would be laid out."""

import torch


def write_images(folder, n, seed=0):
    """n random 8 x 8 RGB PNG files in folder."""
    from PIL import Image

    folder.mkdir(parents=True)
    pixels = torch.randint(0, 256, (n, 8, 8, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    for i, image in enumerate(pixels.numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder
