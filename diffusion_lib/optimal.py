"""Exact denoisers: the minimisers of the denoising loss for data whose distribution is known.

For any data distribution the best prediction of the noise is
eps*(x_t, t) = (x_t - sqrt(alpha_bar_t) E[x_0 | x_t]) / sqrt(1 - alpha_bar_t)
(eq. `optimal-eps`), so each class here computes the posterior mean
E[x_0 | x_t] in closed form and is a callable (x_t, t) -> eps*, which every
sampler runs like a trained network. Computations follow the dtype of x_t.
"""

import torch

from .parameterization import eps_from_x0


class GaussianDenoiser:
    """Data N(mu, Sigma): E[x_0 | x_t] = mu + s Sigma (s^2 Sigma + (1 - alpha_bar) I)^(-1) (x_t - s mu), eq.
    `gaussian-denoiser`, with s = sqrt(alpha_bar_t); computed in the eigenbasis of Sigma."""

    def __init__(self, mean, covariance, schedule):
        self.mean, self.schedule = mean, schedule
        self.variances, self.basis = torch.linalg.eigh(covariance)

    def x0(self, xt, t):
        """E[x_0 | x_t] for x_t of shape (B, d)."""
        alpha_bar = self.schedule.at(self.schedule.alpha_bars, t, xt)
        s, variances = alpha_bar.sqrt(), self.variances.to(xt.dtype)
        mean, basis = self.mean.to(xt.dtype), self.basis.to(xt.dtype)
        gain = s * variances / (s**2 * variances + 1 - alpha_bar)  # (B, d): one factor per eigendirection
        return mean + ((xt - s * mean) @ basis * gain) @ basis.T

    def __call__(self, xt, t):
        return eps_from_x0(self.schedule, xt, t, self.x0(xt, t))


class MixtureDenoiser:
    """Data from a mixture of N(mu_k, std^2 I) with weights w_k, eq. `mixture-denoiser`:

    E[x_0 | x_t] = m + s std^2 / v (x_t - s m), with m = sum_k r_k(x_t) mu_k, v = s^2 std^2 + 1 - alpha_bar_t,
    and responsibilities r_k proportional to w_k exp(-|x_t - s mu_k|^2 / (2 v)). With std = 0 and equal
    weights it is the optimal denoiser of the finite set {mu_k} (see :class:`EmpiricalDenoiser`). The sum
    over components runs in chunks with a running maximum (a streaming softmax), so that tens of thousands
    of components fit in memory.
    """

    def __init__(self, means, schedule, std=0.0, weights=None, chunk_size=4096):
        self.shape, self.schedule, self.std, self.chunk_size = tuple(means.shape[1:]), schedule, std, chunk_size
        means = means.flatten(1)
        weights = torch.ones(len(means), dtype=means.dtype) if weights is None else torch.as_tensor(weights)
        log_weights = (weights / weights.sum()).log().to(means.dtype)
        # columns [mu_k, |mu_k|^2, log w_k]: against rows [s x / v, -s^2 / 2v, 1] their products are the logits
        self.table = torch.cat([means, means.pow(2).sum(1, keepdim=True), log_weights[:, None]], dim=1)
        self.means = self.table[:, :-2]

    def _levels(self, xt, t):
        if tuple(xt.shape[1:]) != self.shape:
            raise ValueError(
                f"x_t has shape {tuple(xt.shape)} but the data have shape (N, {', '.join(map(str, self.shape))})"
            )
        alpha_bar = self.schedule.at(self.schedule.alpha_bars, t, xt.flatten(1))
        return alpha_bar.sqrt(), alpha_bar * self.std**2 + 1 - alpha_bar

    def _logits(self, x, s, v, chunk):
        """log r_k up to a constant per row: log w_k + (s x . mu_k - s^2 |mu_k|^2 / 2) / v (|x|^2 cancels), as one
        matrix product."""
        rows = torch.cat([s / v * x, -(s**2) / (2 * v), torch.ones_like(v)], dim=1)
        return rows @ self.table[chunk].to(x.dtype).T

    def log_posterior(self, xt, t):
        """log r_k(x_t) up to a constant per row, shape (B, K)."""
        x = xt.flatten(1)
        s, v = self._levels(xt, t)
        return torch.cat([self._logits(x, s, v, chunk) for chunk in self._chunks()], dim=1)

    def posterior(self, xt, t):
        """The responsibilities r_k(x_t), shape (B, K): the posterior probability of each component."""
        return self.log_posterior(xt, t).softmax(dim=1)

    def _chunks(self):
        return [slice(start, start + self.chunk_size) for start in range(0, len(self.means), self.chunk_size)]

    def x0(self, xt, t):
        """E[x_0 | x_t], shaped like x_t."""
        x = xt.flatten(1)
        s, v = self._levels(xt, t)
        running_max = torch.full((len(x), 1), -torch.inf, dtype=x.dtype, device=x.device)
        total, weighted = torch.zeros_like(running_max), torch.zeros_like(x)
        for chunk in self._chunks():
            logits = self._logits(x, s, v, chunk)
            new_max = torch.maximum(running_max, logits.max(dim=1, keepdim=True).values)
            rescale, exponentials = (running_max - new_max).exp(), logits.sub_(new_max).exp_()
            total = total * rescale + exponentials.sum(dim=1, keepdim=True)
            weighted = weighted * rescale + exponentials @ self.means[chunk].to(x.dtype)
            running_max = new_max
        mean = weighted / total
        return (mean + s * self.std**2 / v * (x - s * mean)).reshape(xt.shape)

    def __call__(self, xt, t):
        return eps_from_x0(self.schedule, xt, t, self.x0(xt, t))


class ClassMixture:
    """Labelled data whose class k is N(mu_k, std^2 I), the classes equally likely: exact conditional models.

    Called as (x_t, t, y) it is the optimal denoiser of class y (:class:`MixtureDenoiser` of one component),
    and with y = K (the null label of classifier-free guidance, K the number of classes) or no labels that of
    the whole mixture. ``class_logits(x_t, t)`` is log p_t(y | x_t) up to a constant per row: the mixture's
    responsibilities are exactly the posterior of the class given the noisy point, eq. `mixture-class-posterior`.
    """

    def __init__(self, means, schedule, std):
        self.num_classes = len(means)
        self.mixture = MixtureDenoiser(means, schedule, std)
        self.classes = [MixtureDenoiser(means[k : k + 1], schedule, std) for k in range(self.num_classes)]

    def __call__(self, xt, t, y=None):
        eps = self.mixture(xt, t)
        for k, denoiser in enumerate(self.classes if y is not None else []):
            chosen = y == k
            eps[chosen] = denoiser(xt[chosen], t[chosen])
        return eps

    def class_logits(self, xt, t):
        return self.mixture.log_posterior(xt, t)


class EmpiricalDenoiser(MixtureDenoiser):
    """The optimal denoiser of a finite training set, eq. `empirical-denoiser`: E[x_0 | x_t] is the average of
    the training images y_n weighted by softmax_n(-|x_t - sqrt(alpha_bar_t) y_n|^2 / (2 (1 - alpha_bar_t))).

    Its estimate is always a convex combination of training images, and as t -> 0 the weights collapse onto
    the nearest one: sampling with it can only return training images.
    """

    def __init__(self, images, schedule, chunk_size=4096):
        super().__init__(images, schedule, std=0.0, chunk_size=chunk_size)


def patches(images, size, circular=True):
    """Every size x size patch of images (B, C, H, W), one centred on each pixel: shape (B, H W, C size^2), the
    pixels in row-major order. For even sizes the centre is the lower-right of the middle four pixels. Beyond the
    edges a patch wraps around (circular padding), or with ``circular=False`` reads zeros."""
    height, width = images.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"patch size must be between 1 and the image side {min(height, width)}, got {size!r}")
    before = size // 2
    padding = (before, size - 1 - before) * 2
    padded = torch.nn.functional.pad(images, padding, mode="circular" if circular else "constant")
    return torch.nn.functional.unfold(padded, size).transpose(1, 2)


class PatchDenoiser:
    """The optimal denoiser restricted to patches (Kamb and Ganguli 2024), eq. `patch-denoiser`: pixel p of
    E[x_0 | x_t] is estimated from the patch of x_t around p alone, as the centre pixel of the empirical optimal
    denoiser (:class:`EmpiricalDenoiser`) of training patches.

    With ``equivariant=True`` (their equivariant local score machine) the training patches come from every
    position, so that with wrap-around the estimate commutes with circular shifts of the image; with
    ``equivariant=False`` (their local machine) pixel p uses the training patches centred on p only, and with
    wrap-around a patch as large as the image gives back the optimal denoiser of the whole training set. Either
    way a new image can be a mosaic of training patches.

    Patches wrap around the edges, or with ``border`` a value (the background) the images are surrounded by it:
    training patches by that value, noisy ones by its noiseless part sqrt(alpha_bar_t) border. A border breaks
    the equivariance at the edges and tells a patch where in the image it is.
    """

    def __init__(self, images, schedule, patch_size, equivariant=True, border=None, chunk_size=4096):
        self.shape, self.patch_size, self.schedule = tuple(images.shape[1:]), patch_size, schedule
        self.equivariant = equivariant
        self.circular, self.background = border is None, 0.0 if border is None else border
        training = patches(images - self.background, patch_size, self.circular)  # (N, P, D)
        if equivariant:  # a patch met m times (blank background, mostly) is one component of weight m
            distinct, counts = torch.unique(training.flatten(0, 1), dim=0, return_counts=True)
            weights = counts.to(images.dtype)
            self.positions = [MixtureDenoiser(distinct, schedule, weights=weights, chunk_size=chunk_size)]
        else:
            self.positions = [EmpiricalDenoiser(training[:, p], schedule, chunk_size) for p in range(training.shape[1])]

    def x0(self, xt, t):
        """The patch-by-patch estimate of E[x_0 | x_t], shaped like x_t."""
        if tuple(xt.shape[1:]) != self.shape:
            raise ValueError(f"x_t has shape {tuple(xt.shape)} but the training images have shape (N, {self.shape})")
        s = self.schedule.at(self.schedule.alpha_bars, t, xt).sqrt()
        queries = patches(xt - s * self.background, self.patch_size, self.circular)  # (B, P, D)
        batch, positions, _ = queries.shape
        if self.equivariant:
            estimates = self.positions[0].x0(queries.flatten(0, 1), t.repeat_interleave(positions))
        else:
            estimates = torch.stack([denoiser.x0(queries[:, p], t) for p, denoiser in enumerate(self.positions)], 1)
        centre = (self.patch_size // 2) * (self.patch_size + 1)
        channels = self.shape[0]
        centres = estimates.reshape(batch, positions, channels, self.patch_size**2)[..., centre]  # (B, P, C)
        return centres.transpose(1, 2).reshape(xt.shape) + self.background

    def __call__(self, xt, t):
        return eps_from_x0(self.schedule, xt, t, self.x0(xt, t))
