"""DDPM on 2-D data (chapter 4): sampler, respacing, time embedding, metrics, and a small training run.

Each test compares the library with an independent computation: the update
typed out as in Algorithm 2 of Ho et al., brute-force loops, closed forms,
or Monte Carlo with a tolerance of a few standard errors.
"""

import itertools
import math

import pytest
import torch

from diffusion_lib import NoiseSchedule, ddpm_step, sample, sample_loop
from diffusion_lib.data import toy_data
from diffusion_lib.fit import cosine_learning_rate, fit
from diffusion_lib.metrics import mmd, nearest_distances, sliced_wasserstein
from diffusion_lib.models import MLPDenoiser, sinusoidal_embedding

f64 = torch.float64


def seeded(seed):
    return torch.Generator().manual_seed(seed)


SCHEDULES = {"linear": NoiseSchedule.linear(T=100, beta_end=0.2), "cosine": NoiseSchedule.cosine(T=100)}


# The sampling step -------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_ddpm_step_is_algorithm_2(name, variance):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z, typed out from the paper."""
    schedule = SCHEDULES[name]
    g = seeded(0)
    xt, eps, z = (torch.randn(16, 2, generator=g, dtype=f64) for _ in range(3))
    betas = schedule.betas.tolist()
    alpha_bar = 1.0
    for t in range(schedule.T):
        alpha_bar_prev, alpha_bar = alpha_bar, alpha_bar * (1 - betas[t])
        if variance == "beta":
            sigma2 = betas[t]
        else:  # beta-tilde_t, with beta-tilde_2 used at the first step (it adds no noise anyway)
            sigma2 = (1 - alpha_bar_prev) / (1 - alpha_bar) * betas[t] if t > 0 else 0.0
        mean = (xt - betas[t] / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(1 - betas[t])
        expected = mean + (math.sqrt(sigma2) * z if t > 0 else 0)
        torch.testing.assert_close(
            ddpm_step(schedule, eps, t, xt, z, variance=variance), expected, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_at_t0_returns_the_mean_whatever_the_noise(clip):
    """At the last step (code index 0) x_0 = x0-hat, clipped or not, and the noise argument is ignored."""
    schedule = SCHEDULES["linear"]
    g = seeded(1)
    xt, eps = 3 * torch.randn(32, 2, generator=g, dtype=f64), torch.randn(32, 2, generator=g, dtype=f64)
    beta = schedule.betas[0].item()
    x0_hat = (xt - math.sqrt(beta) * eps) / math.sqrt(1 - beta)  # alpha_bar_1 = 1 - beta_1
    expected = x0_hat.clamp(-1, 1) if clip else x0_hat
    for noise in (torch.zeros_like(xt), torch.randn(32, 2, generator=g, dtype=f64)):
        torch.testing.assert_close(ddpm_step(schedule, eps, 0, xt, noise, clip_x0=clip), expected)


def test_clipping_bounds_the_first_step_of_the_cosine_schedule():
    """With beta_T = 0.999 an eps error delta moves the unclipped mean by c_T delta; clipping keeps it bounded."""
    schedule = NoiseSchedule.cosine(T=1000)
    t = schedule.T - 1
    xt = torch.randn(8, 2, generator=seeded(2), dtype=f64)
    delta = torch.full_like(xt, 0.1)
    beta, alpha_bar = schedule.betas[t].item(), schedule.alpha_bars[t].item()
    gain = beta / (math.sqrt(1 - beta) * math.sqrt(1 - alpha_bar))
    zero = torch.zeros_like(xt)
    moved = ddpm_step(schedule, xt + delta, t, xt, zero) - ddpm_step(schedule, xt, t, xt, zero)
    torch.testing.assert_close(moved, -gain * delta)
    assert gain > 30
    clipped = ddpm_step(schedule, xt + 10 * delta, t, xt, zero, clip_x0=True)
    bound = math.sqrt(schedule.alpha_bars[t - 1]) * beta / (1 - alpha_bar) + math.sqrt(1 - beta) * xt.abs()
    assert (clipped.abs() <= bound + 1e-12).all()


# The sampling loop and respacing -----------------------------------------------------


class RecordingModel:
    """Predicts zero noise and records every t it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append(t.clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("num_steps", [None, 7, 1])
def test_sample_loop_calls_the_model_with_decreasing_0_indexed_long_steps(num_steps):
    schedule = SCHEDULES["cosine"]
    model = RecordingModel()
    states = list(sample_loop(model, schedule, torch.zeros(5, 2), num_steps=num_steps, generator=seeded(3)))
    expected_steps = schedule.T if num_steps is None else num_steps
    assert len(states) == len(model.calls) == expected_steps
    for t in model.calls:
        assert t.dtype == torch.long and t.shape == (5,) and (t == t[0]).all()
    called = [t[0].item() for t in model.calls]
    assert called == [t for t, _ in states]
    assert called[0] == schedule.T - 1 and called[-1] == (0 if expected_steps > 1 else schedule.T - 1)
    assert all(a > b for a, b in zip(called, called[1:], strict=False))
    if num_steps is None:
        assert called == list(range(schedule.T - 1, -1, -1))


def test_sample_trajectory_holds_x_T_and_every_state():
    schedule = SCHEDULES["linear"]
    trajectory = sample(RecordingModel(), schedule, (6, 2), generator=seeded(4), num_steps=9, trajectory=True)
    x_T = torch.randn(6, 2, generator=seeded(4))
    assert trajectory.shape == (10, 6, 2)
    torch.testing.assert_close(trajectory[0], x_T)


@pytest.mark.parametrize("name", SCHEDULES)
def test_respacing_with_every_step_is_the_original_schedule(name):
    schedule = SCHEDULES[name]
    full = schedule.respaced(torch.arange(schedule.T))
    for table in ("betas", "alphas", "alpha_bars", "posterior_variances"):
        torch.testing.assert_close(getattr(full, table), getattr(schedule, table), rtol=1e-12, atol=1e-15)
    model = MLPDenoiser(width=16, depth=1, time_dim=8)
    with torch.no_grad():
        default = sample(model, schedule, (8, 2), generator=seeded(5))
        every_step = sample(model, schedule, (8, 2), generator=seeded(5), num_steps=schedule.T)
    torch.testing.assert_close(every_step, default)


def test_respaced_betas_follow_the_definition():
    """beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, with alpha_bar_{tau_0} = 1."""
    schedule = NoiseSchedule.linear(T=1000)
    tau = [0, 99, 499, 500, 999]
    products = [math.prod(1 - b for b in schedule.betas[: t + 1].tolist()) for t in tau]
    expected = [1 - a / b for a, b in zip(products, [1.0] + products[:-1], strict=True)]
    torch.testing.assert_close(schedule.respaced(tau).betas, torch.tensor(expected, dtype=f64), rtol=1e-9, atol=0)


def test_respaced_forward_chain_has_the_original_marginals():
    """q_step of the short chain, run from x_0, gives x_{tau_i} ~ N(sqrt(alpha_bar) x_0, 1 - alpha_bar): Monte Carlo."""
    schedule = NoiseSchedule.linear(T=1000)
    tau = schedule.spaced_timesteps(6)
    short = schedule.respaced(tau)
    n = 100_000
    g = seeded(6)
    x0 = torch.tensor([0.8, -0.3], dtype=f64)
    x = x0.expand(n, 2)
    for i in range(short.T):
        x = short.q_step(x, i, torch.randn(n, 2, generator=g, dtype=f64))
        alpha_bar = schedule.alpha_bars[tau[i]]
        mean, var = alpha_bar.sqrt() * x0, 1 - alpha_bar
        assert ((x.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), i
        assert ((x.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all(), i


# The time embedding ------------------------------------------------------------------


def test_sinusoidal_embedding_matches_the_formula():
    k = 8
    steps = [0, 1, 7, 250, 999]
    embedding = sinusoidal_embedding(torch.tensor(steps), 2 * k)
    for row, t in zip(embedding.tolist(), steps, strict=True):
        omegas = [10000 ** (-i / k) for i in range(k)]
        expected = [math.cos(w * t) for w in omegas] + [math.sin(w * t) for w in omegas]
        assert row == pytest.approx(expected, abs=2e-4)  # float32 angles up to 1000 radians


def test_embedding_inner_product_depends_only_on_the_step_difference():
    k = 16
    e = sinusoidal_embedding(torch.arange(300), 2 * k).to(f64)
    gram = e @ e.T
    assert torch.allclose(gram.diagonal(), torch.full((300,), float(k), dtype=f64), atol=1e-4)
    for shift in (1, 17, 150):
        diagonal = gram.diagonal(shift)
        assert (diagonal - diagonal.mean()).abs().max() < 1e-3, shift


# The metrics -------------------------------------------------------------------------


def test_sliced_wasserstein_in_one_dimension_is_the_exact_w2():
    """In 1-D the only directions are +-1; the optimal pairing is found by trying all 7! pairings."""
    g = seeded(7)
    x, y = torch.randn(7, 1, generator=g, dtype=f64), 2 * torch.rand(7, 1, generator=g, dtype=f64)
    best = min(sum((x[i, 0] - y[p[i], 0]).item() ** 2 for i in range(7)) / 7 for p in itertools.permutations(range(7)))
    assert sliced_wasserstein(x, y, num_projections=5, generator=g) == pytest.approx(math.sqrt(best), rel=1e-12)


def test_sliced_wasserstein_of_shifted_gaussians():
    """SW_2^2(N(a, I), N(b, I)) = |m|^2 / d with m = a - b.

    Two Monte Carlo errors in 2-D: the L directions (variance |m|^4 / 8L) and the
    sample means, which miss a and b by e with variance 2/n per coordinate and
    shift the estimate by about m . e (variance 2 |m|^2 / n).
    """
    n, num_projections = 5000, 1000
    for seed in (8, 80, 800):
        g = seeded(seed)
        m = torch.tensor([0.6, 0.8], dtype=f64)
        a = torch.randn(n, 2, generator=g, dtype=f64) + m
        b = torch.randn(n, 2, generator=g, dtype=f64)
        estimate = sliced_wasserstein(a, b, num_projections=num_projections, generator=g) ** 2
        standard_error = math.sqrt(1 / (8 * num_projections) + 2 / n)
        assert abs(estimate - 0.5) < 5 * standard_error, seed


def test_mmd_matches_a_double_loop():
    g = seeded(9)
    x, y = torch.randn(9, 2, generator=g, dtype=f64), torch.rand(11, 2, generator=g, dtype=f64)
    bandwidths = (0.3, 1.0, 2.5)

    def k(p, q):
        return sum(math.exp(-sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) / (2 * h * h)) for h in bandwidths)

    xs, ys = x.tolist(), y.tolist()
    within_x = sum(k(xs[i], xs[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    within_y = sum(k(ys[i], ys[j]) for i in range(11) for j in range(11) if i != j) / (11 * 10)
    across = sum(k(p, q) for p in xs for q in ys) / (9 * 11)
    assert mmd(x, y, bandwidths) == pytest.approx(within_x + within_y - 2 * across, rel=1e-12)


def test_mmd_of_shifted_gaussians_matches_the_closed_form():
    """For N(a, s^2 I), N(b, s^2 I) in d dims and k = exp(-|x - y|^2 / 2h^2):
    MMD^2 = 2 (h^2 / (h^2 + 2 s^2))^(d/2) (1 - exp(-|a - b|^2 / (2 (h^2 + 2 s^2)))), summed over h."""
    s, bandwidths, shift = 0.5, (0.2, 1.0), torch.tensor([0.4, 0.0], dtype=f64)
    closed_form = sum(
        2 * (h * h / (h * h + 2 * s * s)) * (1 - math.exp(-(shift.norm().item() ** 2) / (2 * (h * h + 2 * s * s))))
        for h in bandwidths
    )
    g = seeded(10)
    estimates = torch.tensor(
        [
            mmd(
                s * torch.randn(400, 2, generator=g, dtype=f64) + shift,
                s * torch.randn(400, 2, generator=g, dtype=f64),
                bandwidths,
            )
            for _ in range(40)
        ]
    )
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - closed_form) < 5 * standard_error


# Training and sampling end to end ----------------------------------------------------


def test_cosine_learning_rate_falls_from_lr_to_zero():
    assert cosine_learning_rate(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_learning_rate(0.1, 50, 100) == pytest.approx(0.05)
    assert cosine_learning_rate(0.1, 100, 100) == pytest.approx(0.0, abs=1e-15)


def test_a_small_trained_model_samples_close_to_the_data():
    """After 600 steps the samples are within 3x the data-vs-data floor and 3x closer than an untrained model's."""
    torch.manual_seed(11)
    g = seeded(11)
    schedule = NoiseSchedule.cosine(T=200)
    data = toy_data("gaussian_mixture", 5000, g)
    n = 1000

    def distance(x):
        return sum(sliced_wasserstein(x, toy_data("gaussian_mixture", n, g), generator=g) for _ in range(3)) / 3

    floor = sum(distance(toy_data("gaussian_mixture", n, g)) for _ in range(3)) / 3
    model = MLPDenoiser(width=64, depth=2, time_dim=32)
    with torch.no_grad():
        untrained = distance(sample(model, schedule, (n, 2), generator=g, clip_x0=True))
    losses = fit(model, schedule, data, steps=600, batch_size=256, lr=3e-3, generator=g)
    with torch.no_grad():
        trained = distance(sample(model, schedule, (n, 2), generator=g, clip_x0=True))
    assert sum(losses[-50:]) < sum(losses[:50])
    assert trained < 3 * floor, (trained, floor)
    assert untrained > 3 * trained, (untrained, trained)


def test_nearest_distances_match_a_double_loop():
    generator = torch.Generator().manual_seed(3)
    x, reference = torch.randn(7, 3, generator=generator), torch.randn(11, 3, generator=generator)
    expected = torch.tensor([min(((a - b) ** 2).sum().sqrt().item() for b in reference) for a in x])
    torch.testing.assert_close(nearest_distances(x, reference), expected, rtol=1e-5, atol=1e-6)
