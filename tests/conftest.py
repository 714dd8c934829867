"""Shared fixtures: data (the real MNIST files and a small MNIST in the same layout), the tiny training configs,
the bad-input message matcher, and diffusers' DDPMScheduler as a float64 oracle.

MNIST is read from $DIFFUSION_DATA. When that variable is set (as CI sets it)
and the files are not there, the tests that need them fail; when it is unset,
they are skipped with a message that says how to run them.
"""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lib import data
from diffusion_lib.schedules import NoiseSchedule

if os.environ.get("PYTEST_XDIST_WORKER"):  # one of two workers on two cores: one thread each, and their subprocesses
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

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
def tiny_config():
    """tiny_config(out, **changes): the TrainConfig of the tiny run writing to out, with fields changed."""
    from diffusion_lib.engine import TrainConfig

    def make(out, **changes):
        return TrainConfig(**{**TINY_TRAINING, "out": str(out), **changes})

    return make


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


# Bad input ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mentions():
    """mentions(*fragments): a regex that matches a message containing every fragment as a whole token, in any order.

    Bad input must get an error that names the argument, the offending value and
    what is allowed; asserting on fragments lets the wording change but not the
    content. A token is not part of a longer word or number: "0" does not match
    inside "10" or "1.0".
    """

    def regex(*fragments):
        return "".join(rf"(?=.*(?<!\w)(?<!\d\.){re.escape(fragment)}(?!\w)(?!\.\d))" for fragment in fragments)

    return regex


@pytest.fixture
def schedule():
    """A linear schedule of T = 10 steps, for the bad-input checks (their modules set T = 10 to match)."""
    return NoiseSchedule.linear(10)


# diffusers' DDPMScheduler as an oracle --------------------------------------------------------------------------------
# diffusers uses the same 0-indexed timesteps (t = 0..T-1) as the library, so the two can be compared index by index.
# Its tables are float32; float64_scheduler rebuilds them in float64, so that a disagreement of more than a few
# float64 rounding errors is a real difference of formulas.

# Float64 comparisons: the quantities pass through a handful of operations, one of
# which divides by sqrt(alpha_bar_t) >= 5e-5 (cosine schedule, t = T-1), so their
# rounding errors stay below ~1e4 * 2.2e-16 relative. 1e-10 leaves a wide margin
# and is still millions of times smaller than any difference of formulas.
RTOL64 = ATOL64 = 1e-10


@pytest.fixture(scope="session")
def float64_scheduler():
    """float64_scheduler(schedule, **config): a diffusers DDPMScheduler for ``schedule`` whose tables are float64.

    DDPMScheduler.__init__ stores betas, alphas = 1 - betas, alphas_cumprod =
    cumprod(alphas) and one = 1 as float32 tensors; its ``step``, ``add_noise`` and
    ``get_velocity`` only read those attributes, so redoing the same four lines in
    float64 (from the schedule's betas) lets them run in float64.
    """
    from diffusers import DDPMScheduler

    def make(schedule, **config):
        config = {"clip_sample": False, "prediction_type": "epsilon", **config}
        scheduler = DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(), **config)
        scheduler.betas = schedule.betas.clone()
        scheduler.alphas = 1.0 - scheduler.betas
        scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
        scheduler.one = torch.tensor(1.0, dtype=torch.float64)
        return scheduler

    return make


@pytest.fixture(scope="session")
def diffusers_step():
    """diffusers_step(scheduler, eps, t, xt, seed): diffusers' (x_{t-1}, estimate of x_0).

    For t > 0 diffusers' step draws its noise with randn_tensor(shape, generator,
    dtype=eps.dtype), which on the CPU is torch.randn(xt.shape, generator=generator,
    dtype=eps.dtype) from a generator seeded with seed: the draw of ``randn(shape, seed)``.
    """

    def step(scheduler, eps, t, xt, seed):
        out = scheduler.step(eps, t, xt, generator=torch.Generator().manual_seed(seed))
        return out.prev_sample, out.pred_original_sample

    return step


@pytest.fixture(scope="session")
def randn():
    """randn(shape, seed): a float64 standard normal tensor drawn from a generator seeded with seed."""

    def draw(shape, seed):
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    return draw


@pytest.fixture(scope="session")
def assert_close64():
    """assert_close64(actual, expected, **options): equal up to the float64 tolerances RTOL64 and ATOL64 above."""

    def assert_close(actual, expected, **options):
        torch.testing.assert_close(actual, expected, rtol=RTOL64, atol=ATOL64, **options)

    return assert_close


@pytest.fixture(scope="module", params=["linear", "cosine"])
def oracle_schedule(request):
    """The linear and the cosine schedule with the test module's T_STEP steps, for comparisons with diffusers."""
    return NoiseSchedule.named(request.param, request.module.T_STEP)
