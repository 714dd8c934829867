"""Cross-checks against Hugging Face diffusers' DDPMScheduler, an independent implementation.

diffusers uses the same 0-indexed timesteps (t = 0..T-1) as the library, so the
two can be compared index by index. diffusers builds its tables in float32; the
schedule tables are compared to those with tolerances derived from float32
rounding, and everything else is compared after rebuilding diffusers' tables in
float64 (see :func:`float64_scheduler`), so that a disagreement of more than a
few float64 rounding errors is a real difference of formulas.
"""

import pytest
import torch
from diffusers import DDPMScheduler  # noqa: E402

from diffusion_lib import NoiseSchedule, ddpm_step, sample_loop
from diffusion_lib.parameterization import v_from_eps, x0_from_eps, x0_from_v

EPS32 = torch.finfo(torch.float32).eps
DIFFUSERS_SCHEDULE = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
DIFFUSERS_VARIANCE = {"posterior": "fixed_small", "beta": "fixed_large"}

# Float64 comparisons: the quantities pass through a handful of operations, one of
# which divides by sqrt(alpha_bar_t) >= 5e-5 (cosine schedule, t = T-1), so their
# rounding errors stay below ~1e4 * 2.2e-16 relative. 1e-10 leaves a wide margin
# and is still millions of times smaller than any difference of formulas.
RTOL64 = ATOL64 = 1e-10


def float64_scheduler(schedule, **config):
    """A DDPMScheduler for ``schedule`` whose tables are rebuilt in float64.

    DDPMScheduler.__init__ stores betas, alphas = 1 - betas, alphas_cumprod =
    cumprod(alphas) and one = 1 as float32 tensors; its ``step``, ``add_noise`` and
    ``get_velocity`` only read those attributes, so redoing the same four lines in
    float64 (from the schedule's betas) lets them run in float64.
    """
    config = {"clip_sample": False, "prediction_type": "epsilon", **config}
    scheduler = DDPMScheduler(num_train_timesteps=schedule.T, trained_betas=schedule.betas.numpy(), **config)
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed):
    return torch.randn(shape, generator=seeded(seed), dtype=torch.float64)


def assert_close64(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=RTOL64, atol=ATOL64)


# The schedule tables, against diffusers' own float32 tables -----------------------

# A float32 linspace, or a float64 value cast to float32, is within a few units in
# the last place (EPS32 relative) of the exact value.
BETA_RTOL = 4 * EPS32


def float32_cumprod_rtol(betas):
    """Worst-case relative error of alpha_bar_t = prod_{s<=t} (1 - beta_s) evaluated in float32.

    Each factor inherits the error of beta_s, amplified by beta_s / (1 - beta_s)
    in 1 - beta_s (large where beta_s is close to 1, as in the cosine schedule's
    capped last step), plus half a unit for the subtraction and half a unit for
    the multiplication: to first order the relative errors add up along the product.
    """
    per_factor = BETA_RTOL * betas / (1 - betas) + EPS32
    return torch.cumsum(per_factor, dim=0)


LINEAR_CASES = [(1, 1e-4, 0.02), (2, 1e-4, 0.02), (10, 1e-4, 0.02), (1000, 1e-4, 0.02), (100, 1e-3, 0.05)]


@pytest.mark.parametrize("T, beta_start, beta_end", LINEAR_CASES)
def test_linear_schedule_matches_diffusers(T, beta_start, beta_end):
    ours = NoiseSchedule.linear(T, beta_start, beta_end)
    theirs = DDPMScheduler(num_train_timesteps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule="linear")
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=BETA_RTOL, atol=0)
    relative_gap = (ours.alpha_bars - theirs.alphas_cumprod.double()).abs() / ours.alpha_bars
    assert (relative_gap <= float32_cumprod_rtol(ours.betas)).all(), relative_gap.max()


@pytest.mark.parametrize("T", [1, 2, 10, 50, 1000])
def test_cosine_schedule_matches_diffusers(T):
    ours = NoiseSchedule.cosine(T)
    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=BETA_RTOL, atol=0)
    relative_gap = (ours.alpha_bars - theirs.alphas_cumprod.double()).abs() / ours.alpha_bars
    assert (relative_gap <= float32_cumprod_rtol(ours.betas)).all(), relative_gap.max()


def test_float32_tolerance_detects_an_off_by_one_schedule():
    """The tolerances above are tight enough to catch a schedule shifted by one step."""
    T = 1000
    shifted = NoiseSchedule(torch.linspace(1e-4, 0.02, T + 1, dtype=torch.float64)[1:])
    theirs = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    relative_gap = (shifted.alpha_bars - theirs.alphas_cumprod.double()).abs() / shifted.alpha_bars
    assert (relative_gap > float32_cumprod_rtol(shifted.betas)).any()


# One reverse step -----------------------------------------------------------------

T_STEP = 1000
STEP_TIMES = [0, 1, 2, T_STEP // 2, T_STEP - 2, T_STEP - 1]
SHAPE = (6, 1, 3, 3)  # NCHW, so that the per-example tables broadcast over channels and pixels


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.named(request.param, T_STEP)


def diffusers_step(scheduler, eps, t, xt, seed):
    """diffusers' step; for t > 0 it draws torch.randn(xt.shape, generator, dtype=eps.dtype) itself."""
    out = scheduler.step(eps, t, xt, generator=seeded(seed))
    return out.prev_sample, out.pred_original_sample


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("t", STEP_TIMES)
def test_ddpm_step_matches_diffusers(schedule, variance, clip, t):
    scheduler = float64_scheduler(schedule, variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=clip)
    xt, eps = 2 * randn(SHAPE, 1), randn(SHAPE, 2)
    # diffusers' step draws its noise with randn_tensor(shape, generator, dtype=eps.dtype),
    # which on the CPU is torch.randn(shape, generator=generator, dtype=dtype): the same draw as here.
    noise = randn(SHAPE, seed=3)
    expected, x0_expected = diffusers_step(scheduler, eps, t, xt, seed=3)
    assert_close64(ddpm_step(schedule, eps, t, xt, noise, variance=variance, clip_x0=clip), expected)
    x0 = x0_from_eps(schedule, xt, t, eps)
    if clip:  # the test exercises the clamp: some estimates of x_0 leave [-1, 1]
        assert (x0.abs() > 1).any()
        x0 = x0.clamp(-1, 1)
    assert_close64(x0, x0_expected)


@pytest.mark.parametrize("t", [1, 2, T_STEP // 2, T_STEP - 1])
def test_posterior_matches_diffusers_coefficients(schedule, t):
    """With prediction_type="sample" diffusers' step is x_{t-1} = posterior mean(x_0, x_t) + sqrt(var) z."""
    scheduler = float64_scheduler(schedule, prediction_type="sample", variance_type="fixed_small")
    x0, xt, z = randn(SHAPE, 4), randn(SHAPE, 5), randn(SHAPE, 6)
    mean, var = schedule.posterior(x0, xt, t)
    assert_close64(var, scheduler._get_variance(t).expand_as(xt))  # diffusers' fixed_small variance
    expected, _ = diffusers_step(scheduler, x0, t, xt, seed=6)
    assert_close64(mean + var.sqrt() * z, expected)


def test_posterior_at_t0_is_the_point_mass_diffusers_returns(schedule):
    scheduler = float64_scheduler(schedule, prediction_type="sample")
    x0, xt = randn(SHAPE, 4), randn(SHAPE, 5)
    mean, var = schedule.posterior(x0, xt, 0)
    expected, _ = diffusers_step(scheduler, x0, 0, xt, seed=6)  # no noise at t = 0
    assert_close64(mean, expected)
    assert_close64(mean, x0)
    assert (var == 0).all()


def test_q_sample_matches_add_noise(schedule):
    scheduler = float64_scheduler(schedule)
    x0, noise = randn(SHAPE, 7), randn(SHAPE, 8)
    t = torch.tensor([0, 1, 17, T_STEP // 2, T_STEP - 2, T_STEP - 1])
    assert_close64(schedule.q_sample(x0, t, noise), scheduler.add_noise(x0, noise, t))


def test_v_from_eps_matches_get_velocity(schedule):
    scheduler = float64_scheduler(schedule)
    x0, eps = randn(SHAPE, 9), randn(SHAPE, 10)
    t = torch.tensor([0, 1, 17, T_STEP // 2, T_STEP - 2, T_STEP - 1])
    assert_close64(v_from_eps(schedule, x0, t, eps), scheduler.get_velocity(x0, eps, t))


@pytest.mark.parametrize("t", [0, 1, T_STEP // 2, T_STEP - 1])
def test_x0_from_v_matches_diffusers_v_prediction(schedule, t):
    """diffusers' step with prediction_type="v_prediction" returns its estimate of x_0 from v."""
    scheduler = float64_scheduler(schedule, prediction_type="v_prediction")
    xt, v = randn(SHAPE, 11), randn(SHAPE, 12)
    _, x0_expected = diffusers_step(scheduler, v, t, xt, seed=13)
    assert_close64(x0_from_v(schedule, xt, t, v), x0_expected)


# A whole sampling loop ------------------------------------------------------------


def toy_model(T):
    """A fixed deterministic 'denoiser' that depends on x and on the step t (an int, a 0-d or a (B,) tensor)."""

    def model(x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return 0.1 * x * (1 + t / T)

    return model


def diffusers_loop(model, scheduler, x, seed):
    """The standard diffusers loop; returns [(t, x after the step at t)] for every visited t."""
    generator = seeded(seed)
    states = []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
        states.append((int(t), x))
    return states


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_sample_loop_matches_diffusers_loop(name, variance, clip):
    T = 50
    schedule = NoiseSchedule.named(name, T)
    scheduler = float64_scheduler(schedule, variance_type=DIFFUSERS_VARIANCE[variance], clip_sample=clip)
    model, x_T = toy_model(T), randn((64, 2), seed=14)
    # Both loops draw their step noises from a generator with the same seed, one torch.randn per
    # step with t > 0, in the same order; sample_loop draws one more, unused, at t = 0.
    ours = list(sample_loop(model, schedule, x_T.clone(), generator=seeded(15), variance=variance, clip_x0=clip))
    theirs = diffusers_loop(model, scheduler, x_T.clone(), seed=15)
    assert [t for t, _ in ours] == [t for t, _ in theirs] == list(range(T - 1, -1, -1))
    for (t, x_ours), (_, x_theirs) in zip(ours, theirs, strict=True):
        torch.testing.assert_close(x_ours, x_theirs, rtol=RTOL64, atol=ATOL64, msg=lambda m, t=t: f"at t={t}: {m}")
    assert x_T.sub(ours[-1][1]).abs().max() > 0.1  # the loop really moved the samples


@pytest.mark.parametrize("variance", ["posterior", "beta"])
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_respaced_sample_loop_matches_diffusers_linspace_timesteps(name, variance):
    """With num_steps < T both skip steps: diffusers' "linspace" spacing visits the same timesteps and
    steps from alpha_bar at one visited timestep to the next, as the respaced schedule does."""
    T, num_steps = 1000, 20
    schedule = NoiseSchedule.named(name, T)
    scheduler = float64_scheduler(schedule, variance_type=DIFFUSERS_VARIANCE[variance], timestep_spacing="linspace")
    scheduler.set_timesteps(num_steps)
    model, x_T = toy_model(T), randn((64, 2), seed=16)
    ours = list(sample_loop(model, schedule, x_T.clone(), num_steps=num_steps, generator=seeded(17), variance=variance))
    theirs = diffusers_loop(model, scheduler, x_T.clone(), seed=17)
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert_close64(ours[-1][1], theirs[-1][1])
