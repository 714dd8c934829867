"""The noise-level interface: every model seen as a denoiser of the scaled variable, and the adapters that make one.

Divide a noisy point by sqrt(alpha_bar): u = x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, with the noise level
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (eq. `ddim-ode`). In u a noisy point is the data plus Gaussian
noise of standard deviation sigma, whatever the schedule, so one interface serves every model: a denoiser D(u, sigma)
estimates x_0, and its noise form is eps(u, sigma) = (u - D(u, sigma)) / sigma. The solvers that work on a grid of
noise levels (:mod:`diffusion_lib.solvers`) call nothing else.

A denoiser is any callable ``denoiser(u, sigma)``, sigma a Python float. One that can be evaluated only at some levels
says so in ``denoiser.levels`` (a decreasing tensor); a grid meant for it is rounded to those levels first
(:func:`on_levels`), so that the solver uses each level exactly as the model knows it.
"""

import torch


def sigma_from_alpha_bar(alpha_bar):
    """sigma = sqrt((1 - alpha_bar) / alpha_bar), the noise level of the scaled variable u = x / sqrt(alpha_bar)."""
    return ((1 - alpha_bar) / alpha_bar).sqrt()


def alpha_bar_from_sigma(sigma):
    """alpha_bar = 1 / (1 + sigma^2), the inverse of :func:`sigma_from_alpha_bar`."""
    return 1 / (1 + sigma**2)


class StepDenoiser:
    """A network of integer steps, model(x_t, t) -> eps with t in 0..T-1 of ``schedule``, as a denoiser of u.

    It is evaluated only at its own levels sigma_t (``levels``, in the order of the steps, so decreasing when read
    from t = T-1 down): asked for another level it uses the nearest of its own in log sigma, as k-diffusion's
    wrappers of discrete models do. Extra arguments (a class label) pass through to the network.
    """

    def __init__(self, model, schedule):
        self.model, self.schedule = model, schedule
        self.levels = sigma_from_alpha_bar(schedule.alpha_bars).flip(0)  # decreasing: step T-1 first

    def step(self, sigma):
        """The step t whose level is nearest to sigma in log sigma."""
        nearest = (self.levels.log() - torch.log(torch.as_tensor(sigma, dtype=self.levels.dtype))).abs().argmin()
        return self.schedule.T - 1 - int(nearest)

    def eps(self, u, sigma, *rest):
        t = self.step(sigma)
        x_t = u * self.schedule.alpha_bars[t].sqrt().to(u.dtype)
        return self.model(x_t, torch.full((u.shape[0],), t, dtype=torch.long, device=u.device), *rest).to(u.dtype)

    def __call__(self, u, sigma, *rest):
        level = self.levels[self.schedule.T - 1 - self.step(sigma)].item()
        return u - level * self.eps(u, sigma, *rest)


def on_levels(sigmas, denoiser):
    """The grid sigmas with each positive level replaced by the nearest level the denoiser knows (in log sigma), or
    unchanged for a denoiser of any level; a final 0 stays 0. Raises a ValueError if rounding merges two levels."""
    levels = getattr(denoiser, "levels", None)
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if levels is None:
        return sigmas
    known = levels.to(torch.float64)
    positive = sigmas > 0
    nearest = (known.log()[None, :] - sigmas[positive].log()[:, None]).abs().argmin(dim=1)
    rounded = sigmas.clone()
    rounded[positive] = known[nearest]
    if (rounded[:-1] <= rounded[1:]).any():
        raise ValueError("the grid has two levels that round to the same level of the model; use fewer steps")
    return rounded


def model_levels(denoiser, num_steps):
    """A grid of num_steps levels of a step denoiser: the levels of schedule.spaced_timesteps(num_steps), decreasing,
    then 0 (the grid of DDIM's respaced chain, chapter 8)."""
    steps = denoiser.schedule.spaced_timesteps(num_steps).flip(0)
    sigmas = sigma_from_alpha_bar(denoiser.schedule.alpha_bars[steps].to(torch.float64))
    return torch.cat([sigmas, sigmas.new_zeros(1)])
