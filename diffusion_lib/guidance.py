"""Guidance: wrappers that steer a diffusion model towards a class, each a callable (x, t) -> eps.

Bayes' rule for scores, grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x) (eq. `bayes-score`), and the
score's relation to the noise, grad log p_t(x) = -eps / sqrt(1 - alpha_bar_t) (eq. `score-eps`), give both: the
class term comes from a classifier of noisy images (classifier guidance) or from the difference of a conditional
and an unconditional noise prediction (classifier-free guidance). Every sampler of :func:`diffusion_lib.sample`
runs them as it runs any model.
"""

import math
import numbers

import torch


def _labels(y, x):
    """The labels as a LongTensor of shape (B,) on x's device: a single label is given to every image."""
    labels = torch.as_tensor(y, device=x.device)
    if labels.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"labels y must be integers, got dtype {labels.dtype}")
    if labels.dim() == 0:
        return labels.long().expand(x.shape[0])
    if labels.shape != x.shape[:1]:
        raise ValueError(
            f"labels y must be one integer or one per image, shape ({x.shape[0]},); got {tuple(labels.shape)}"
        )
    return labels.long()


def _check_scale(scale):
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise ValueError(f"scale must be a real number, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number, got {scale!r}")


def classifier_free(model, y, scale, null_label=None):
    """eps_w(x, t) = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)), eq. `cfg`: classifier-free guidance
    (Ho and Salimans 2022, whose guidance weight is our w - 1).

    ``model(x, t, y)`` is a conditional noise prediction trained with label
    dropout; ``null_label`` is the label that stands for "no label" (by
    default ``model.num_classes``, as in :class:`~diffusion_lib.models.unet.UNet`).
    Scale w = 0 gives the unconditional model, w = 1 the conditional one, and
    w > 1 extrapolates past it. Both predictions go through the network as one
    batch of 2B images (one batch of B at w = 1).
    """
    _check_scale(scale)
    if null_label is None:
        null_label = getattr(model, "num_classes", None)
        if null_label is None:
            raise ValueError("model has no num_classes to name its null label; pass null_label")

    def guided(x, t):
        labels = _labels(y, x)
        if scale == 1:  # the conditional model itself: no second evaluation
            return model(x, t, labels)
        both = torch.cat([labels, torch.full_like(labels, null_label)])
        conditional, unconditional = model(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return guided


def log_likelihood_gradient(classifier, x, t, y):
    """grad_x log p(y | x_t, t) of a noise-conditional classifier ``classifier(x, t) -> logits``, per image.

    Computed with gradients switched on, so that it also works inside a
    sampler, which runs under ``torch.no_grad()``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = classifier(x, t)
        if y.device.type == "cpu" and ((y < 0) | (y >= logits.shape[1])).any():
            bad = y[(y < 0) | (y >= logits.shape[1])][0].item()
            raise ValueError(f"label {bad} out of range: the classifier knows labels 0..{logits.shape[1] - 1}")
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least float32
        log_probability = logits.log_softmax(dim=1).gather(1, y[:, None]).sum()
        (gradient,) = torch.autograd.grad(log_probability, x)
    return gradient


def classifier_guided(model, classifier, schedule, y, scale):
    """eps_w(x, t) = eps(x, t) - w sqrt(1 - alpha_bar_t) grad_x log p(y | x_t, t), eq. `classifier-guidance`, as in
    Algorithm 2 of Dhariwal and Nichol (2021).

    The shift is eq. `score-eps` applied to w times the classifier's score:
    the guided model's score is grad log p_t(x) + w grad log p_t(y | x). The
    classifier must read noisy images at every step t of ``schedule``
    (:class:`~diffusion_lib.models.noisy_classifier.NoisyClassifier`).
    """
    _check_scale(scale)

    def guided(x, t):
        labels = _labels(y, x)
        gradient = log_likelihood_gradient(classifier, x, t, labels).to(x.dtype)
        return model(x, t) - scale * (1 - schedule.at(schedule.alpha_bars, t, x)).sqrt() * gradient

    return guided


def limited_interval(guided, unguided, schedule, sigma_low, sigma_high):
    """guided(x, t) where sigma_low < sigma_t <= sigma_high, unguided(x, t) elsewhere, eq. `guidance-interval`:
    guidance limited to an interval of noise levels (Kynkaanniemi et al. 2024).

    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) is the noise level of x_t
    / sqrt(alpha_bar_t); ``unguided`` is usually the conditional model, scale 1.
    """
    if not 0 <= sigma_low < sigma_high:
        raise ValueError(f"need 0 <= sigma_low < sigma_high, got sigma_low={sigma_low!r}, sigma_high={sigma_high!r}")

    def model(x, t):
        sigma = schedule.snr.to(t.device)[t].rsqrt()
        inside = (sigma > sigma_low) & (sigma <= sigma_high)
        if inside.all():
            return guided(x, t)
        if not inside.any():
            return unguided(x, t)
        return torch.where(inside.reshape(-1, *[1] * (x.dim() - 1)), guided(x, t), unguided(x, t))

    return model
