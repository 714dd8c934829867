"""The identities of chapter 2 (the forward process), each against an independent computation.

Closed forms are checked against the chain run step by step: exactly, by
propagating the mean and variance of one coordinate through the one-step
kernel, and by Monte Carlo with tolerances of 5 standard errors.
"""

import math
import re

import pytest
import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.data import data_root, mnist_images
from diffusion_lib.parameterization import eps_from_v, eps_from_x0, v_from_eps, x0_from_eps, x0_from_v

Z = 5.0  # tolerance of every Monte Carlo comparison, in standard errors


def random_schedule(T=30, seed=0):
    """A schedule with irregular betas in (0.001, 0.2), so that no identity holds by accident of a pattern."""
    g = torch.Generator().manual_seed(seed)
    return NoiseSchedule(0.001 + 0.199 * torch.rand(T, generator=g, dtype=torch.float64))


SCHEDULES = {
    "linear": NoiseSchedule.linear(T=1000),
    "cosine": NoiseSchedule.cosine(T=1000),
    "random": random_schedule(),
}


def propagated_moments(betas):
    """Mean coefficient c_t (mean = c_t x_0) and variance v_t of x_t given x_0, pushed through
    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps one step at a time in Python floats."""
    coefficient, variance, moments = 1.0, 0.0, []
    for beta in betas:
        coefficient, variance = math.sqrt(1 - beta) * coefficient, (1 - beta) * variance + beta
        moments.append((coefficient, variance))
    return moments


def mean_se(samples):
    return samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])


# The forward kernel and the closed form q(x_t | x_0) ----------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_sample_matches_moments_propagated_through_the_kernel(name):
    """q-marginal: q_sample(x0, t, eps) = c_t x0 + sqrt(v_t) eps with c_t, v_t from the step-by-step chain."""
    schedule = SCHEDULES[name]
    moments = propagated_moments(schedule.betas.tolist())
    T = schedule.T
    one = torch.ones(T, 1, dtype=torch.float64)
    t = torch.arange(T)
    coefficients = schedule.q_sample(one, t, torch.zeros_like(one)).flatten()  # sqrt(alpha_bar_t)
    stds = schedule.q_sample(torch.zeros_like(one), t, one).flatten()  # sqrt(1 - alpha_bar_t)
    expected_c = torch.tensor([c for c, _ in moments], dtype=torch.float64)
    expected_std = torch.tensor([math.sqrt(v) for _, v in moments], dtype=torch.float64)
    torch.testing.assert_close(coefficients, expected_c, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(stds, expected_std, rtol=1e-12, atol=1e-15)


def test_alpha_bars_are_products_of_alphas():
    schedule = SCHEDULES["random"]
    betas = schedule.betas.tolist()
    expected = [math.prod(1 - b for b in betas[: t + 1]) for t in range(len(betas))]
    torch.testing.assert_close(schedule.alpha_bars, torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=0)


def test_q_step_is_the_forward_kernel():
    """forward-kernel: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, for every t."""
    schedule = SCHEDULES["random"]
    g = torch.Generator().manual_seed(1)
    x_prev = torch.randn(schedule.T, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(schedule.T, 3, generator=g, dtype=torch.float64)
    t = torch.arange(schedule.T)
    betas = torch.tensor(schedule.betas.tolist(), dtype=torch.float64)[:, None]
    expected = (1 - betas).sqrt() * x_prev + betas.sqrt() * noise
    torch.testing.assert_close(schedule.q_step(x_prev, t, noise), expected, rtol=1e-14, atol=1e-15)


def test_one_step_keeps_unit_variance_of_non_gaussian_data():
    """fw-var-gap: Var[x_t] - 1 = (1 - beta)(Var[x_{t-1}] - 1), by Monte Carlo on +-1 and +-0.5 data."""
    g = torch.Generator().manual_seed(2)
    schedule = NoiseSchedule([0.3])
    n = 200_000
    signs = torch.randint(0, 2, (n, 1), generator=g).double() * 2 - 1
    for scale in (1.0, 0.5):
        x = schedule.q_step(scale * signs, 0, torch.randn(n, 1, generator=g, dtype=torch.float64))
        mean, mean_error = mean_se(x)
        var, var_error = mean_se((x - mean) ** 2)
        expected = 1 + 0.7 * (scale**2 - 1)
        assert abs(mean.item()) < Z * mean_error.item()
        assert abs(var.item() - expected) < Z * var_error.item(), (scale, var.item(), expected)


@pytest.fixture(scope="module")
def linear_chain():
    """20,000 runs of the linear schedule's chain from x0 = (-1, 0.5, 1), states kept at a few steps."""
    g = torch.Generator().manual_seed(3)
    schedule = SCHEDULES["linear"]
    x0 = torch.tensor([-1.0, 0.5, 1.0], dtype=torch.float64)
    n, kept = 20_000, (0, 9, 99, 299, 999)
    x, states = x0.expand(n, -1).clone(), {}
    for t in range(schedule.T):
        x = schedule.q_step(x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in kept:
            states[t] = x
    return schedule, x0, states, g


def test_iterated_kernel_matches_closed_form_and_q_sample(linear_chain):
    """q-marginal by Monte Carlo: the chain of q_step, the jump q_sample and the closed form agree."""
    schedule, x0, states, g = linear_chain
    for t, chain in states.items():
        alpha_bar = math.prod(1 - b for b in schedule.betas[: t + 1].tolist())
        closed_mean, closed_var = math.sqrt(alpha_bar) * x0, 1 - alpha_bar
        jump = schedule.q_sample(
            x0.expand(len(chain), -1), t, torch.randn(chain.shape, generator=g, dtype=torch.float64)
        )
        stats = []
        for samples in (chain, jump):
            mean, mean_error = mean_se(samples)
            var, var_error = mean_se((samples - mean) ** 2)
            assert ((mean - closed_mean).abs() < Z * mean_error).all(), (t, mean, closed_mean)
            assert ((var - closed_var).abs() < Z * var_error).all(), (t, var, closed_var)
            stats.append((mean, mean_error, var, var_error))
        (m1, e1, v1, w1), (m2, e2, v2, w2) = stats
        assert ((m1 - m2).abs() < Z * (e1**2 + e2**2).sqrt()).all()
        assert ((v1 - v2).abs() < Z * (w1**2 + w2**2).sqrt()).all()


def test_iterated_kernel_is_gaussian(linear_chain):
    """fw-sum: the chain's x_t is Gaussian: the fraction within one sd is Phi(1) - Phi(-1)."""
    _, _, states, _ = linear_chain
    expected = math.erf(1 / math.sqrt(2))
    for t in (99, 999):
        x = states[t][:, 1]
        inside, error = mean_se(((x - x.mean()).abs() < x.std()).double())
        assert abs(inside.item() - expected) < Z * error.item(), (t, inside.item())


def test_chain_covariance_across_steps(linear_chain):
    """fw-cov: Cov[x_s, x_t | x_0] = sqrt(alpha_bar_t / alpha_bar_s) (1 - alpha_bar_s)."""
    schedule, _, states, _ = linear_chain
    betas = schedule.betas.tolist()
    for s, t in ((9, 99), (99, 299), (299, 999)):
        a, b = states[s][:, 1], states[t][:, 1]
        cov, error = mean_se((a - a.mean()) * (b - b.mean()))
        alpha_bar_s, alpha_bar_t = math.prod(1 - x for x in betas[: s + 1]), math.prod(1 - x for x in betas[: t + 1])
        expected = math.sqrt(alpha_bar_t / alpha_bar_s) * (1 - alpha_bar_s)
        assert abs(cov.item() - expected) < Z * error.item(), (s, t, cov.item(), expected)


# Schedules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("T, start, end", [(1000, 1e-4, 0.02), (10, 1e-3, 0.05)])
def test_linear_schedule_endpoints_and_spacing(T, start, end):
    """linear-schedule: beta_1 = start, beta_T = end, constant increments (end - start)/(T - 1)."""
    betas = NoiseSchedule.linear(T=T, beta_start=start, beta_end=end).betas
    assert len(betas) == T
    assert abs(betas[0].item() - start) < 1e-15 and abs(betas[-1].item() - end) < 1e-15
    assert (betas.diff() - (end - start) / (T - 1)).abs().max() < 1e-15


@pytest.mark.parametrize("T, s", [(1000, 0.008), (50, 0.008), (200, 0.02)])
def test_cosine_alpha_bar_closed_form(T, s):
    """cosine-schedule: prod (1 - beta) = f(t)/f(0) before clipping; betas clipped at max_beta exactly where needed."""
    max_beta = 0.999
    schedule = NoiseSchedule.cosine(T=T, s=s, max_beta=max_beta)

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    unclipped_betas = [1 - f(t) / f(t - 1) for t in range(1, T + 1)]  # steps 1..T of the text
    needs_clipping = [b > max_beta for b in unclipped_betas]
    assert needs_clipping[-1] and not any(needs_clipping[:-1])  # only the last step, where f(T) = 0
    assert schedule.betas[-1].item() == max_beta
    product = 1.0
    for t, beta in enumerate(schedule.betas.tolist()[:-1], start=1):
        product *= 1 - beta
        assert abs(product / (f(t) / f(0)) - 1) < 1e-12, t


def test_cosine_first_noise_is_below_the_pixel_gap():
    """Nichol and Dhariwal chose s = 0.008 so that sqrt(beta_1) is just below 1/127.5 for T = 1000."""
    sqrt_beta_1 = math.sqrt(NoiseSchedule.cosine(T=1000).betas[0].item())
    assert 0.5 / 127.5 < sqrt_beta_1 < 1 / 127.5


def test_snr_is_signal_over_noise_variance():
    """snr: alpha_bar/(1 - alpha_bar) = (mean coefficient)^2 / variance of x_t given x_0; it decreases."""
    for schedule in SCHEDULES.values():
        moments = propagated_moments(schedule.betas.tolist())
        expected = torch.tensor([c**2 / v for c, v in moments], dtype=torch.float64)
        torch.testing.assert_close(schedule.snr, expected, rtol=1e-9, atol=0)
        assert (schedule.snr.diff() < 0).all()


@pytest.mark.parametrize("timesteps", [[0, 9, 99, 500, 999], [3, 4, 5, 700], [999]])
def test_respaced_schedule_keeps_alpha_bar(timesteps):
    """respacing: the respaced chain, run step by step, has the original q(x_t | x_0) at the chosen indices."""
    schedule = SCHEDULES["cosine"]
    respaced = schedule.respaced(timesteps)
    assert respaced.T == len(timesteps)
    moments = propagated_moments(respaced.betas.tolist())
    for (coefficient, variance), t in zip(moments, timesteps, strict=True):
        alpha_bar = math.prod(1 - b for b in schedule.betas[: t + 1].tolist())
        assert abs(coefficient**2 - alpha_bar) < 1e-12 and abs(variance - (1 - alpha_bar)) < 1e-12


def test_spaced_timesteps_are_increasing_and_cover_the_chain():
    schedule = SCHEDULES["linear"]
    for n in (1, 2, 10, 999, 1000):
        steps = schedule.spaced_timesteps(n)
        assert len(steps) == n and steps[-1] == schedule.T - 1 and (steps.diff() > 0).all()
        assert n == 1 or steps[0] == 0


# eps, x0 and v --------------------------------------------------------------------------------------


def test_eps_x0_v_conversions_agree_with_definitions():
    """x0-from-eps and v-prediction and their inverses, against x_t and v written out by hand."""
    schedule = SCHEDULES["cosine"]
    g = torch.Generator().manual_seed(4)
    B = 256
    x0 = 2 * torch.rand(B, 1, 4, 4, generator=g, dtype=torch.float64) - 1
    eps = torch.randn(B, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, schedule.T, (B,), generator=g)
    betas = schedule.betas.tolist()
    a = torch.tensor([math.prod(1 - b for b in betas[: k + 1]) for k in t.tolist()], dtype=torch.float64)
    a = a.reshape(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    # x0 from eps divides by sqrt(alpha_bar), as small as 5e-5 here: rounding grows by up to 2e4.
    torch.testing.assert_close(schedule.q_sample(x0, t, eps), xt, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x0_from_eps(schedule, xt, t, eps), x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_from_x0(schedule, xt, t, x0), eps, rtol=0, atol=1e-10)
    torch.testing.assert_close(v_from_eps(schedule, x0, t, eps), v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(x0_from_v(schedule, xt, t, v), x0, rtol=0, atol=1e-13)
    torch.testing.assert_close(eps_from_v(schedule, xt, t, v), eps, rtol=0, atol=1e-13)


def test_v_is_the_derivative_of_x_t_along_the_angle():
    """v-prediction: v = d x_t / d phi with cos(phi) = sqrt(alpha_bar), by a central finite difference."""
    g = torch.Generator().manual_seed(5)
    x0, eps = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    schedule = NoiseSchedule.from_alpha_bars([math.cos(phi) ** 2 for phi in (0.3, 0.9, 1.4)])
    for t, phi in enumerate((0.3, 0.9, 1.4)):
        h = 1e-6
        derivative = math.cos(phi + h) * x0 + math.sin(phi + h) * eps - math.cos(phi - h) * x0 - math.sin(phi - h) * eps
        v = v_from_eps(schedule, x0[None], t, eps[None])[0]
        torch.testing.assert_close(v, derivative / (2 * h), rtol=0, atol=1e-8)


# Bad input ----------------------------------------------------------------------------------------


def test_bad_input_is_named():
    schedule = SCHEDULES["linear"]
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="t out of range: got 1000, allowed 0..999"):
        schedule.q_sample(x, 1000, x)
    with pytest.raises(ValueError, match="shape mismatch: x0 has shape"):
        schedule.q_sample(x, 0, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        NoiseSchedule.named("quadratic")
    with pytest.raises(ValueError, match="every beta must lie in"):
        NoiseSchedule([0.1, 1.0])
    with pytest.raises(ValueError, match=r"alpha_bars must decrease strictly.*alpha_bars\[1\] = 0.95"):
        NoiseSchedule.from_alpha_bars([0.9, 0.95])
    with pytest.raises(ValueError, match="timesteps must be a non-empty increasing"):
        schedule.respaced([5, 3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lookups_follow_the_device_of_x():
    schedule = SCHEDULES["linear"]
    x = torch.ones(4, 2, device="cuda")
    t = torch.tensor([0, 1, 2, 999], device="cuda")
    out = schedule.q_sample(x, t, torch.zeros_like(x))
    assert out.device == x.device and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0].cpu(), schedule.alpha_bars[t.cpu()].sqrt().float())


# MNIST --------------------------------------------------------------------------------------------


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


def test_mnist_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str((tmp_path / "MNIST" / "raw").resolve()))):
        mnist_images(4, root=tmp_path)


def test_mnist_images_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be a positive number of images"):
        mnist_images(0)


def test_any_integer_type_indexes_a_step():
    """Python ints, NumPy integers and integer tensors of any width name the same step."""
    import numpy as np

    schedule = NoiseSchedule.linear(T=np.int64(50))
    x0, noise = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
    expected = schedule.q_sample(x0, torch.tensor([7, 7, 7]), noise)
    for t in (7, np.int32(7), torch.tensor([7, 7, 7], dtype=torch.uint8), torch.tensor([7, 7, 7], dtype=torch.int16)):
        torch.testing.assert_close(schedule.q_sample(x0, t, noise), expected, rtol=0, atol=0)
    assert torch.allclose(expected, torch.full_like(x0, schedule.alpha_bars[7].sqrt().item()))
