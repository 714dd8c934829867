"""Noise schedules and the closed forms of the forward process.

A :class:`NoiseSchedule` holds the variances beta_t of the forward kernel
q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) and everything that
follows from them in closed form. Index t runs over 0..T-1 (the paper's step
t + 1), as in diffusers; all tables are float64.
"""

import math
from numbers import Integral

import torch


def _as_index(t, T, batch_size, device=None):
    """Check t (an integer or an integer tensor of shape (B,)) and return a LongTensor of shape (B,).

    The range check reads t's values, so it runs for CPU tensors only: on an
    accelerator it would stall the device, and indexing out of range fails
    there anyway.
    """
    if isinstance(t, Integral) and not isinstance(t, bool):
        if not 0 <= t < T:
            raise ValueError(f"t out of range: got {t}, allowed 0..{T - 1} for a schedule with T={T}")
        return torch.full((batch_size,), int(t), dtype=torch.long, device=device)
    if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be an int or an integer tensor of shape (B,), got {t!r}")
    if t.dim() == 0:
        t = t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape ({batch_size},) to match the batch, got {tuple(t.shape)}")
    if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= T):
        bad = t[(t < 0) | (t >= T)][0].item()
        raise ValueError(f"t out of range: got {bad}, allowed 0..{T - 1} for a schedule with T={T}")
    return t.long()


class NoiseSchedule:
    """The forward process defined by betas of shape (T,), each in (0, 1)."""

    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 1:
            raise ValueError(f"betas must be a 1-D sequence with T >= 1 entries, got shape {tuple(betas.shape)}")
        if not ((betas > 0) & (betas < 1)).all():
            bad = betas[~((betas > 0) & (betas < 1))][0].item()
            raise ValueError(f"every beta must lie in (0, 1), got {bad}")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([torch.ones_like(self.alpha_bars[:1]), self.alpha_bars[:-1]])
        self.posterior_variances = betas * (1.0 - self.alpha_bars_prev) / (1.0 - self.alpha_bars)

    @property
    def T(self):
        return len(self.betas)

    def to(self, device):
        """The same schedule with its tables on ``device`` (so that lookups there need no copies)."""
        return NoiseSchedule(self.betas.to(device))

    def __repr__(self):
        return f"NoiseSchedule(T={self.T}, beta_0={self.betas[0]:.3g}, beta_T-1={self.betas[-1]:.3g})"

    # Constructors ------------------------------------------------------------

    @classmethod
    def linear(cls, T=1000, beta_start=1e-4, beta_end=0.02):
        """Betas evenly spaced from beta_start to beta_end (Ho et al. 2020), eq. `linear-schedule`."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T=1000, s=0.008, max_beta=0.999):
        """alpha_bar(t) = f(t)/f(0) with f(u) = cos^2(((u/T + s)/(1 + s)) pi/2), eq. `cosine-schedule`.

        From Nichol and Dhariwal (2021). Index t gets beta_t = 1 - f(t + 1)/f(t), clipped at max_beta (which
        only the last steps reach, where f falls to 0).
        """
        _check_T(T)

        def f(u):
            return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - f(t + 1) / f(t), max_beta) for t in range(T)]
        return cls(betas)

    @classmethod
    def from_alpha_bars(cls, alpha_bars):
        """The schedule whose cumulative products are alpha_bars: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}."""
        alpha_bars = torch.as_tensor(alpha_bars, dtype=torch.float64)
        if alpha_bars.dim() != 1 or len(alpha_bars) < 1:
            raise ValueError(f"alpha_bars must be 1-D with T >= 1 entries, got shape {tuple(alpha_bars.shape)}")
        previous = torch.cat([torch.ones_like(alpha_bars[:1]), alpha_bars[:-1]])
        bad = ~((alpha_bars > 0) & (alpha_bars < previous))
        if bad.any():
            t = int(bad.nonzero()[0])
            raise ValueError(
                "alpha_bars must decrease strictly from below 1 to above 0, "
                f"got alpha_bars[{t}] = {alpha_bars[t].item()} after {previous[t].item()}"
            )
        return cls(1.0 - alpha_bars / previous)

    @classmethod
    def from_log_snr(cls, log_snr):
        """The schedule with log SNR(t) = log(alpha_bar_t / (1 - alpha_bar_t)) given, eq. `snr`:
        alpha_bar_t = sigmoid(log SNR(t)). log_snr must decrease strictly."""
        return cls.from_alpha_bars(torch.sigmoid(torch.as_tensor(log_snr, dtype=torch.float64)))

    @classmethod
    def named(cls, name, T=1000, **kwargs):
        """`NoiseSchedule.named("linear" | "cosine", T)`."""
        constructors = {"linear": cls.linear, "cosine": cls.cosine}
        if name not in constructors:
            raise ValueError(f"unknown schedule {name!r}; allowed: {', '.join(constructors)}")
        return constructors[name](T, **kwargs)

    def respaced(self, timesteps):
        """The schedule restricted to a subsequence of steps (Nichol and Dhariwal 2021, sec. 4).

        Keeps alpha_bar at the given increasing indices, so that x_t has the same
        marginal q(x_t | x_0) as before, eq. `respacing`.
        """
        timesteps = torch.as_tensor(timesteps, dtype=torch.long)
        if timesteps.dim() != 1 or len(timesteps) < 1 or not (timesteps[1:] > timesteps[:-1]).all():
            raise ValueError(f"timesteps must be a non-empty increasing 1-D sequence, got {timesteps.tolist()}")
        if timesteps[0] < 0 or timesteps[-1] >= self.T:
            raise ValueError(
                f"timesteps must lie in 0..{self.T - 1} for a schedule with T={self.T}, got {timesteps.tolist()}"
            )
        return NoiseSchedule.from_alpha_bars(self.alpha_bars[timesteps])

    def spaced_timesteps(self, num_steps):
        """num_steps increasing indices evenly spread from 0 to T-1 (just T-1 when num_steps = 1)."""
        if not isinstance(num_steps, int) or not 1 <= num_steps <= self.T:
            raise ValueError(f"num_steps must be an integer between 1 and T={self.T}, got {num_steps!r}")
        if num_steps == 1:
            return torch.tensor([self.T - 1])
        return torch.linspace(0, self.T - 1, num_steps, dtype=torch.float64).round().long()

    # Lookups -----------------------------------------------------------------

    def at(self, values, t, x):
        """values[t] as a tensor shaped to broadcast against x (B, ...), in x's dtype and device."""
        t = _as_index(t, self.T, x.shape[0], x.device).to(x.device)
        return values.to(x.device)[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    @property
    def snr(self):
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) for t = 0..T-1, eq. `snr`."""
        return self.alpha_bars / (1.0 - self.alpha_bars)

    # The forward process -----------------------------------------------------

    def q_sample(self, x0, t, noise):
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, eq. `q-marginal`."""
        check_same_shape(x0=x0, noise=noise)
        alpha_bar = self.at(self.alpha_bars, t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_step(self, x_prev, t, noise):
        """One forward step x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, eq. `forward-kernel`."""
        check_same_shape(x_prev=x_prev, noise=noise)
        beta = self.at(self.betas, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def posterior(self, x0, xt, t):
        """Mean and variance of q(x_{t-1} | x_t, x_0), eqs. `posterior-mean` and `posterior-variance`.

        At t = 0 the posterior is a point mass at x_0: variance 0, mean x_0.
        """
        check_same_shape(x0=x0, xt=xt)
        beta, alpha = self.at(self.betas, t, xt), self.at(self.alphas, t, xt)
        alpha_bar, alpha_bar_prev = self.at(self.alpha_bars, t, xt), self.at(self.alpha_bars_prev, t, xt)
        mean = (alpha_bar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - alpha_bar_prev) * xt) / (1 - alpha_bar)
        return mean, self.at(self.posterior_variances, t, xt).expand_as(xt)


def _check_T(T):
    if not isinstance(T, Integral) or isinstance(T, bool) or T < 1:
        raise ValueError(f"T must be a positive integer number of steps, got {T!r}")


def check_same_shape(**tensors):
    """Raise a ValueError naming the first pair of the given tensors whose shapes differ."""
    (name_a, a), *rest = tensors.items()
    for name_b, b in rest:
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")
