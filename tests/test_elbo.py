"""The ELBO of chapter 3 against independent computations, in float64.

Closed forms from diffusion_lib (the forward posterior, the Gaussian KL, the
terms of the bound, the eps-parameterized mean, the discretized decoder) are
compared with numerical quadrature, Monte Carlo over whole forward
trajectories, torch.distributions and formulas written out here by hand.
Monte Carlo tolerances are 5 standard errors.
"""

import math

import pytest
import torch
from scipy import integrate

from diffusion_lib import NoiseSchedule
from diffusion_lib.elbo import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    prior_loss,
    reverse_mean,
    reverse_variances,
    step_loss,
    vlb_terms,
    vlb_weights,
)

LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)


def normal_log_density(x, mean, var):
    return -0.5 * math.log(2 * math.pi) - 0.5 * torch.log(torch.as_tensor(var)) - (x - mean) ** 2 / (2 * var)


def short_schedule():
    """T = 10 steps with large betas, so that x_T is close to N(0, 1)."""
    return NoiseSchedule.linear(T=10, beta_start=0.02, beta_end=0.6)


def toy_eps_model(schedule):
    """A fixed nonlinear noise predictor in float64 (any model satisfies the decomposition)."""

    def model(x, t):
        alpha_bar = schedule.alpha_bars[t].reshape(-1, *([1] * (x.dim() - 1)))
        return (1 - alpha_bar).sqrt() * torch.tanh(1.5 * x) + 0.1 * torch.sin(3 * x.flip(-1))

    return model


def ho_mean(schedule, eps, t, xt):
    """Ho et al. (2020), eq. 11: (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)."""
    beta, alpha, alpha_bar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    return (xt - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()


# The KL divergence between Gaussians -----------------------------------------------------------------


def test_gaussian_kl_matches_monte_carlo_and_torch():
    generator = torch.Generator().manual_seed(1)
    mean1 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    var1 = torch.tensor([1.0, 0.3, 2.0, 0.01], dtype=torch.float64)
    mean2 = torch.tensor([0.0, -0.5, -1.0, 0.6], dtype=torch.float64)
    var2 = torch.tensor([2.0, 0.5, 1.5, 0.02], dtype=torch.float64)
    closed = gaussian_kl(mean1, var1, mean2, var2)

    x = mean1 + var1.sqrt() * torch.randn(400_000, 4, generator=generator, dtype=torch.float64)
    log_ratio = normal_log_density(x, mean1, var1) - normal_log_density(x, mean2, var2)
    estimate, standard_error = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(x))
    assert ((closed - estimate).abs() < 5 * standard_error + 1e-12).all(), (closed, estimate, standard_error)

    p = torch.distributions.Normal(mean1, var1.sqrt())
    q = torch.distributions.Normal(mean2, var2.sqrt())
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(p, q), rtol=1e-12, atol=1e-12)


def test_gaussian_kl_keeps_its_precision_for_nearly_equal_variances():
    """At the cosine schedule's last step 1 - alpha_bar differs from 1 by ~2e-9: compare with 50-digit arithmetic."""
    from mpmath import log, mp, mpf

    mp.dps = 50
    schedule = NoiseSchedule.cosine()
    x0 = torch.linspace(-1, 1, 11, dtype=torch.float64)[None]
    alpha_bar = mpf(schedule.alpha_bars[-1].item())
    variance = 1 - alpha_bar
    exact = sum(mpf(0.5) * (variance - 1 - log(variance) + alpha_bar * mpf(x.item()) ** 2) for x in x0[0])
    assert abs(prior_loss(schedule, x0).item() - float(exact)) <= 1e-12 * float(exact)


# The decomposition of the bound ----------------------------------------------------------------------


def negative_elbo_over_trajectories(schedule, eps_model, x0, sigma2, generator):
    """log q(x_{1:T} | x_0) - log p(x_{0:T}) along forward trajectories, written out by hand."""
    states, log_q = [x0], torch.zeros(len(x0), dtype=torch.float64)
    for t in range(schedule.T):
        alpha, beta = schedule.alphas[t], schedule.betas[t]
        x = alpha.sqrt() * states[-1] + beta.sqrt() * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        log_q += normal_log_density(x, alpha.sqrt() * states[-1], beta).sum(1)
        states.append(x)
    log_p = normal_log_density(states[-1], 0.0, 1.0).sum(1)
    for t in range(schedule.T):
        xt = states[t + 1]
        eps = eps_model(xt, torch.full((len(x0),), t))
        log_p += normal_log_density(states[t], ho_mean(schedule, eps, t, xt), sigma2[t]).sum(1)
    return log_q - log_p


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_vlb_terms_match_monte_carlo_over_whole_trajectories(variance):
    schedule, generator = short_schedule(), torch.Generator().manual_seed(2)
    model = toy_eps_model(schedule)
    x0 = 0.6 * torch.randn(20_000, 2, generator=generator, dtype=torch.float64).clamp(-1.6, 1.6)
    sigma2 = {
        "posterior": torch.cat([schedule.posterior_variances[1:2], schedule.posterior_variances[1:]]),
        "beta": schedule.betas,
    }[variance]

    trajectories = negative_elbo_over_trajectories(schedule, model, x0, sigma2, generator)
    prior, steps = vlb_terms(model, schedule, x0, generator=generator, variance=variance, decoder="gaussian")
    difference = trajectories - (prior + steps.sum(1))
    standard_error = difference.std() / math.sqrt(len(x0))
    assert abs(difference.mean()) < 5 * standard_error, (difference.mean(), standard_error)
    assert steps.shape == (len(x0), schedule.T) and prior.shape == (len(x0),)


def test_bound_is_tight_for_standard_normal_data_with_beta_variance():
    """For x_0 ~ N(0, 1), p(x_{t-1} | x_t) = N(sqrt(alpha_t) x_t, beta_t) is the exact reverse process."""
    schedule, generator = short_schedule(), torch.Generator().manual_seed(3)

    def model(x, t):  # E[eps | x_t] for x_0 ~ N(0, 1)
        return (1 - schedule.alpha_bars[t][:, None]).sqrt() * x

    x0 = torch.full((20_000, 1), 0.8, dtype=torch.float64)
    exact = -normal_log_density(torch.tensor(0.8, dtype=torch.float64), 0.0, 1.0)
    trajectories = negative_elbo_over_trajectories(schedule, model, x0, schedule.betas, generator)
    torch.testing.assert_close(trajectories, exact.expand(len(x0)), rtol=0, atol=1e-10)

    prior, steps = vlb_terms(model, schedule, x0, generator=generator, variance="beta", decoder="gaussian")
    bound = prior + steps.sum(1)
    assert abs(bound.mean() - exact) < 5 * bound.std() / math.sqrt(len(x0))


def test_bound_exceeds_exact_negative_log_likelihood_of_a_linear_model():
    """Jensen: with mu = sqrt(alpha_t) x_t and sigma^2 = beta-tilde, p(x_0) = N(0, v_0) by a variance recursion."""
    schedule, generator = short_schedule(), torch.Generator().manual_seed(4)

    def model(x, t):
        return (1 - schedule.alpha_bars[t][:, None]).sqrt() * x

    sigma2 = reverse_variances(schedule, "posterior")
    v = torch.tensor(1.0, dtype=torch.float64)
    for t in reversed(range(schedule.T)):
        v = schedule.alphas[t] * v + sigma2[t]
    x0 = 0.5 * torch.randn(20_000, 1, generator=generator, dtype=torch.float64)
    exact = -normal_log_density(x0[:, 0], 0.0, v)
    prior, steps = vlb_terms(model, schedule, x0, generator=generator, variance="posterior", decoder="gaussian")
    gap = prior + steps.sum(1) - exact
    assert gap.mean() > 5 * gap.std() / math.sqrt(len(x0))


# The eps-parameterization ----------------------------------------------------------------------------


def test_reverse_mean_is_posterior_mean_of_estimated_x0_and_ho_eq_11():
    schedule, generator = NoiseSchedule.linear(T=100), torch.Generator().manual_seed(5)
    xt = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    eps = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    for t in range(schedule.T):
        a_bar, a_bar_prev = schedule.alpha_bars[t], schedule.alpha_bars_prev[t]
        beta, alpha = schedule.betas[t], schedule.alphas[t]
        x0_hat = (xt - (1 - a_bar).sqrt() * eps) / a_bar.sqrt()
        posterior_mean = (a_bar_prev.sqrt() * beta * x0_hat + alpha.sqrt() * (1 - a_bar_prev) * xt) / (1 - a_bar)
        mean = reverse_mean(schedule, eps, t, xt)
        torch.testing.assert_close(mean, posterior_mean, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mean, ho_mean(schedule, eps, t, xt), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_kl_term_is_weighted_eps_error_plus_constant(variance):
    schedule, generator = NoiseSchedule.linear(T=50), torch.Generator().manual_seed(6)
    model = toy_eps_model(schedule)
    x0 = torch.rand(16, 2, generator=generator, dtype=torch.float64) * 2 - 1
    weights = vlb_weights(schedule, variance)
    for t in (1, 7, 25, 49):
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        xt = schedule.alpha_bars[t].sqrt() * x0 + (1 - schedule.alpha_bars[t]).sqrt() * noise
        sigma2 = schedule.betas[t] if variance == "beta" else schedule.posterior_variances[t]
        ratio = schedule.posterior_variances[t] / sigma2
        constant = 0.5 * x0.shape[1] * (ratio - 1 - torch.log(ratio))
        hand_weight = schedule.betas[t] ** 2 / (2 * sigma2 * schedule.alphas[t] * (1 - schedule.alpha_bars[t]))
        error = (noise - model(xt, torch.full((16,), t))).pow(2).sum(1)
        kl = step_loss(model, schedule, x0, t, noise, variance=variance)
        torch.testing.assert_close(weights[t], hand_weight, rtol=1e-12, atol=0)
        torch.testing.assert_close(kl, constant + hand_weight * error, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance", ["posterior", "beta"])
def test_gaussian_decoder_term_by_hand(variance):
    """L_0 = -log N(x_0; mu_theta(x_1, 1), sigma_1^2), sigma_1^2 = beta-tilde_2 or beta_1 (beta-tilde_1 is 0)."""
    schedule, generator = short_schedule(), torch.Generator().manual_seed(10)
    model = toy_eps_model(schedule)
    x0 = torch.rand(32, 2, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x1 = schedule.alphas[0].sqrt() * x0 + schedule.betas[0].sqrt() * noise
    sigma2 = schedule.posterior_variances[1] if variance == "posterior" else schedule.betas[0]
    mean = ho_mean(schedule, model(x1, torch.zeros(32, dtype=torch.long)), 0, x1)
    by_hand = -normal_log_density(x0, mean, sigma2).sum(1)
    decoder = step_loss(model, schedule, x0, 0, noise, variance=variance, decoder="gaussian")
    torch.testing.assert_close(decoder, by_hand, rtol=1e-10, atol=1e-10)


def test_posterior_variance_weight_is_half_the_snr_ratio_minus_one():
    schedule = NoiseSchedule.cosine(T=200)
    snr = schedule.alpha_bars / (1 - schedule.alpha_bars)
    torch.testing.assert_close(
        vlb_weights(schedule, "posterior")[1:], 0.5 * (snr[:-1] / snr[1:] - 1), rtol=1e-9, atol=0
    )


# The decoder, the prior term and bits per dimension --------------------------------------------------


def bin_edges(level):
    """The bin of an 8-bit level in [-1, 1]: width 2/255, the two end bins open to infinity."""
    lower = -math.inf if level <= -1 + 1e-9 else level - 1 / 255
    upper = math.inf if level >= 1 - 1e-9 else level + 1 / 255
    return lower, upper


def gaussian_mass(mean, std, lower, upper):
    """The integral of the N(mean, std^2) density over [lower, upper] by adaptive quadrature.

    An infinite end is cut 12 standard deviations beyond the mean (the mass left out is below 1e-32).
    """
    lo = lower if math.isfinite(lower) else min(upper, mean) - 12 * std
    hi = upper if math.isfinite(upper) else max(lower, mean) + 12 * std

    def density(x):
        return math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))

    inside = [mean] if lo < mean < hi else None
    return integrate.quad(density, lo, hi, points=inside, epsabs=0, epsrel=1e-11, limit=200)[0]


@pytest.mark.parametrize("mean, std", [(0.0, 0.3), (0.9, 0.01), (-1.4, 0.2), (0.31, 2.0)])
def test_discretized_decoder_sums_to_one_and_matches_integrals(mean, std):
    probabilities = discretized_gaussian_log_likelihood(
        LEVELS, torch.full((256,), mean, dtype=torch.float64), torch.full((256,), std**2, dtype=torch.float64)
    ).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=256e-12)
    for k, level in enumerate(LEVELS.tolist()):
        mass = gaussian_mass(mean, std, *bin_edges(level))
        if mass > 1e-10:
            assert probabilities[k].item() == pytest.approx(mass, rel=1e-7), (k, level)


def test_discretized_decoder_keeps_small_upper_tail_masses_accurate_in_float32():
    mean, std = -0.5, 0.1
    levels = LEVELS[(LEVELS > 0.0) & (LEVELS < 0.1)]  # 5 to 6 standard deviations above the mean
    log_p = discretized_gaussian_log_likelihood(
        levels.float(), torch.full(levels.shape, mean), torch.full(levels.shape, std**2)
    )
    exact = torch.tensor(
        [gaussian_mass(mean, std, *bin_edges(level)) for level in levels.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(log_p.double(), torch.log(exact), rtol=0, atol=1e-3)


def test_prior_loss_is_the_kl_from_q_xT_to_standard_normal():
    schedule, generator = NoiseSchedule.linear(T=100), torch.Generator().manual_seed(8)
    x0 = torch.rand(5, 3, generator=generator, dtype=torch.float64) * 2 - 1
    a_bar = schedule.alpha_bars[-1]
    mean, var = a_bar.sqrt() * x0, 1 - a_bar
    by_hand = 0.5 * (var + mean**2 - 1 - torch.log(var)).sum(1)
    torch.testing.assert_close(prior_loss(schedule, x0), by_hand, rtol=1e-12, atol=1e-15)


def test_bits_per_dim_of_a_uniform_code_over_256_levels_is_8():
    num_dims = 784
    nats = torch.tensor([num_dims * math.log(256)], dtype=torch.float64)
    assert bits_per_dim(nats, num_dims).item() == pytest.approx(8.0, rel=1e-12)
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim(nats, 0)


def test_bound_on_8_bit_data_exceeds_its_entropy():
    """E[-ELBO] >= cross-entropy >= entropy for data on the 256 levels."""
    schedule, generator = NoiseSchedule.linear(T=100, beta_start=1e-3, beta_end=0.2), torch.Generator().manual_seed(9)
    probabilities = discretized_gaussian_log_likelihood(
        LEVELS, torch.zeros(256, dtype=torch.float64), torch.full((256,), 0.3**2, dtype=torch.float64)
    ).exp()
    entropy_bits = -(probabilities * probabilities.log()).sum() / math.log(2)
    x0 = LEVELS[torch.multinomial(probabilities, 8_000, replacement=True, generator=generator)][:, None]

    def model(x, t):  # E[eps | x_t] if x_0 were N(0, 0.3^2)
        a_bar = schedule.alpha_bars[t][:, None]
        return (1 - a_bar).sqrt() * x / (a_bar * 0.09 + 1 - a_bar)

    prior, steps = vlb_terms(model, schedule, x0, generator=generator, variance="beta")
    bits = bits_per_dim(prior + steps.sum(1), 1)
    assert bits.mean() - entropy_bits > -5 * bits.std() / math.sqrt(len(bits))
    assert bits.mean() < 8.0


# Bad input -------------------------------------------------------------------------------------------


def test_unknown_decoder_or_variance_names_raise():
    schedule = short_schedule()
    model = toy_eps_model(schedule)
    x0 = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="'bogus'"):
        vlb_terms(model, schedule, x0, decoder="bogus")
    with pytest.raises(ValueError, match="'laplace'"):
        step_loss(model, schedule, x0, 5, torch.zeros_like(x0), decoder="laplace")
    with pytest.raises(ValueError, match="'learned'"):
        vlb_terms(model, schedule, x0, variance="learned")
    with pytest.raises(ValueError, match="'large'"):
        vlb_weights(schedule, "large")


def test_unknown_decoder(schedule, mentions):
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=mentions("decoder", "'poisson'", "discrete", "gaussian")):
        step_loss(lambda x, t: torch.zeros_like(x), schedule, x, 0, x, decoder="poisson")
