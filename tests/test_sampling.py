"""The reverse process (sampling.py): the DDPM step, the sampling loop, respaced chains, and the errors for bad input.

The step is checked against Algorithm 2 of Ho et al. typed out by hand and
against diffusers' DDPMScheduler.step run in float64 (conftest.py), one step
and whole loops (all T steps, and respaced with diffusers' "linspace"
spacing); the loop's calls to the model are recorded and checked. The DDIM
family and DPM-Solver++(2M) are checked against diffusers' DDIMScheduler and
DPMSolverMultistepScheduler and, on Gaussian data, against the exact
probability-flow map (their convergence orders, and DDIM inversion).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from diffusion_lib import NoiseSchedule, ddpm_step, sample, sample_loop
from diffusion_lib.models import MLPDenoiser
from diffusion_lib.optimal import GaussianDenoiser
from diffusion_lib.parameterization import x0_from_eps
from diffusion_lib.sampling import SAMPLERS, ddim_invert, ddim_step, langevin, slerp

f64 = torch.float64


SCHEDULES = {"linear": NoiseSchedule.linear(T=100, beta_end=0.2), "cosine": NoiseSchedule.cosine(T=100)}


# The sampling step -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_ddpm_step_is_algorithm_2(name, variance):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t z, typed out from the paper."""
    schedule = SCHEDULES[name]
    g = torch.Generator().manual_seed(0)
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
    g = torch.Generator().manual_seed(1)
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
    xt = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=f64)
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


# The sampling loop and respacing ---------------------------------------------------------------------


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
    states = list(
        sample_loop(model, schedule, torch.zeros(5, 2), num_steps=num_steps, generator=torch.Generator().manual_seed(3))
    )
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
    trajectory = sample(
        RecordingModel(), schedule, (6, 2), generator=torch.Generator().manual_seed(4), num_steps=9, trajectory=True
    )
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
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
        default = sample(model, schedule, (8, 2), generator=torch.Generator().manual_seed(5))
        every_step = sample(model, schedule, (8, 2), generator=torch.Generator().manual_seed(5), num_steps=schedule.T)
    torch.testing.assert_close(every_step, default)


# Against diffusers' DDPMScheduler --------------------------------------------------------------------


DIFFUSERS_VARIANCE = {"posterior": "fixed_small", "beta": "fixed_large"}


T_STEP = 1000  # the steps of the oracle_schedule fixture (conftest.py)


STEP_TIMES = [0, 1, 2, T_STEP // 2, T_STEP - 2, T_STEP - 1]


SHAPE = (6, 1, 3, 3)  # NCHW, so that the per-example tables broadcast over channels and pixels


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("t", STEP_TIMES)
def test_ddpm_step_matches_diffusers(
    oracle_schedule, variance, clip, t, float64_scheduler, diffusers_step, randn, assert_close64
):
    scheduler = float64_scheduler(oracle_schedule, variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=clip)
    xt, eps = 2 * randn(SHAPE, 1), randn(SHAPE, 2)
    # diffusers' step draws its noise with randn_tensor(shape, generator, dtype=eps.dtype),
    # which on the CPU is torch.randn(shape, generator=generator, dtype=dtype): the same draw as here.
    noise = randn(SHAPE, seed=3)
    expected, x0_expected = diffusers_step(scheduler, eps, t, xt, seed=3)
    assert_close64(ddpm_step(oracle_schedule, eps, t, xt, noise, variance=variance, clip_x0=clip), expected)
    x0 = x0_from_eps(oracle_schedule, xt, t, eps)
    if clip:  # the test exercises the clamp: some estimates of x_0 leave [-1, 1]
        assert (x0.abs() > 1).any()
        x0 = x0.clamp(-1, 1)
    assert_close64(x0, x0_expected)


def toy_model(T):
    """A fixed deterministic 'denoiser' that depends on x and on the step t (an int, a 0-d or a (B,) tensor)."""

    def model(x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.1 * x * (1 + t / T)

    return model


def diffusers_loop(model, scheduler, x, seed):
    """The standard diffusers loop; returns [(t, x after the step at t)] for every visited t."""
    generator = torch.Generator().manual_seed(seed)
    states = []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
        states.append((int(t), x))
    return states


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sample_loop_matches_diffusers_loop(name, variance, clip, float64_scheduler, randn, assert_close64):
    T = 50
    schedule = NoiseSchedule.named(name, T)
    scheduler = float64_scheduler(schedule, variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=clip)
    model, x_T = toy_model(T), randn((64, 2), seed=14)
    # Both loops draw their step noises from a generator with the same seed, one torch.randn per
    # step with t > 0, in the same order; sample_loop draws one more, unused, at t = 0.
    ours = list(
        sample_loop(
            model, schedule, x_T.clone(), generator=torch.Generator().manual_seed(15), variance=variance, clip_x0=clip
        )
    )
    theirs = diffusers_loop(model, scheduler, x_T.clone(), seed=15)
    assert [t for t, _ in ours] == [t for t, _ in theirs] == list(range(T - 1, -1, -1))
    for (t, x_ours), (_, x_theirs) in zip(ours, theirs, strict=True):
        assert_close64(x_ours, x_theirs, msg=lambda m, t=t: f"at t={t}: {m}")
    assert x_T.sub(ours[-1][1]).abs().max() > 0.1  # the loop really moved the samples


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respaced_sample_loop_matches_diffusers_linspace_timesteps(
    name, variance, float64_scheduler, randn, assert_close64
):
    """With num_steps < T both skip steps: diffusers' "linspace" spacing visits the same timesteps and
    steps from alpha_bar at one visited timestep to the next, as the respaced schedule does."""
    T, num_steps = 1000, 20
    schedule = NoiseSchedule.named(name, T)
    scheduler = float64_scheduler(schedule, variance_type=DIFFUSERS_VARIANCE[variance], timestep_spacing="linspace")
    scheduler.set_timesteps(num_steps)
    model, x_T = toy_model(T), randn((64, 2), seed=16)
    ours = list(
        sample_loop(
            model,
            schedule,
            x_T.clone(),
            num_steps=num_steps,
            generator=torch.Generator().manual_seed(17),
            variance=variance,
        )
    )
    theirs = diffusers_loop(model, scheduler, x_T.clone(), seed=17)
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert_close64(ours[-1][1], theirs[-1][1])


# Bad input -------------------------------------------------------------------------------------------


T = 10  # the steps of the schedule fixture (conftest.py)


def zero_model(x, t):
    return torch.zeros_like(x)


X = torch.zeros(4, 2, dtype=torch.float64)


A, B, ROW = torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(1, 2)


SHAPE_USERS = {
    "ddpm_step eps": (lambda s, a, b: ddpm_step(s, b, 1, a, a), "xt", "eps"),
    "ddpm_step noise": (lambda s, a, b: ddpm_step(s, a, 1, a, b), "xt", "noise"),
}


@pytest.mark.parametrize("other", [B, ROW], ids=["different", "broadcastable"])
@pytest.mark.parametrize("use, first, second", SHAPE_USERS.values(), ids=SHAPE_USERS.keys())
def test_shape_mismatch_names_both_arguments(schedule, use, first, second, other, mentions):
    """Even shapes that would broadcast are refused: a silently broadcast noise is a bug."""
    with pytest.raises(ValueError, match=mentions(first, second, "(4, 2)", str(tuple(other.shape)))):
        use(schedule, A, other)


def test_unknown_reverse_variance(schedule, mentions):
    with pytest.raises(ValueError, match=mentions("variance", "'learned'", "posterior", "beta")):
        ddpm_step(schedule, X, 3, X, X, variance="learned")


@pytest.mark.parametrize("bad", [-1, T])
def test_ddpm_step_t_out_of_range(schedule, bad, mentions):
    with pytest.raises(ValueError, match=mentions("t", str(bad), str(T - 1))):
        ddpm_step(schedule, X, bad, X, X)


def test_ddpm_step_t_must_be_an_int(schedule, mentions):
    with pytest.raises(TypeError, match=mentions("t", "int")):
        ddpm_step(schedule, X, torch.tensor([3, 3, 3, 3]), X, X)


@pytest.mark.parametrize("num_steps", [0, T + 1])
def test_sampling_refuses_a_bad_number_of_steps(schedule, num_steps, mentions):
    """num_steps=0 must not silently fall back to all T steps."""
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps))):
        sample(zero_model, schedule, (4, 2), num_steps=num_steps)
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps))):
        next(sample_loop(zero_model, schedule, torch.zeros(4, 2), num_steps=num_steps))


# The DDIM family and DPM-Solver++ --------------------------------------------------------------------
# ddim_step (eta = 0) and sample(sampler="dpm-solver++") against diffusers' DDIMScheduler and
# DPMSolverMultistepScheduler run in float64; eta = 1 against the DDPM step; the convergence orders of DDIM
# (1) and DPM-Solver++(2M) (2) against the exact probability-flow map of Gaussian data; DDIM inversion; slerp;
# the errors of sample for a bad sampler or eta; the progress bar.


def gaussian_denoiser(schedule, d=3, seed=0):
    """The exact denoiser of N(mu, Sigma) data with Sigma = Q diag(variances) Q^T for a random rotation Q.

    Returns (model, mu, variances, Q), Q's columns the eigenvectors, built here rather than read back from the
    model, so that the exact maps below do not share the model's eigendecomposition.
    """
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([0.5, -1.0, 2.0, 0.25][:d], dtype=f64)
    variances = torch.tensor([0.05, 0.5, 2.0, 1.0][:d], dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    return GaussianDenoiser(mu, q @ torch.diag(variances) @ q.T, schedule), mu, variances, q


def flow_to_data(x, alpha_bar, mu, variances, q):
    """The exact probability-flow map from x at alpha_bar to the data (alpha_bar = 1) for N(mu, Q diag(lam) Q^T).

    Per eigendirection the marginal at alpha_bar is N(sqrt(alpha_bar) mu, alpha_bar lam + 1 - alpha_bar), and the
    flow, a monotone map between 1-D Gaussians, keeps the standardised coordinate; at the data it reads
    x0 = mu + sqrt(lam) (x - sqrt(alpha_bar) mu) / sqrt(alpha_bar lam + 1 - alpha_bar).
    """
    c = (x - alpha_bar**0.5 * mu) @ q
    return mu + (variances.sqrt() * c / (alpha_bar * variances + 1 - alpha_bar).sqrt()) @ q.T


def flow_from_data(x0, alpha_bar, mu, variances, q):
    """The inverse of :func:`flow_to_data`: data x0 carried by the flow to alpha_bar."""
    c = (x0 - mu) @ q
    return alpha_bar**0.5 * mu + ((alpha_bar * variances + 1 - alpha_bar).sqrt() * c / variances.sqrt()) @ q.T


def float64_ddim(schedule, num_steps, clip_sample=False):
    """diffusers' DDIMScheduler for ``schedule`` with "leading" timesteps, no offset and clipping of x_0 to [-1, 1]
    only if asked, whose alpha-bar tables are float64 (its step reads only alphas_cumprod and final_alpha_cumprod;
    see conftest.py).

    set_alpha_to_one=True makes the step after timestep 0 land on alpha_bar = 1, as ddim_step does at t = 0
    (alpha_bars_prev[0] = 1).
    """
    scheduler = DDIMScheduler(
        num_train_timesteps=schedule.T,
        trained_betas=schedule.betas.numpy(),
        timestep_spacing="leading",
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=clip_sample,
        clip_sample_range=1.0,
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(num_steps)
    scheduler.alphas_cumprod = schedule.alpha_bars.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=f64)
    return scheduler


DDIM_STEP_COUNTS = [5, 12, 25]


@pytest.mark.parametrize("num_steps", DDIM_STEP_COUNTS)
def test_ddim_trajectory_matches_diffusers_ddim_on_the_respaced_schedule(oracle_schedule, num_steps, assert_close64):
    """Our grid is spaced_timesteps(k) = round(linspace(0, T-1, k)), diffusers' "linspace" grid; but DDIMScheduler
    steps from t to t - T // k whatever the grid, which lands on the next visited timestep only for the "leading"
    grid (multiples of T // k). The grids line up through respacing: diffusers built on the respaced schedule
    (k training steps, its betas) with k inference steps has the leading grid k-1, ..., 0 with ratio 1, and
    steps from one respaced alpha_bar to the next, exactly as sample(num_steps=k) does. The model is called with
    the original step, grid[i], in both loops.

    Both sides do the same float64 operations up to their order (0.0 apart in practice); RTOL64 (conftest.py)
    bounds the rounding of a few operations amplified by 1 / sqrt(alpha_bar) <= 2e4.
    """
    grid = oracle_schedule.spaced_timesteps(num_steps)
    respaced = oracle_schedule.respaced(grid)
    scheduler = float64_ddim(respaced, num_steps)
    assert scheduler.timesteps.tolist() == list(range(num_steps - 1, -1, -1))
    model, *_ = gaussian_denoiser(oracle_schedule)
    x_T = 1.5 * torch.randn(16, 3, generator=torch.Generator().manual_seed(20), dtype=f64)
    x, theirs = x_T.clone(), [x_T]
    for i in scheduler.timesteps:
        x = scheduler.step(model(x, int(grid[i])), i, x).prev_sample
        theirs.append(x)
    ours = sample(model, oracle_schedule, x_T.shape, sampler="ddim", num_steps=num_steps, x_T=x_T, trajectory=True)
    assert_close64(ours, torch.stack(theirs))
    # And step by step, ddim_step on the respaced schedule (eta = 0 draws no noise, so None is accepted).
    x = x_T
    for i in reversed(range(num_steps)):
        x = ddim_step(respaced, model(x, int(grid[i])), i, x, None)
        assert_close64(x, theirs[num_steps - i])
    assert x_T.sub(x).abs().max() > 0.5  # the chain really moved the samples


@pytest.mark.parametrize("num_steps", DDIM_STEP_COUNTS)
def test_ddim_step_on_the_respaced_leading_grid_matches_diffusers_ddim(oracle_schedule, num_steps, assert_close64):
    """diffusers' own skipping (leading grid (0, r, 2r, ...) with r = T // k, steps from t to t - r) on the full
    schedule equals ddim_step on our schedule respaced to that grid: respacing keeps alpha_bar at the visited
    steps. Float64 tolerance as above."""
    scheduler = float64_ddim(oracle_schedule, num_steps)
    leading = scheduler.timesteps.flip(0)
    assert leading.tolist() == [i * (oracle_schedule.T // num_steps) for i in range(num_steps)]
    respaced = oracle_schedule.respaced(leading)
    model, *_ = gaussian_denoiser(oracle_schedule)
    x = y = torch.randn(16, 3, generator=torch.Generator().manual_seed(21), dtype=f64)
    for i in reversed(range(num_steps)):
        t = int(leading[i])
        x = scheduler.step(model(x, t), t, x).prev_sample
        y = ddim_step(respaced, model(y, t), i, y, torch.zeros_like(y))
        assert_close64(y, x, msg=lambda m, t=t: f"after the step at t={t}: {m}")


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_with_clipping_matches_diffusers_ddim_using_the_clipped_output(oracle_schedule, eta, assert_close64):
    """clip_x0: x_0 clamped to [-1, 1] and eps recomputed from it, as DDIMScheduler does with clip_sample and
    use_clipped_model_output, for every eta, given the same noise; on the leading grid as above. The data have a
    mean coordinate of 2, so the clamp changes the result. Float64 tolerance as above."""
    num_steps = 10
    scheduler = float64_ddim(oracle_schedule, num_steps, clip_sample=True)
    leading = scheduler.timesteps.flip(0)
    respaced = oracle_schedule.respaced(leading)
    model, *_ = gaussian_denoiser(oracle_schedule)
    g = torch.Generator().manual_seed(22)
    x = y = unclipped = torch.randn(16, 3, generator=g, dtype=f64)
    for i in reversed(range(num_steps)):
        t, noise = int(leading[i]), torch.randn(16, 3, generator=g, dtype=f64)
        x = scheduler.step(model(x, t), t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise).prev_sample
        unclipped = ddim_step(respaced, model(unclipped, t), i, unclipped, noise, eta=eta)
        y = ddim_step(respaced, model(y, t), i, y, noise, eta=eta, clip_x0=True)
        assert_close64(y, x, msg=lambda m, t=t: f"after the step at t={t}: {m}")
    assert y.abs().max() <= 1 and unclipped.abs().max() > 1.5


# diffusers' set_timesteps calls np.array on a tensor, which numpy 2 flags with a DeprecationWarning (not ours).
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("num_steps", DDIM_STEP_COUNTS)
def test_dpm_solver_matches_diffusers_dpm_solver_multistep(oracle_schedule, num_steps):
    """sample(sampler="dpm-solver++") against DPMSolverMultistepScheduler with algorithm_type "dpmsolver++",
    solver_order 2 (the multistep midpoint form: D = x0 + (x0 - x0_before) / (2 r)), lower_order_final and
    final_sigmas_type "zero", so that the last step goes to sigma = 0, alpha_bar = 1, and is first order.

    diffusers' own grids have k + 1 points with 0 dropped ("linspace") or other spacings; passing our grid as
    custom timesteps makes the visited steps equal. Its sigmas sqrt((1 - alpha_bar) / alpha_bar) are float32
    (interpolated from a float32 table), so they are replaced by the float64 ones of our schedule; its step
    still casts the sample to float32 (sample.to(torch.float32)) before the update. Each step therefore adds a
    rounding of about eps_32 |x| (a few operations), and the updates are contractions or mild expansions, so
    after k steps the two trajectories agree within 4 k eps_32 max|x| (measured: below 0.1 k eps_32 max|x|);
    a difference of formulas (the wrong r, a missing 1/2, second order at the last step) is of order |x| h^2
    or more, far above that.
    """
    grid = oracle_schedule.spaced_timesteps(num_steps)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=oracle_schedule.T,
        trained_betas=oracle_schedule.betas.numpy(),
        algorithm_type="dpmsolver++",
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
        prediction_type="epsilon",
    )
    scheduler.set_timesteps(timesteps=grid.flip(0).tolist())
    assert scheduler.timesteps.tolist() == grid.flip(0).tolist()
    alpha_bars = oracle_schedule.alpha_bars[grid.flip(0)]
    float64_sigmas = torch.cat([((1 - alpha_bars) / alpha_bars).sqrt(), torch.zeros(1, dtype=f64)])
    # The same table, but float32's 1 - alpha_bar loses 4 digits at t = 0 (alpha_bar = 0.9999): 3e-4 relative.
    torch.testing.assert_close(scheduler.sigmas, float64_sigmas.float(), rtol=1e-3, atol=0)
    scheduler.sigmas = float64_sigmas
    model, *_ = gaussian_denoiser(oracle_schedule)
    x_T = 1.5 * torch.randn(16, 3, generator=torch.Generator().manual_seed(22), dtype=f64)
    x, theirs = x_T.clone(), [x_T]
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
        theirs.append(x)
    theirs = torch.stack(theirs)
    ours = sample(
        model, oracle_schedule, x_T.shape, sampler="dpm-solver++", num_steps=num_steps, x_T=x_T, trajectory=True
    )
    tolerance = 4 * num_steps * torch.finfo(torch.float32).eps * theirs.abs().max().item()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance)
    # It is not DDIM: the second-order correction moves the result by far more than the tolerance.
    ddim = sample(model, oracle_schedule, x_T.shape, sampler="ddim", num_steps=num_steps, x_T=x_T)
    assert ours[-1].sub(ddim).abs().max() > 100 * tolerance


def test_ddim_with_eta_1_is_the_ddpm_posterior_step(oracle_schedule, assert_close64):
    """sigma_t(1) is the posterior standard deviation and the mean then equals the posterior mean, so for every t
    of the full chain, with the same noise, the two steps agree up to float64 rounding (RTOL64, conftest.py)."""
    g = torch.Generator().manual_seed(23)
    xt, eps, noise = (torch.randn(8, 3, generator=g, dtype=f64) for _ in range(3))
    for t in range(oracle_schedule.T):
        assert_close64(
            ddim_step(oracle_schedule, eps, t, xt, noise, eta=1.0),
            ddpm_step(oracle_schedule, eps, t, xt, noise, variance="posterior"),
            msg=lambda m, t=t: f"at t={t}: {m}",
        )


# Gaussian data on a grid even in the half log-SNR lambda = log SNR / 2, from lambda = 8 to -8 (alpha_bar from
# 1 - 1e-7 to 1e-7): there the exact probability-flow map is known (flow_to_data) and a solver's global error
# is C h^order with h = 16 / (k - 1) the step in lambda.
LOG_SNR_SCHEDULE = NoiseSchedule.from_log_snr(torch.linspace(16, -16, 4096, dtype=f64))


CONVERGENCE_STEPS = [32, 64, 128, 256]


def fitted_order(step_counts, errors):
    """The slope of log(error) against -log(steps), fitted by least squares."""
    design = torch.tensor([[math.log(k), 1.0] for k in step_counts], dtype=f64)
    logs = torch.tensor([[math.log(e)] for e in errors], dtype=f64)
    return -torch.linalg.lstsq(design, logs).solution[0, 0].item()


@pytest.mark.parametrize("sampler, order", [("ddim", 1), ("dpm-solver++", 2)])
def test_convergence_order_on_gaussian_data(sampler, order):
    """The error against the exact flow map falls like steps^-order: DDIM is first order, DPM-Solver++(2M) second.

    Measured slopes: 0.99 and 1.98. The band of +-0.15 allows the higher-order terms still present at 32 steps
    (h = 0.5) and the rounding of the grid's indices (which makes the steps in lambda uneven by up to 1%), and
    still tells first order from second. The floor of the comparison, the last step returning E[x_0 | x_t] at
    alpha_bar = 1 - 1e-7 rather than the flow's end point, is below 1e-6, far under the errors (>= 8e-4).
    """
    schedule = LOG_SNR_SCHEDULE
    model, mu, variances, q = gaussian_denoiser(schedule)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(24), dtype=f64)
    exact = flow_to_data(x_T, schedule.alpha_bars[-1], mu, variances, q)
    errors = [
        sample(model, schedule, x_T.shape, sampler=sampler, num_steps=k, x_T=x_T).sub(exact).abs().max().item()
        for k in CONVERGENCE_STEPS
    ]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert fitted_order(CONVERGENCE_STEPS, errors) == pytest.approx(order, abs=0.15), errors


INVERSION_STEPS = [64, 128, 256, 512]


def test_ddim_inversion_then_sampling_returns_the_start():
    """Inversion evaluates eps at x_{t_{i-1}} where sampling evaluates it at x_{t_i}, so the round trip is exact
    only in the limit: its error is first order (measured slope 0.96, from 0.33 at 64 steps to 0.046 at 512)."""
    schedule = LOG_SNR_SCHEDULE
    model, mu, variances, q = gaussian_denoiser(schedule)
    g = torch.Generator().manual_seed(25)
    x0 = mu + (torch.randn(64, 3, generator=g, dtype=f64) * variances.sqrt()) @ q.T
    errors = []
    for k in INVERSION_STEPS:
        noise = ddim_invert(model, schedule, x0, num_steps=k)
        assert noise.shape == x0.shape and noise.dtype == f64
        back = sample(model, schedule, x0.shape, sampler="ddim", num_steps=k, x_T=noise)
        errors.append(back.sub(x0).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert fitted_order(INVERSION_STEPS, errors) == pytest.approx(1, abs=0.15), errors
    assert errors[-1] < 0.1


def test_ddim_inversion_of_gaussian_data_follows_the_exact_inverse_flow():
    """The inverted noise approaches the exact flow of the data to alpha_bar_{T-1}, first order in the step
    (measured: max error 0.53 at 64 steps, 0.072 at 512, slope 0.96); there the data are whitened,
    (x0 - mu) / sqrt(lam) per eigendirection up to alpha_bar_{T-1} = 1e-7."""
    schedule = LOG_SNR_SCHEDULE
    model, mu, variances, q = gaussian_denoiser(schedule)
    x0 = mu + (torch.randn(64, 3, generator=torch.Generator().manual_seed(26), dtype=f64) * variances.sqrt()) @ q.T
    exact = flow_from_data(x0, schedule.alpha_bars[-1], mu, variances, q)
    errors = [ddim_invert(model, schedule, x0, num_steps=k).sub(exact).abs().max().item() for k in INVERSION_STEPS]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert fitted_order(INVERSION_STEPS, errors) == pytest.approx(1, abs=0.15), errors
    assert errors[-1] < 0.1
    # The exact inverse flow is the standardised data, so exact and inverted noises are near N(0, I) in scale.
    assert exact.norm(dim=1).mean() == pytest.approx(math.sqrt(3), rel=0.2)


def test_slerp_keeps_the_norm_and_the_endpoints():
    g = torch.Generator().manual_seed(27)
    z0, z1 = torch.randn(4, 16, generator=g, dtype=f64), torch.randn(4, 16, generator=g, dtype=f64)
    z1 = z1 * z0.norm() / z1.norm()  # equal norms
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1, rtol=1e-12, atol=1e-12)
    for alpha in (0.1, 0.25, 0.5, 0.9):
        assert slerp(z0, z1, alpha).norm().item() == pytest.approx(z0.norm().item(), rel=1e-12)
    # The straight line between them is shorter: slerp is not linear interpolation.
    assert (0.5 * z0 + 0.5 * z1).norm() < 0.9 * z0.norm()


def test_slerp_matches_the_formula():
    """sin((1 - a) theta) / sin(theta) z0 + sin(a theta) / sin(theta) z1, theta the angle between z0 and z1 (whole
    tensors), typed out with Python floats; endpoints of different norms interpolate their norms smoothly."""
    g = torch.Generator().manual_seed(28)
    z0, z1 = torch.randn(3, 5, generator=g, dtype=f64), 2 * torch.randn(3, 5, generator=g, dtype=f64)
    a0, a1 = z0.flatten().tolist(), z1.flatten().tolist()
    dot = sum(p * q for p, q in zip(a0, a1, strict=True))
    theta = math.acos(dot / (math.sqrt(sum(p * p for p in a0)) * math.sqrt(sum(q * q for q in a1))))
    for alpha in (0.0, 0.3, 0.5, 0.8, 1.0):
        w0, w1 = math.sin((1 - alpha) * theta) / math.sin(theta), math.sin(alpha * theta) / math.sin(theta)
        expected = torch.tensor([w0 * p + w1 * q for p, q in zip(a0, a1, strict=True)], dtype=f64).reshape(3, 5)
        torch.testing.assert_close(slerp(z0, z1, alpha), expected, rtol=1e-12, atol=1e-12)


def test_slerp_between_parallel_or_opposite_noises_survives_rounding():
    """In float32 the computed cosine of z with itself (or with -z) can round past +1 (-1), where arccos is NaN: the
    same noise twice must give it back, and opposite noises must be refused, for every one of many random noises."""
    g = torch.Generator().manual_seed(29)
    for _ in range(50):
        z = torch.randn(3, 32, 32, generator=g)
        torch.testing.assert_close(slerp(z, z, 0.3), z, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="opposite"):
            slerp(z, -z, 0.3)


def test_sampling_refuses_an_unknown_sampler(schedule, mentions):
    allowed = ("ddpm", "ddim", "dpm-solver++", "euler", "heun")
    with pytest.raises(ValueError, match=mentions("sampler", "'lms'", *allowed)):
        sample(zero_model, schedule, (4, 2), sampler="lms")
    with pytest.raises(ValueError, match=mentions("sampler", "'lms'", *allowed)):
        next(sample_loop(zero_model, schedule, torch.zeros(4, 2), sampler="lms"))


@pytest.mark.parametrize("sampler", ["ddpm", "dpm-solver++"])
def test_eta_applies_to_the_ddim_sampler_only(schedule, sampler, mentions):
    with pytest.raises(ValueError, match=mentions("takes no option", "'eta'", repr(sampler))):
        sample(zero_model, schedule, (4, 2), sampler=sampler, eta=0.5)
    sample(zero_model, schedule, (4, 2), sampler="ddim", eta=0.5)  # allowed with ddim


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_ddim_step_refuses_eta_outside_0_1(schedule, eta, mentions):
    with pytest.raises(ValueError, match=mentions("eta", repr(eta), "[0, 1]")):
        ddim_step(schedule, X, 3, X, X, eta=eta)


PROGRESS_SCRIPT = """
import sys, torch
from diffusion_lib import NoiseSchedule, sample
def zero(x, t):
    return torch.zeros_like(x)
sample(zero, NoiseSchedule.linear(10), (2, 2), progress=False)
sys.stderr.write("<between>")
sample(zero, NoiseSchedule.linear(10), (2, 2), sampler="ddim", num_steps=7, progress=True)
"""


def test_progress_bar_is_shown_on_request_only():
    """In a fresh interpreter with this environment less tqdm's settings (tqdm reads TQDM_DISABLE at import):
    progress=False writes nothing at all, progress=True a tqdm bar named after the sampler, on stderr, that reaches
    7/7."""
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", PROGRESS_SCRIPT],
        env={name: value for name, value in os.environ.items() if not name.startswith("TQDM_")},
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    before, after = result.stderr.split("<between>")
    assert before == ""
    assert "ddim: 100%" in after and "7/7" in after, after


def test_slerp_of_parallel_endpoints_is_the_segment_and_of_opposite_ones_an_error():
    z = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for alpha in (0.0, 0.3, 1.0):
        assert torch.allclose(slerp(z, 2 * z, alpha), (1 + alpha) * z, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="opposite directions"):
        slerp(z, -z, 0.5)


def test_an_unknown_sampler_is_refused_before_anything_is_drawn():
    schedule = NoiseSchedule.linear(10)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    with pytest.raises(ValueError, match="unknown sampler 'lms'; allowed: ddpm, ddim, dpm-solver\\+\\+, euler, heun"):
        sample(lambda x, t: x, schedule, (2, 3), sampler="lms", generator=generator)
    assert torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        sample_loop(lambda x, t: x, schedule, torch.zeros(2, 3), sampler="lms")  # raised on the call itself


@pytest.mark.parametrize(
    ("sampler", "options", "message"),
    [
        ("ddpm", {"eta": 0.5}, "sampler 'ddpm' takes no option 'eta'; its options: variance, clip_x0"),
        ("dpm-solver++", {"clip_x0": True}, "sampler 'dpm-solver\\+\\+' takes no option 'clip_x0'; its options: none"),
        ("heun", {"eta": 0.2}, "sampler 'heun' takes no option 'eta'; its options: none"),
        ("ddim", {"eta": 1.5}, r"sampler 'ddim': option eta=1.5 is not allowed; allowed: a number in \[0.0, 1.0\]"),
        ("ddim", {"eta": True}, r"option eta=True is not allowed; allowed: a number in \[0.0, 1.0\]"),
        ("ddpm", {"variance": "big"}, "option variance='big' is not allowed; allowed: one of 'posterior', 'beta'"),
        ("ddim", {"clip_x0": "yes"}, "option clip_x0='yes' is not allowed; allowed: True or False"),
    ],
)
def test_an_option_a_sampler_does_not_declare_or_allow_is_named_before_anything_is_drawn(sampler, options, message):
    schedule = NoiseSchedule.linear(10)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    with pytest.raises(ValueError, match=message):
        sample(lambda x, t: x, schedule, (2, 3), sampler=sampler, generator=generator, **options)
    assert torch.equal(generator.get_state(), state)


def test_the_registry_fills_in_each_declared_default():
    assert SAMPLERS["ddim"].checked({}) == {"eta": 0.0, "clip_x0": False}
    assert SAMPLERS["ddpm"].checked({"clip_x0": True}) == {"variance": "posterior", "clip_x0": True}
    assert SAMPLERS["heun"].checked({}) == {} and SAMPLERS["heun"].calls_per_step == 2


def test_euler_over_the_noise_levels_of_the_steps_is_ddim_with_eta_zero():
    """Chapter 8: in u = x / sqrt(alpha_bar) a DDIM step is u + (sigma' - sigma) eps, Euler's step; both run on the
    levels of the same respaced steps, so they agree to float64 rounding (seen: 4e-15)."""
    schedule = NoiseSchedule.linear(100)
    model = GaussianDenoiser(torch.zeros(3, dtype=f64), torch.diag(torch.tensor([0.3, 1.0, 2.0], dtype=f64)), schedule)
    x_T = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=f64)
    for steps in (100, 13):
        ddim = sample(model, schedule, x_T.shape, sampler="ddim", num_steps=steps, x_T=x_T)
        euler = sample(model, schedule, x_T.shape, sampler="euler", num_steps=steps, x_T=x_T)
        torch.testing.assert_close(euler, ddim, rtol=0, atol=1e-12)
    trajectory = sample(model, schedule, x_T.shape, sampler="heun", num_steps=13, x_T=x_T, trajectory=True)
    assert trajectory.shape == (14, 50, 3) and torch.equal(trajectory[0], x_T)


def test_langevin_takes_the_step_of_its_equation_with_noise_from_its_generator():
    """Two steps of eq. langevin written out by hand, x + (delta / 2) score(x) + sqrt(delta) z, with z drawn in float64
    from a generator seeded like the one langevin is given: equal to rounding."""

    def score(x):  # of N(0, 0.25 I)
        return -x / 0.25

    x0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(30), dtype=f64)
    delta, by_hand = 0.01, torch.Generator().manual_seed(31)
    expected = x0
    for _ in range(2):
        z = torch.randn(x0.shape, generator=by_hand, dtype=f64)
        expected = expected + delta / 2 * score(expected) + math.sqrt(delta) * z
    result = langevin(score, x0, delta, 2, generator=torch.Generator().manual_seed(31))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-15)


def test_langevin_on_a_gaussian_follows_its_autoregression_in_closed_form():
    """For N(m, s^2) the score is -(x - m) / s^2, so each Langevin step is x <- a x + (1 - a) m + sqrt(delta) z with
    a = 1 - delta / (2 s^2): after k steps from x_0 the mean is m + a^k (x_0 - m) and the variance
    delta (1 - a^(2k)) / (1 - a^2), which tends to s^2 / (1 - delta / (4 s^2)), the step's bias above s^2."""
    m, s, delta, k, x_start, n = 0.7, 0.5, 0.05, 40, -2.0, 200_000
    a = 1 - delta / (2 * s**2)
    x = langevin(lambda x: -(x - m) / s**2, torch.full((n,), x_start, dtype=f64), delta, k,
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    mean = m + a**k * (x_start - m)
    variance = delta * (1 - a ** (2 * k)) / (1 - a**2)
    # Monte Carlo: 5 standard errors; the standard error of a sample variance is variance * sqrt(2 / (n - 1)).
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(variance / n)
    assert abs(x.var().item() - variance) < 5 * variance * math.sqrt(2 / (n - 1))
    assert x.var().item() > s**2 * (1 - a ** (2 * k)) + 10 * variance * math.sqrt(2 / (n - 1))  # the step's bias
