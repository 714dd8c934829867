"""The reverse process: one function per update rule, one registry of samplers, one loop for all of them.

An update rule of the discrete chain steps x_t -> x_{t-1} on a grid of steps (a
schedule, respaced when the chain is shortened); a solver steps the scaled
variable u = x / sqrt(alpha_bar) from one noise level to the next
(:mod:`diffusion_lib.denoisers`). :data:`SAMPLERS` lists both kinds with the
options each declares. :func:`sample_loop` runs any of them with any callable
``model(x, t) -> eps``, where t is a LongTensor of the original 0-indexed steps;
:func:`sample` draws x_T and returns x_0.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from tqdm import tqdm

from .denoisers import StepDenoiser, model_levels
from .elbo import reverse_mean, reverse_variances
from .parameterization import eps_from_x0, x0_from_eps
from .solvers import dpm_solver, euler_step, heun_step


def _check_step_index(t, name):
    if not isinstance(t, Integral) or isinstance(t, bool):
        raise TypeError(f"t must be an int step index for {name}, got {t!r}")
    return int(t)


def _check_noise(xt, noise):
    if noise.shape != xt.shape:
        raise ValueError(f"shape mismatch: xt has shape {tuple(xt.shape)} but noise has {tuple(noise.shape)}")


def ddpm_step(schedule, eps, t, xt, noise, variance="posterior", clip_x0=False):
    """One ancestral step x_t -> x_{t-1} of DDPM (Ho et al. 2020, Algorithm 2), eq. `ddpm-step`.

    The mean is the posterior mean with x_0 replaced by its estimate from eps
    (eq. `mu-theta`); then sigma_t z is added, except at t = 0, where the
    mean is returned. ``t`` is an int in 0..T-1; ``clip_x0`` clamps the
    estimate of x_0 to [-1, 1] first.
    """
    t = _check_step_index(t, "ddpm_step")
    sigma2 = reverse_variances(schedule, variance)
    mean = reverse_mean(schedule, eps, t, xt, clip_x0)
    if t == 0:
        return mean
    _check_noise(xt, noise)
    return mean + schedule.at(sigma2, t, xt).sqrt() * noise


def ddim_sigma(schedule, t, eta):
    """sigma_t(eta) = eta sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_{t-1}),
    eq. `ddim-sigma`: 0 for DDIM, the posterior standard deviation for eta = 1 (DDPM)."""
    alpha_bar, alpha_bar_prev = schedule.alpha_bars[t], schedule.alpha_bars_prev[t]
    return eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev))


def ddim_step(schedule, eps, t, xt, noise, eta=0.0, clip_x0=False):
    """One step x_t -> x_{t-1} of the eta family of Song et al. (2021), eq. `ddim-step`.

    x_{t-1} = sqrt(alpha_bar_{t-1}) x0 + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps + sigma_t z, with x0
    estimated from eps and sigma_t = :func:`ddim_sigma`. eta = 0 is deterministic (DDIM); eta = 1 is the
    DDPM step with the posterior variance. At t = 0 the previous alpha_bar is 1, so the step returns x0.
    ``clip_x0`` clamps the estimate of x_0 to [-1, 1] and then recomputes eps from it, so that the pair
    stays consistent with x_t.
    """
    t = _check_step_index(t, "ddim_step")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
    x0 = x0_from_eps(schedule, xt, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(schedule, xt, t, x0)
    alpha_bar_prev = schedule.at(schedule.alpha_bars_prev, t, xt)
    sigma = ddim_sigma(schedule, t, eta)
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    if sigma == 0:
        return x_prev
    _check_noise(xt, noise)
    return x_prev + sigma * noise


def _with_noise(step, schedule, **options):
    """A loop step that draws its noise z ~ N(0, I) from the generator and applies an update rule."""

    def loop_step(eps, t, xt, generator):
        noise = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device=xt.device)
        return step(schedule, eps, t, xt, noise, **options)

    return loop_step


@dataclass(frozen=True)
class Option:
    """An option a sampler declares: its name, type and default, and the values it allows (a closed interval of
    numbers, or a set of choices)."""

    name: str
    kind: type
    default: object
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    help: str = ""

    def allowed(self):
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.kind is bool:
            return "True or False"
        return f"a number in [{self.low}, {self.high}]"

    def check(self, sampler, value):
        """The value if this option allows it; else a ValueError naming the sampler, the option and what is allowed."""
        if self.kind is bool:
            fits = isinstance(value, bool)
        elif self.kind is float:
            fits = isinstance(value, Real) and not isinstance(value, bool) and self.low <= value <= self.high
        else:
            fits = value in self.choices
        if not fits:
            raise ValueError(
                f"sampler {sampler!r}: option {self.name}={value!r} is not allowed; allowed: {self.allowed()}"
            )
        return value


CLIP_X0 = Option("clip_x0", bool, False, help="clamp each step's estimate of x_0 to [-1, 1]")


@dataclass(frozen=True)
class Sampler:
    """A row of the registry: a sampler's name, what it is, the options it declares, its network calls per step,
    and how it runs: as a step of the discrete chain (``chain(schedule, **options)`` returns the loop's step) or as a
    step over noise levels (``solver(denoiser, u, sigma, sigma_next)``)."""

    name: str
    help: str
    options: tuple = ()
    calls_per_step: int = 1
    chain: Callable | None = None
    solver: Callable | None = None

    def checked(self, options):
        """The options with every declared default filled in; an option it does not declare, or a value out of
        range, is a ValueError naming it."""
        declared = {option.name: option for option in self.options}
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise ValueError(f"sampler {self.name!r} takes no option {unknown[0]!r}; "
                             f"its options: {', '.join(declared) or 'none'}")  # fmt: skip
        return {name: option.check(self.name, options.get(name, option.default)) for name, option in declared.items()}


SAMPLERS = {
    row.name: row
    for row in (
        Sampler(
            "ddpm",
            "ancestral DDPM (chapter 3)",
            (Option("variance", str, "posterior", choices=("posterior", "beta"), help="the reverse variance"), CLIP_X0),
            chain=lambda schedule, **options: _with_noise(ddpm_step, schedule, **options),
        ),
        Sampler(
            "ddim",
            "the eta family of DDIM (chapter 8; eta 0 is deterministic)",
            (Option("eta", float, 0.0, low=0.0, high=1.0, help="0 for DDIM, 1 for DDPM's posterior noise"), CLIP_X0),
            chain=lambda schedule, **options: _with_noise(ddim_step, schedule, **options),
        ),
        Sampler("dpm-solver++", "DPM-Solver++(2M) (chapter 8)", chain=dpm_solver),
        Sampler("euler", "Euler's method over noise levels (DDIM with eta 0)", solver=euler_step),
        Sampler(
            "heun", "Heun's method over noise levels (two network calls a step)", calls_per_step=2, solver=heun_step
        ),
    )
}


def sampler_row(sampler):
    """The registry's row of a sampler; a ValueError naming the allowed samplers for an unknown one."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def sample_loop(model, schedule, x_T, sampler="ddpm", num_steps=None, generator=None, progress=False, **options):
    """Run the reverse process from x_T, yielding (t, x) after the step at each t, down to t = 0.

    After the step at t, x is a sample of x_{t-1} in the book's 0-indexed
    notation; after the last step (t = 0), x is the final sample. ``sampler``
    names a row of :data:`SAMPLERS`, and ``options`` are those it declares
    (``variance`` and ``clip_x0`` for DDPM, ``eta`` and ``clip_x0`` for DDIM).
    With ``num_steps`` < T the chain visits only ``schedule.spaced_timesteps(num_steps)``
    and each step uses the respaced schedule (eq. `respacing`); the samplers
    over noise levels visit the levels of the same steps. The model is always
    called with an original 0-indexed step t as a LongTensor of shape (B,).
    """
    row = sampler_row(sampler)
    options = row.checked(options)
    steps = schedule.T if num_steps is None else num_steps
    if row.solver is not None:
        denoiser = StepDenoiser(model, schedule)
        return _level_steps(denoiser, model_levels(denoiser, steps), row.solver, x_T, progress, sampler)
    timesteps = schedule.spaced_timesteps(steps)
    step = row.chain(schedule.respaced(timesteps), **options)
    return _reverse_steps(model, timesteps, step, x_T, generator, progress, sampler)


def _reverse_steps(model, timesteps, step, x, generator, progress, name):
    """The loop of :func:`sample_loop`: one model call and one update per step, from the last timestep down."""
    shown = {} if progress else {"disable": True}  # when shown, TQDM_DISABLE=1 may still hide it
    for i in tqdm(reversed(range(len(timesteps))), total=len(timesteps), desc=name, **shown):
        t = int(timesteps[i])
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        x = step(eps, i, x, generator)
        yield t, x


def _level_steps(denoiser, sigmas, solver, x, progress, name):
    """The loop over noise levels: x_T taken to u = x sqrt(1 + sigma^2) at the first level, one solver step from each
    level to the next, each new state yielded back as x = u / sqrt(1 + sigma^2) with the step t of the level left."""
    shown = {} if progress else {"disable": True}
    u = x * math.sqrt(1 + sigmas[0].item() ** 2)
    for i in tqdm(range(len(sigmas) - 1), desc=name, **shown):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        u = solver(denoiser, u, sigma, sigma_next)
        yield denoiser.step(sigma), u / math.sqrt(1 + sigma_next**2)


@torch.no_grad()
def sample(
    model, schedule, shape, *, sampler="ddpm", num_steps=None, generator=None, x_T=None, eta=0.0,
    trajectory=False, device=None, progress=False, **options,
):  # fmt: skip
    """Draw x_T ~ N(0, I) of the given shape (or take the given x_T) and run :func:`sample_loop` to the end.

    ``sampler`` names a row of :data:`SAMPLERS`: "ddpm" (ancestral, eq.
    `ddpm-step`), "ddim" (eq. `ddim-step`, eta 0 unless given), "dpm-solver++"
    (DPM-Solver++(2M), eq. `dpm-solver-2m`), "euler" or "heun" (over noise
    levels, eq. `heun-step`); ``eta`` and ``options`` must be options it
    declares. Returns x_0, or with ``trajectory=True`` a tensor
    (num_steps + 1, *shape) holding x_T first and x_0 last. The result is not
    clamped: x_0 estimates may leave [-1, 1] slightly (``clip_x0=True`` keeps
    each step's estimate of x_0 inside it); clamp before showing or storing
    images. ``progress`` shows a progress bar (which TQDM_DISABLE=1 hides).
    """
    row = sampler_row(sampler)
    if eta != 0 or any(option.name == "eta" for option in row.options):
        options["eta"] = eta
    row.checked(options)  # before anything is drawn
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, device=device)
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}")
    states = [x_T]
    loop = sample_loop(model, schedule, x_T, sampler, num_steps, generator, progress, **options)
    for _, x in loop:
        if trajectory:
            states.append(x)
    return torch.stack(states) if trajectory else x


@torch.no_grad()
def ddim_invert(model, schedule, x0, num_steps=None):
    """Run deterministic DDIM backwards, from data x_0 to noise x_T, eq. `ddim-inversion`.

    Each step t_{i-1} -> t_i evaluates the model at the point it has, x_{t_{i-1}},
    and the new step t_i: eps = model(x_{t_{i-1}}, t_i), then
    x_{t_i} = sqrt(alpha_bar_{t_i}) x0_hat + sqrt(1 - alpha_bar_{t_i}) eps with
    x0_hat = (x_{t_{i-1}} - sqrt(1 - alpha_bar_{t_{i-1}}) eps) / sqrt(alpha_bar_{t_{i-1}})
    (alpha_bar = 1 before the first step). Sampling from the result with
    ``sampler="ddim"`` and the same ``num_steps`` returns close to x0.
    """
    timesteps = schedule.spaced_timesteps(schedule.T if num_steps is None else num_steps)
    steps_schedule = schedule.respaced(timesteps)
    x = x0
    for i, t in enumerate(timesteps.tolist()):
        eps = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
        alpha_bar_from = steps_schedule.at(steps_schedule.alpha_bars_prev, i, x)
        alpha_bar_to = steps_schedule.at(steps_schedule.alpha_bars, i, x)
        x0_estimate = (x - (1 - alpha_bar_from).sqrt() * eps) / alpha_bar_from.sqrt()
        x = alpha_bar_to.sqrt() * x0_estimate + (1 - alpha_bar_to).sqrt() * eps
    return x


def slerp(z0, z1, alpha):
    """Spherical interpolation between two noises, eq. `slerp`: sin((1 - a) theta) / sin(theta) z0 + sin(a theta) /
    sin(theta) z1, theta the angle between them. Unlike the straight line, it keeps the norm that N(0, I)
    noise has in high dimension. Endpoints that point the same way (theta = 0) give the limit of the formula, the
    straight line; opposite endpoints (theta = pi) have no unique great circle and are an error. Both are decided
    on the cosine, within 1000 rounding units of the noises' dtype (float32: 1.2e-4, an angle of 0.9 degrees): for
    image-sized float32 noises, rounding alone moves the cosine of z with itself (or with -z) by up to 6 units,
    an angle of 1e-3 from 0 (or pi) whose sine the formula would divide by."""
    cosine = (z0 * z1).sum() / (z0.norm() * z1.norm())
    tolerance = 1000 * torch.finfo(cosine.dtype).eps
    if cosine > 1 - tolerance:
        return (1 - alpha) * z0 + alpha * z1
    if cosine < -1 + tolerance:
        raise ValueError("slerp: the noises point in opposite directions; the great circle between them is not unique")
    theta = torch.arccos(cosine)
    return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)


def langevin(score, x, step_size, num_steps, generator=None):
    """Unadjusted Langevin dynamics, eq. `langevin`: num_steps of x <- x + (delta / 2) score(x) + sqrt(delta) z.

    For a small step size delta and many steps, x is distributed nearly as the
    density p whose score grad log p is ``score``, from any start.
    """
    for _ in range(num_steps):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + step_size / 2 * score(x) + math.sqrt(step_size) * noise
    return x
