"""The solvers over noise levels against exact solutions on Gaussian data, and DPM-Solver++(2M)'s step by hand.

For data N(0, diag(v)) the denoiser of the scaled variable u = x_0 + sigma eps is
exact, D(u, sigma) = v / (v + sigma^2) u, and so is the flow of eq. `ddim-ode`,
u(sigma) = u(sigma_T) sqrt((v + sigma^2) / (v + sigma_T^2)). Euler's error must
halve, and Heun's fall fourfold, when the steps are halved.
"""

import math

import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.parameterization import x0_from_eps
from diffusion_lib.solvers import dpm_solver_step, euler_step, half_log_snr, heun_step

f64 = torch.float64
VARIANCES = torch.tensor([0.05, 0.3, 1.0, 4.0], dtype=f64)


def gaussian_denoiser(u, sigma):
    return VARIANCES / (VARIANCES + sigma**2) * u


def karras_grid(n, sigma_max=20.0, sigma_min=0.05, rho=7.0):
    """n steps from sigma_max to sigma_min, evenly spaced in sigma^(1/rho) (Karras et al. 2022, eq. 5)."""
    fraction = torch.arange(n + 1, dtype=f64) / n
    return (sigma_max ** (1 / rho) + fraction * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def solve(step, denoiser, u, sigmas):
    for sigma, sigma_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True):
        u = step(denoiser, u, sigma, sigma_next)
    return u


def end_errors(step, sizes):
    u_T = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=f64) * (VARIANCES + 400).sqrt()
    errors = []
    for n in sizes:
        sigmas = karras_grid(n)
        exact = u_T * ((VARIANCES + sigmas[-1] ** 2) / (VARIANCES + sigmas[0] ** 2)).sqrt()
        errors.append((solve(step, gaussian_denoiser, u_T, sigmas) - exact).abs().max().item())
    return errors


def test_euler_converges_at_order_one_and_heun_at_order_two():
    # float64, no randomness in the solve: the measured orders approach 1 and 2 as 1/n (at n = 64 -> 128 they are
    # 0.992 and 2.012); 0.05 leaves room for that remainder
    for step, order in ((euler_step, 1), (heun_step, 2)):
        errors = end_errors(step, [32, 64, 128])
        measured = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:], strict=True)]
        assert abs(measured[-1] - order) < 0.05, (step.__name__, measured)


def test_heun_calls_the_denoiser_twice_per_step_and_once_on_the_way_to_zero():
    levels = []

    def recording(u, sigma):
        levels.append(sigma)
        return gaussian_denoiser(u, sigma)

    sigmas = torch.cat([karras_grid(3), torch.zeros(1, dtype=f64)])
    solve(heun_step, recording, torch.ones(1, 4, dtype=f64), sigmas)
    s = sigmas.tolist()
    assert levels == [s[0], s[1], s[1], s[2], s[2], s[3], s[3]]  # never at sigma = 0
    levels.clear()
    solve(euler_step, recording, torch.ones(1, 4, dtype=f64), sigmas)
    assert levels == s[:-1]


def test_an_euler_step_moves_u_along_the_noise_it_predicts():
    u = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=f64)
    sigma, sigma_next = 2.0, 1.5
    eps = (u - gaussian_denoiser(u, sigma)) / sigma
    torch.testing.assert_close(euler_step(gaussian_denoiser, u, sigma, sigma_next), u - 0.5 * eps, rtol=0, atol=1e-15)
    # to sigma = 0 it returns the denoiser's estimate
    torch.testing.assert_close(euler_step(gaussian_denoiser, u, sigma, 0.0), gaussian_denoiser(u, sigma))


def test_dpm_solver_step_by_hand():
    """One second-order step of eq. dpm-solver-2m written out from the half log-SNR, in float64."""
    schedule = NoiseSchedule.linear(30)
    generator = torch.Generator().manual_seed(2)
    xt, eps, x0_before = (torch.randn(4, 2, generator=generator, dtype=f64) for _ in range(3))
    t = 12
    x0 = x0_from_eps(schedule, xt, t, eps)
    lam = half_log_snr(schedule)
    h, h_before = (lam[t - 1] - lam[t]).item(), (lam[t] - lam[t + 1]).item()
    alpha_prev, sigma_prev = schedule.alpha_bars[t - 1].sqrt(), (1 - schedule.alpha_bars[t - 1]).sqrt()
    sigma = (1 - schedule.alpha_bars[t]).sqrt()
    direction = x0 + (x0 - x0_before) * h / (2 * h_before)
    expected = sigma_prev / sigma * xt - alpha_prev * math.expm1(-h) * direction
    torch.testing.assert_close(dpm_solver_step(schedule, x0, t, xt, x0_before), expected, rtol=0, atol=1e-13)
