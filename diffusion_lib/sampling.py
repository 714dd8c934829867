"""The reverse process: one function per update rule, one loop for all of them.

A step function has the signature ``step(schedule, eps, t, xt, noise, **options)``
and returns x_{t-1}; :func:`sample_loop` runs any of them with any callable
``model(x, t) -> eps``.
"""

from numbers import Integral

import torch

from .elbo import reverse_mean, reverse_variances


def ddpm_step(schedule, eps, t, xt, noise, variance="posterior", clip_x0=False):
    """One ancestral step x_t -> x_{t-1} of DDPM (Ho et al. 2020, Algorithm 2), eq. `ddpm-step`.

    The mean is the posterior mean with x_0 replaced by its estimate from eps
    (eq. `mu-theta`); then sigma_t z is added, except at t = 0, where the
    mean is returned. ``t`` is an int in 0..T-1; ``clip_x0`` clamps the
    estimate of x_0 to [-1, 1] first.
    """
    if not isinstance(t, Integral) or isinstance(t, bool):
        raise TypeError(f"t must be an int step index for ddpm_step, got {t!r}")
    t = int(t)
    sigma2 = reverse_variances(schedule, variance)
    mean = reverse_mean(schedule, eps, t, xt, clip_x0)
    if t == 0:
        return mean
    if noise.shape != xt.shape:
        raise ValueError(f"shape mismatch: xt has shape {tuple(xt.shape)} but noise has {tuple(noise.shape)}")
    return mean + schedule.at(sigma2, t, xt).sqrt() * noise


def sample_loop(model, schedule, x_T, step=ddpm_step, num_steps=None, generator=None, **step_options):
    """Run the reverse process from x_T, yielding (t, x) after the step at each t, down to t = 0.

    After the step at t, x is a sample of x_{t-1} in the book's 0-indexed
    notation; after the last step (t = 0), x is the final sample.
    With ``num_steps`` < T the chain visits only ``schedule.spaced_timesteps(num_steps)``
    and each step uses the respaced schedule (eq. `respacing`); the model is
    always called with the original 0-indexed step t as a LongTensor of shape (B,).
    """
    timesteps = schedule.spaced_timesteps(schedule.T if num_steps is None else num_steps)
    steps_schedule = schedule.respaced(timesteps)
    x = x_T
    for i in reversed(range(len(timesteps))):
        t = int(timesteps[i])
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = step(steps_schedule, eps, i, x, noise, **step_options)
        yield t, x


@torch.no_grad()
def sample(model, schedule, shape, generator=None, num_steps=None, trajectory=False, device=None, **step_options):
    """Draw x_T ~ N(0, I) of the given shape and run :func:`sample_loop` to the end.

    Returns x_0, or with ``trajectory=True`` a tensor (num_steps + 1, *shape)
    holding x_T first and x_0 last.
    """
    x_T = torch.randn(shape, generator=generator, device=device)
    states = [x_T]
    for _, x in sample_loop(model, schedule, x_T, generator=generator, num_steps=num_steps, **step_options):
        if trajectory:
            states.append(x)
    return torch.stack(states) if trajectory else x
