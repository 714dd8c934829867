"""Solvers of the probability-flow ODE over a grid of noise levels: DPM-Solver++(2M) (Lu et al. 2022), and the
Euler and Heun steps on the scaled variable u = x / sqrt(alpha_bar) (Karras et al. 2022).

Written in the half log signal-to-noise ratio lambda = log(alpha / sigma),
with alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t), the
ODE's solution is an exponential integrator: the linear part is exact and
only the data prediction x_0(x_lambda) is approximated, by a constant (first
order, which is DDIM) or by a line through the last two predictions (second
order, multistep). The grid is a (respaced) schedule; index t steps to
t - 1, and at t = 0 the step lands on alpha_bar = 1, the data.

Euler and Heun work on a decreasing grid of noise levels sigma and call a
denoiser D(u, sigma) (:mod:`diffusion_lib.denoisers`), whose noise form
eps = (u - D) / sigma is the slope du / dsigma of eq. `ddim-ode`.
"""

import math

import torch

from .parameterization import x0_from_eps


def half_log_snr(schedule):
    """lambda_t = log(alpha_t / sigma_t) = log(alpha_bar_t / (1 - alpha_bar_t)) / 2 for t = 0..T-1."""
    return 0.5 * (schedule.alpha_bars.log() - torch.log1p(-schedule.alpha_bars))


def dpm_solver_step(schedule, x0, t, xt, x0_before=None):
    """One step x_t -> x_{t-1} of DPM-Solver++(2M) given the data prediction x0 at x_t, eq. `dpm-solver-2m`.

    x_{t-1} = (sigma_{t-1} / sigma_t) x_t - alpha_{t-1} (e^{-h} - 1) D, h = lambda_{t-1} - lambda_t, with
    D = x0 (first order) when x0_before, the prediction of the previous step (at t + 1), is None, else
    D = x0 + (x0 - x0_before) / (2 r), r = h_before / h. At t = 0 the step reaches alpha_bar = 1, where
    h is infinite and the update is x0 itself (first order at the last step).
    """
    if t == 0:
        return x0
    lam = half_log_snr(schedule)
    alpha_bar_prev = schedule.at(schedule.alpha_bars_prev, t, xt)
    sigma_ratio = ((1 - alpha_bar_prev) / (1 - schedule.at(schedule.alpha_bars, t, xt))).sqrt()
    h = (lam[t - 1] - lam[t]).item()
    direction = x0
    if x0_before is not None:
        r = (lam[t] - lam[t + 1]).item() / h
        direction = x0 + (x0 - x0_before) / (2 * r)
    return sigma_ratio * xt - alpha_bar_prev.sqrt() * math.expm1(-h) * direction


def dpm_solver(schedule):
    """The step of DPM-Solver++(2M) over a grid, for :func:`~diffusion_lib.sampling.sample_loop`: it keeps the
    previous data prediction between calls and draws no noise."""
    x0_before = None

    def step(eps, t, xt, generator):
        nonlocal x0_before
        x0 = x0_from_eps(schedule, xt, t, eps)
        x_prev = dpm_solver_step(schedule, x0, t, xt, x0_before)
        x0_before = x0
        return x_prev

    return step


def euler_step(denoiser, u, sigma, sigma_next, *rest):
    """u + (sigma_next - sigma) eps(u, sigma), eps(u, sigma) = (u - D(u, sigma)) / sigma: Euler's method on the
    probability-flow ODE du / dsigma = eps (eq. `ddim-ode`), which is DDIM with eta 0 on the same levels."""
    slope = (u - denoiser(u, sigma, *rest)) / sigma
    return u + (sigma_next - sigma) * slope


def heun_step(denoiser, u, sigma, sigma_next, *rest):
    """Heun's method on eq. `ddim-ode` (Karras et al. 2022, Algorithm 1), eq. `heun-step`: an Euler step to
    sigma_next, then the mean of the slopes at both ends; the step to sigma_next = 0 stays an Euler step (the
    slope at sigma = 0 is undefined). Two denoiser calls per step, one at the last."""
    slope = (u - denoiser(u, sigma, *rest)) / sigma
    euler = u + (sigma_next - sigma) * slope
    if sigma_next == 0:
        return euler
    slope_next = (euler - denoiser(euler, sigma_next, *rest)) / sigma_next
    return u + (sigma_next - sigma) * (slope + slope_next) / 2
