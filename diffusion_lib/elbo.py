"""The reverse model p_theta(x_{t-1} | x_t) and the variational bound on -log p_theta(x_0).

All bound terms are per example, summed over data dimensions, in nats;
:func:`bits_per_dim` converts them.
"""

import math

import torch

from .parameterization import x0_from_eps

DECODERS = ("discrete", "gaussian")
REVERSE_VARIANCES = ("posterior", "beta")


def reverse_variances(schedule, variance):
    """sigma_t^2 for t = 0..T-1: beta-tilde_t ("posterior") or beta_t ("beta"), eq. `reverse-variance`.

    beta-tilde_0 = 0 (the posterior at the last step is a point mass), so for
    the decoder p(x_0 | x_1) the "posterior" table uses beta-tilde_1 at t = 0,
    as Ho et al. do; sampling never adds noise at t = 0 either way.
    """
    if variance == "posterior":
        first = schedule.posterior_variances[1:2] if schedule.T > 1 else schedule.betas[:1]
        return torch.cat([first, schedule.posterior_variances[1:]])
    if variance == "beta":
        return schedule.betas
    raise ValueError(f"unknown variance {variance!r}; allowed: {', '.join(REVERSE_VARIANCES)}")


def reverse_mean(schedule, eps, t, xt, clip_x0=False):
    """mu_theta(x_t, t): the posterior mean with x_0 estimated from eps, eq. `mu-theta`.

    ``clip_x0`` clamps the estimate of x_0 to [-1, 1] first.
    """
    x0 = x0_from_eps(schedule, xt, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    mean, _ = schedule.posterior(x0, xt, t)
    return mean


def gaussian_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, eq. `gaussian-kl`.

    Written with r = var1 / var2 as (r - 1 - log r + (mean1 - mean2)^2 / var2) / 2,
    where r - 1 - log r is evaluated as expm1(log r) - log r so that it keeps
    its precision when var1 is close to var2.
    """
    log_ratio = torch.log(var1) - torch.log(var2)
    return 0.5 * (torch.expm1(log_ratio) - log_ratio + (mean1 - mean2) ** 2 / var2)


def gaussian_log_density(x, mean, var):
    """log N(x; mean, var) elementwise."""
    return -0.5 * (torch.log(2 * math.pi * var) + (x - mean) ** 2 / var)


def discretized_gaussian_log_likelihood(x, mean, var, levels=256):
    """log P(x) for data on `levels` evenly spaced values in [-1, 1], eq. `discrete-decoder`.

    Each value owns the bin of width 2/(levels - 1) around it; the two end
    bins extend to -inf and +inf (Ho et al. 2020, sec. 3.3). The normal CDF is
    taken as erfc(-z / sqrt(2)) / 2, accurate in the lower tail, and a bin
    above the mean is measured in the upper tail, Phi(-lower) - Phi(-upper),
    so that small masses stay accurate even in float32; masses are floored
    at 1e-12.
    """
    half_bin = 1.0 / (levels - 1)
    std = var.sqrt()
    upper = torch.where(x > 1 - half_bin, torch.full_like(x, math.inf), (x + half_bin - mean) / std)
    lower = torch.where(x < -1 + half_bin, torch.full_like(x, -math.inf), (x - half_bin - mean) / std)

    def cdf(z):
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    mass = torch.where(lower > 0, cdf(-lower) - cdf(-upper), cdf(upper) - cdf(lower))
    return torch.log(mass.clamp(min=1e-12))


def _sum_dims(x):
    return x.flatten(1).sum(1)


def prior_loss(schedule, x0):
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example, eq. `elbo-terms`."""
    last = schedule.T - 1
    alpha_bar = schedule.at(schedule.alpha_bars, last, x0)
    return _sum_dims(gaussian_kl(alpha_bar.sqrt() * x0, 1 - alpha_bar, torch.zeros_like(x0), torch.ones_like(x0)))


def step_loss(model, schedule, x0, t, noise, variance="posterior", decoder="discrete"):
    """The bound's term for the reverse step at t, per example, at x_t = q_sample(x0, t, noise), eq. `elbo-terms`.

    For t >= 1: KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)). For t = 0:
    the decoder's negative log-likelihood -log p_theta(x_0 | x_1), either
    discretized for 8-bit data ("discrete") or a Gaussian density ("gaussian").
    ``t`` is an int step index in 0..T-1.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; allowed: {', '.join(DECODERS)}")
    if not isinstance(t, int):
        raise TypeError(f"t must be an int step index for step_loss, got {t!r}")
    xt = schedule.q_sample(x0, t, noise)
    batch_t = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    mean = reverse_mean(schedule, model(xt, batch_t), t, xt)
    sigma2 = schedule.at(reverse_variances(schedule, variance), t, xt).expand_as(xt)
    if t > 0:
        return _sum_dims(gaussian_kl(*schedule.posterior(x0, xt, t), mean, sigma2))
    if decoder == "discrete":
        return -_sum_dims(discretized_gaussian_log_likelihood(x0, mean, sigma2))
    return -_sum_dims(gaussian_log_density(x0, mean, sigma2))


@torch.no_grad()
def vlb_terms(model, schedule, x0, generator=None, variance="posterior", decoder="discrete"):
    """All terms of the bound -log p(x_0) <= L_T + sum_t L_{t-1} + L_0, eq. `elbo-terms`.

    Returns (prior, steps): prior is L_T of shape (B,); steps[:, t] is
    :func:`step_loss` at t, shape (B, T), each at its own draw of x_t. The
    negative ELBO in nats is ``prior + steps.sum(1)``.
    """

    def noise():
        return torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)

    steps = [step_loss(model, schedule, x0, t, noise(), variance, decoder) for t in range(schedule.T)]
    return prior_loss(schedule, x0), torch.stack(steps, dim=1)


def vlb_weights(schedule, variance="posterior"):
    """lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) for t = 0..T-1, eq. `elbo-eps-weight`.

    For t >= 1 the KL term of the bound is lambda_t ||eps - eps_theta||^2 plus
    a constant; at t = 0 the same weight multiplies the noise error in the
    Gaussian decoder's negative log-likelihood.
    """
    sigma2 = reverse_variances(schedule, variance)
    return schedule.betas**2 / (2 * sigma2 * schedule.alphas * (1 - schedule.alpha_bars))


def bits_per_dim(nats, num_dims):
    """Convert a negative log-likelihood in nats per example to bits per dimension, eq. `elbo-bpd`."""
    if num_dims < 1:
        raise ValueError(f"num_dims must be a positive number of data dimensions, got {num_dims!r}")
    return nats / (num_dims * math.log(2))
