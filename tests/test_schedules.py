"""NoiseSchedule (schedules.py): its tables, the forward process q(x_t | x_0) and its one-step kernel, the posterior
q(x_{t-1} | x_t, x_0), respacing, the step index, and the errors for bad input.

Each check is against an independent computation: the chain run step by step
(exactly, by propagating the mean and variance of one coordinate through the
one-step kernel in Python floats, and by Monte Carlo with tolerances of 5
standard errors), Bayes' rule integrated by quadrature, the closed forms of
the linear and cosine schedules, and Hugging Face diffusers' DDPMScheduler
(its own float32 tables, with tolerances derived from float32 rounding, and
its formulas run on tables rebuilt in float64; see conftest.py).
"""

import math

import pytest
import torch
from diffusers import DDPMScheduler
from step_index_checks import step_index_tests

from diffusion_lib import NoiseSchedule

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


# The forward kernel and the closed form q(x_t | x_0) -------------------------------------------------


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


def test_any_integer_type_indexes_a_step():
    """Python ints, NumPy integers and integer tensors of any width name the same step."""
    import numpy as np

    schedule = NoiseSchedule.linear(T=np.int64(50))
    x0, noise = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 2, dtype=torch.float64)
    expected = schedule.q_sample(x0, torch.tensor([7, 7, 7]), noise)
    for t in (7, np.int32(7), torch.tensor([7, 7, 7], dtype=torch.uint8), torch.tensor([7, 7, 7], dtype=torch.int16)):
        torch.testing.assert_close(schedule.q_sample(x0, t, noise), expected, rtol=0, atol=0)
    assert torch.allclose(expected, torch.full_like(x0, schedule.alpha_bars[7].sqrt().item()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lookups_follow_the_device_of_x():
    schedule = SCHEDULES["linear"]
    x = torch.ones(4, 2, device="cuda")
    t = torch.tensor([0, 1, 2, 999], device="cuda")
    out = schedule.q_sample(x, t, torch.zeros_like(x))
    assert out.device == x.device and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0].cpu(), schedule.alpha_bars[t.cpu()].sqrt().float())


# Schedules -------------------------------------------------------------------------------------------


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


def test_from_log_snr_inverts_the_log_snr():
    """from_log_snr (eq. snr): the schedule rebuilt from log(alpha_bar / (1 - alpha_bar)) of another has its alpha
    bars and betas, in float64; a list, a float32 tensor and a float64 tensor all give a float64 schedule."""
    for schedule in SCHEDULES.values():
        log_snr = (schedule.alpha_bars / (1 - schedule.alpha_bars)).log()
        assert NoiseSchedule.from_log_snr(log_snr.float()).alpha_bars.dtype == torch.float64
        for given in (log_snr, log_snr.tolist()):
            rebuilt = NoiseSchedule.from_log_snr(given)
            assert rebuilt.alpha_bars.dtype == torch.float64 and rebuilt.T == schedule.T
            # sigmoid(log(a / (1 - a))) rounds to a within a few ulps; betas = 1 - ratio of alpha bars carry them.
            torch.testing.assert_close(rebuilt.alpha_bars, schedule.alpha_bars, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(rebuilt.betas, schedule.betas, rtol=1e-9, atol=1e-13)


# Respacing -------------------------------------------------------------------------------------------


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


def test_spaced_timesteps_are_the_nearest_integers_to_an_even_spread():
    """round(i (T - 1) / (k - 1)) in exact rational arithmetic; k - 1 odd makes every fraction j / (k - 1) at least
    1 / (2 (k - 1)) away from a tie, so float64 rounding cannot flip one (T = 10^6: ulps of 1e-10)."""
    from fractions import Fraction

    for T, k in ((1000, 50), (1000, 8), (10**6, 334)):
        schedule = NoiseSchedule.linear(T)
        exact = [round(Fraction(i * (T - 1), k - 1)) for i in range(k)]
        assert schedule.spaced_timesteps(k).tolist() == exact


def test_respaced_betas_follow_the_definition():
    """beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}, with alpha_bar_{tau_0} = 1."""
    schedule = NoiseSchedule.linear(T=1000)
    tau = [0, 99, 499, 500, 999]
    products = [math.prod(1 - b for b in schedule.betas[: t + 1].tolist()) for t in tau]
    expected = [1 - a / b for a, b in zip(products, [1.0] + products[:-1], strict=True)]
    torch.testing.assert_close(
        schedule.respaced(tau).betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0
    )


def test_respaced_forward_chain_has_the_original_marginals():
    """q_step of the short chain, run from x_0, gives x_{tau_i} ~ N(sqrt(alpha_bar) x_0, 1 - alpha_bar): Monte Carlo."""
    schedule = NoiseSchedule.linear(T=1000)
    tau = schedule.spaced_timesteps(6)
    short = schedule.respaced(tau)
    n = 100_000
    g = torch.Generator().manual_seed(6)
    x0 = torch.tensor([0.8, -0.3], dtype=torch.float64)
    x = x0.expand(n, 2)
    for i in range(short.T):
        x = short.q_step(x, i, torch.randn(n, 2, generator=g, dtype=torch.float64))
        alpha_bar = schedule.alpha_bars[tau[i]]
        mean, var = alpha_bar.sqrt() * x0, 1 - alpha_bar
        assert ((x.mean(0) - mean).abs() < 5 * (var / n).sqrt()).all(), i
        assert ((x.var(0) - var).abs() < 5 * var * math.sqrt(2 / (n - 1))).all(), i


# The posterior q(x_{t-1} | x_t, x_0) -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000), NoiseSchedule.cosine(50)], ids=["linear", "cosine"])
def test_posterior_matches_bayes_rule_by_quadrature(schedule):
    generator = torch.Generator().manual_seed(0)
    grid = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    for t in (1, 2, schedule.T // 2, schedule.T - 1):
        x0 = 2 * torch.rand(1, generator=generator, dtype=torch.float64) - 1
        a_bar = schedule.alpha_bars[t]
        xt = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * torch.randn(1, generator=generator, dtype=torch.float64)
        # Bayes: q(x_{t-1} | x_t, x_0) is proportional to q(x_{t-1} | x_0) q(x_t | x_{t-1}).
        a_bar_prev, alpha, beta = schedule.alpha_bars[t - 1], schedule.alphas[t], schedule.betas[t]
        normal = torch.distributions.Normal
        log_joint = normal(a_bar_prev.sqrt() * x0, (1 - a_bar_prev).sqrt()).log_prob(grid)
        log_joint = log_joint + normal(alpha.sqrt() * grid, beta.sqrt()).log_prob(xt)
        weights = torch.exp(log_joint - log_joint.max())
        weights = weights / torch.trapezoid(weights, grid)
        mean = torch.trapezoid(grid * weights, grid)
        var = torch.trapezoid((grid - mean) ** 2 * weights, grid)

        closed_mean, closed_var = schedule.posterior(x0[:, None], xt[:, None], t)
        assert closed_mean.item() == pytest.approx(mean.item(), abs=1e-7)
        assert closed_var.item() == pytest.approx(var.item(), rel=1e-6)


def test_posterior_at_the_first_step_is_a_point_mass_at_x0():
    schedule = NoiseSchedule.linear(T=10, beta_start=0.02, beta_end=0.6)
    x0, xt = torch.tensor([[0.3, -0.7]], dtype=torch.float64), torch.tensor([[1.1, 0.2]], dtype=torch.float64)
    mean, var = schedule.posterior(x0, xt, 0)
    torch.testing.assert_close(mean, x0)
    assert (var == 0).all()


# Against diffusers' DDPMScheduler --------------------------------------------------------------------


EPS32 = torch.finfo(torch.float32).eps


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


T_STEP = 1000  # the steps of the oracle_schedule fixture (conftest.py)
SHAPE = (6, 1, 3, 3)  # NCHW, so that the per-example tables broadcast over channels and pixels


@pytest.mark.parametrize("t", [1, 2, T_STEP // 2, T_STEP - 1])
def test_posterior_matches_diffusers_coefficients(
    oracle_schedule, t, float64_scheduler, diffusers_step, randn, assert_close64
):
    """With prediction_type="sample" diffusers' step is x_{t-1} = posterior mean(x_0, x_t) + sqrt(var) z."""
    scheduler = float64_scheduler(oracle_schedule, prediction_type="sample", variance_type="fixed_small")
    x0, xt, z = randn(SHAPE, 4), randn(SHAPE, 5), randn(SHAPE, 6)
    mean, var = oracle_schedule.posterior(x0, xt, t)
    assert_close64(var, scheduler._get_variance(t).expand_as(xt))  # diffusers' fixed_small variance
    expected, _ = diffusers_step(scheduler, x0, t, xt, seed=6)
    assert_close64(mean + var.sqrt() * z, expected)


def test_posterior_at_t0_is_the_point_mass_diffusers_returns(
    oracle_schedule, float64_scheduler, diffusers_step, randn, assert_close64
):
    scheduler = float64_scheduler(oracle_schedule, prediction_type="sample")
    x0, xt = randn(SHAPE, 4), randn(SHAPE, 5)
    mean, var = oracle_schedule.posterior(x0, xt, 0)
    expected, _ = diffusers_step(scheduler, x0, 0, xt, seed=6)  # no noise at t = 0
    assert_close64(mean, expected)
    assert_close64(mean, x0)
    assert (var == 0).all()


def test_q_sample_matches_add_noise(oracle_schedule, float64_scheduler, randn, assert_close64):
    scheduler = float64_scheduler(oracle_schedule)
    x0, noise = randn(SHAPE, 7), randn(SHAPE, 8)
    t = torch.tensor([0, 1, 17, T_STEP // 2, T_STEP - 2, T_STEP - 1])
    assert_close64(oracle_schedule.q_sample(x0, t, noise), scheduler.add_noise(x0, noise, t))


# Bad input -------------------------------------------------------------------------------------------


T = 10  # the steps of the schedule fixture (conftest.py)


def test_unknown_schedule_name(mentions):
    with pytest.raises(ValueError, match=mentions("'quadratic'", "linear", "cosine")):
        NoiseSchedule.named("quadratic")


@pytest.mark.parametrize("bad_T", [0, -3, 2.5, "10", None])
@pytest.mark.parametrize(
    "make",
    [NoiseSchedule.linear, NoiseSchedule.cosine, lambda T: NoiseSchedule.named("cosine", T)],
    ids=["linear", "cosine", "named"],
)
def test_T_must_be_a_positive_integer(make, bad_T, mentions):
    with pytest.raises(ValueError, match=mentions("T", repr(bad_T))):
        make(bad_T)


@pytest.mark.parametrize("bad_beta", [0.0, 1.0, -0.01, 1.5, math.nan])
def test_betas_must_lie_strictly_between_0_and_1(bad_beta, mentions):
    with pytest.raises(ValueError, match=mentions("beta", "(0, 1)", str(bad_beta))):
        NoiseSchedule([0.1, bad_beta, 0.2])


def test_linear_schedule_with_a_zero_beta_start_is_refused(mentions):
    with pytest.raises(ValueError, match=mentions("beta", "(0, 1)", "0.0")):
        NoiseSchedule.linear(T, beta_start=0.0)


@pytest.mark.parametrize("betas, shape", [([], "(0,)"), (0.1, "()"), (torch.full((2, 3), 0.1), "(2, 3)")])
def test_betas_must_be_a_non_empty_1d_sequence(betas, shape, mentions):
    with pytest.raises(ValueError, match=mentions("betas", "1-D", shape)):
        NoiseSchedule(betas)


@pytest.mark.parametrize(
    "alpha_bars, offending",
    [([0.9, 0.95, 0.5], "alpha_bars[1] = 0.95"), ([0.9, 0.9, 0.5], "alpha_bars[1] = 0.9"),
     ([0.9, 0.0], "alpha_bars[1] = 0.0"), ([1.0, 0.5], "alpha_bars[0] = 1.0")],
)  # fmt: skip
def test_alpha_bars_must_decrease_strictly_inside_0_1(alpha_bars, offending, mentions):
    """Each of these would give a beta of 0 or at least 1; the error names alpha_bars and the offending entry, not
    the beta it would have become."""
    with pytest.raises(ValueError, match=mentions("alpha_bars must decrease strictly", offending)):
        NoiseSchedule.from_alpha_bars(alpha_bars)


@pytest.mark.parametrize("alpha_bars, shape", [([], "(0,)"), (torch.full((2, 3), 0.5), "(2, 3)")])
def test_alpha_bars_must_be_a_non_empty_1d_sequence(alpha_bars, shape, mentions):
    with pytest.raises(ValueError, match=mentions("alpha_bars", "1-D", shape)):
        NoiseSchedule.from_alpha_bars(alpha_bars)


X = torch.zeros(4, 2, dtype=torch.float64)


# Every lookup of the schedule that takes a step index, as a function of (schedule, t).
T_USERS = {
    "q_sample": lambda s, t: s.q_sample(X, t, X),
    "q_step": lambda s, t: s.q_step(X, t, X),
    "posterior": lambda s, t: s.posterior(X, X, t),
}


test_t_out_of_range, test_t_must_have_one_entry_per_example, test_t_must_be_an_integer = step_index_tests(T_USERS)


A, B, ROW = torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(1, 2)


SHAPE_USERS = {
    "q_sample": (lambda s, a, b: s.q_sample(a, 1, b), "x0", "noise"),
    "q_step": (lambda s, a, b: s.q_step(a, 1, b), "x_prev", "noise"),
    "posterior": (lambda s, a, b: s.posterior(a, b, 1), "x0", "xt"),
}


@pytest.mark.parametrize("other", [B, ROW], ids=["different", "broadcastable"])
@pytest.mark.parametrize("use, first, second", SHAPE_USERS.values(), ids=SHAPE_USERS.keys())
def test_shape_mismatch_names_both_arguments(schedule, use, first, second, other, mentions):
    """Even shapes that would broadcast are refused: a silently broadcast noise is a bug."""
    with pytest.raises(ValueError, match=mentions(first, second, "(4, 2)", str(tuple(other.shape)))):
        use(schedule, A, other)


@pytest.mark.parametrize("timesteps", [[0, 5, 5], [7, 3], [2, 6, 4], []], ids=str)
def test_respaced_needs_increasing_timesteps(schedule, timesteps, mentions):
    with pytest.raises(ValueError, match=mentions("timesteps", "increasing", str(timesteps))):
        schedule.respaced(timesteps)


@pytest.mark.parametrize("timesteps, bad", [([0, 4, T], T), ([-1, 4], -1)], ids=str)
def test_respaced_timesteps_out_of_range(schedule, timesteps, bad, mentions):
    with pytest.raises(ValueError, match=mentions("timesteps", str(bad), str(T - 1))):
        schedule.respaced(timesteps)


@pytest.mark.parametrize("num_steps", [0, -2, T + 1, 2.0])
def test_spaced_timesteps_bounds(schedule, num_steps, mentions):
    with pytest.raises(ValueError, match=mentions("num_steps", repr(num_steps), str(T))):
        schedule.spaced_timesteps(num_steps)


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
