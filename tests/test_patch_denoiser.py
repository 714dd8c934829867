"""The patch (local and equivariant local) denoisers against independent computations: the whole-image optimal
denoiser when a patch covers the image, circular shifts of the input, and a direct pixel-by-pixel softmax over
training patches cut out with explicit index arithmetic."""

import pytest
import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.optimal import EmpiricalDenoiser, PatchDenoiser, patches

f64 = torch.float64
schedule = NoiseSchedule.linear(100).to(f64)


def random_images(n, seed, channels=1, height=5, width=6):
    return torch.randn(n, channels, height, width, generator=torch.Generator().manual_seed(seed), dtype=f64)


def shifts(images):
    """Every circular shift of every image."""
    height, width = images.shape[-2:]
    return torch.cat([images.roll((i, j), dims=(-2, -1)) for i in range(height) for j in range(width)])


def test_patches_are_cut_around_each_pixel_with_wraparound():
    """Patch p of size k holds the pixels (i + a - k // 2 mod H, j + b - k // 2 mod W), a, b = 0..k-1, read with
    explicit modular indices."""
    images = random_images(2, 0, channels=2)
    for size in (1, 2, 3, 5):
        found = patches(images, size)
        for i in range(5):
            for j in range(6):
                rows = [(i + a - size // 2) % 5 for a in range(size)]
                columns = [(j + b - size // 2) % 6 for b in range(size)]
                expected = images[:, :, rows][:, :, :, columns].flatten(1)
                torch.testing.assert_close(found[:, i * 6 + j], expected, rtol=0, atol=0)


@pytest.mark.parametrize("t", [5, 40, 99])
def test_local_denoiser_with_an_image_sized_patch_is_the_empirical_denoiser(t):
    """A patch as large as the (square) image sees every pixel once, so each pixel's softmax is the whole-image one."""
    training, xt = random_images(7, 1, channels=2, width=5), random_images(3, 2, channels=2, width=5)
    steps = torch.full((3,), t)
    local = PatchDenoiser(training, schedule, patch_size=5, equivariant=False)
    torch.testing.assert_close(local.x0(xt, steps), EmpiricalDenoiser(training, schedule).x0(xt, steps))


@pytest.mark.parametrize("t", [5, 40, 99])
def test_equivariant_denoiser_with_an_image_sized_patch_is_the_empirical_denoiser_of_all_shifts(t):
    """Pooling image-sized patches from every position is the optimal denoiser of the training set closed under
    circular shifts."""
    training, xt = random_images(4, 3, width=5), random_images(3, 4, width=5)
    steps = torch.full((3,), t)
    equivariant = PatchDenoiser(training, schedule, patch_size=5)
    torch.testing.assert_close(equivariant.x0(xt, steps), EmpiricalDenoiser(shifts(training), schedule).x0(xt, steps))


def test_equivariant_denoiser_commutes_with_circular_shifts():
    training, xt = random_images(6, 5), random_images(2, 6)
    steps = torch.tensor([20, 70])
    denoiser = PatchDenoiser(training, schedule, patch_size=3)
    for shift in [(1, 0), (0, 2), (3, 5)]:
        shifted = denoiser.x0(xt.roll(shift, dims=(-2, -1)), steps)
        torch.testing.assert_close(shifted, denoiser.x0(xt, steps).roll(shift, dims=(-2, -1)))


@pytest.mark.parametrize("equivariant", [True, False])
@pytest.mark.parametrize("border", [None, -0.7])
def test_each_pixel_is_a_softmax_over_training_patches(equivariant, border):
    """Pixel (i, j): the centre pixels of training patches weighted by softmax(-|q - s y|^2 / (2 (1 - alpha_bar))),
    q the 3 x 3 patch of x_t around (i, j), the training patches y from every position or from (i, j) only. Beyond
    the edges patches wrap around, or read the border value (sqrt(alpha_bar) times it for x_t)."""
    training, xt, t = random_images(5, 7), random_images(2, 8), 30
    alpha_bar = schedule.alpha_bars[t]
    denoiser = PatchDenoiser(training, schedule, patch_size=3, equivariant=equivariant, border=border)
    found = denoiser.x0(xt, torch.full((2,), t))

    def pixel(image, i, j, scale):
        if border is None:
            return image[0, i % 5, j % 6]
        return image[0, i, j] if 0 <= i < 5 and 0 <= j < 6 else scale * torch.tensor(border, dtype=f64)

    def patch(image, i, j, scale=1.0):
        return torch.stack([pixel(image, i + a, j + b, scale) for a in (-1, 0, 1) for b in (-1, 0, 1)])

    for n in range(2):
        for i in range(5):
            for j in range(6):
                where = [(row, column) for row in range(5) for column in range(6)] if equivariant else [(i, j)]
                candidates = [(patch(y, row, column), y[0, row, column]) for y in training for row, column in where]
                query = patch(xt[n], i, j, scale=alpha_bar.sqrt())
                distances = torch.stack([(query - alpha_bar.sqrt() * y).pow(2).sum() for y, _ in candidates])
                weights = torch.softmax(-distances / (2 * (1 - alpha_bar)), dim=0)
                expected = (weights * torch.stack([centre for _, centre in candidates])).sum()
                torch.testing.assert_close(found[n, 0, i, j], expected)


def test_bad_patch_sizes_and_shapes_are_named():
    training = random_images(3, 9)
    with pytest.raises(ValueError, match="patch size must be between 1 and the image side 5, got 6"):
        PatchDenoiser(training, schedule, patch_size=6)
    with pytest.raises(ValueError, match="x_t has shape"):
        PatchDenoiser(training, schedule, patch_size=3).x0(random_images(2, 1, height=4), torch.tensor([1, 1]))
