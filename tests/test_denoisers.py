"""The noise-level interface: the conversions between sigma and alpha_bar, a network of integer steps as a denoiser of
the scaled variable, and grids rounded to the levels such a network knows."""

import pytest
import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.denoisers import (
    StepDenoiser,
    alpha_bar_from_sigma,
    model_levels,
    on_levels,
    sigma_from_alpha_bar,
)
from diffusion_lib.parameterization import x0_from_eps

f64 = torch.float64


def test_sigma_and_alpha_bar_are_inverse():
    alpha_bar = torch.tensor([0.9999, 0.5, 1e-4], dtype=f64)
    sigma = sigma_from_alpha_bar(alpha_bar)
    torch.testing.assert_close(sigma, ((1 - alpha_bar) / alpha_bar).sqrt())
    torch.testing.assert_close(alpha_bar_from_sigma(sigma), alpha_bar, rtol=1e-14, atol=0)


def eps_network(x, t):
    """A stand-in network of integer steps whose output depends on both arguments."""
    return torch.sin(x + t[:, None].to(x.dtype) / 7)


def test_a_step_network_denoises_u_as_x0_from_eps_does_at_its_own_levels():
    schedule = NoiseSchedule.linear(40)
    denoiser = StepDenoiser(eps_network, schedule)
    x_t = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=f64)
    for t in (0, 17, 39):
        sigma = sigma_from_alpha_bar(schedule.alpha_bars[t]).item()
        u = x_t / schedule.alpha_bars[t].sqrt()
        t_batch = torch.full((5,), t)
        expected = x0_from_eps(schedule, x_t, t_batch, eps_network(x_t, t_batch))
        assert denoiser.step(sigma) == t
        torch.testing.assert_close(denoiser(u, sigma), expected, rtol=0, atol=1e-12)


def test_a_level_between_two_steps_rounds_to_the_nearer_in_log_sigma():
    schedule = NoiseSchedule.linear(40)
    denoiser = StepDenoiser(eps_network, schedule)
    low, high = (sigma_from_alpha_bar(schedule.alpha_bars[t]).item() for t in (20, 21))
    geometric_middle = (low * high) ** 0.5
    assert denoiser.step(geometric_middle * 0.999) == 20 and denoiser.step(geometric_middle * 1.001) == 21
    assert denoiser.step(1e6) == 39 and denoiser.step(1e-9) == 0


def test_grids_are_rounded_to_the_levels_of_the_model():
    schedule = NoiseSchedule.linear(40)
    denoiser = StepDenoiser(eps_network, schedule)
    levels = model_levels(denoiser, 5)
    steps = schedule.spaced_timesteps(5).flip(0)
    torch.testing.assert_close(levels[:-1], sigma_from_alpha_bar(schedule.alpha_bars[steps]))
    assert levels[-1] == 0 and (levels[:-1] > levels[1:]).all()
    nudged = torch.cat([levels[:-1] * 1.001, levels[-1:]])
    torch.testing.assert_close(on_levels(nudged, denoiser), levels)  # back onto the model's own levels
    assert torch.equal(on_levels(nudged, lambda u, sigma: u), nudged)  # a denoiser of any level keeps the grid
    with pytest.raises(ValueError, match="round to the same level"):
        on_levels(torch.tensor([1.0, 0.9999, 0.0], dtype=f64), denoiser)
