"""Training objectives: the denoising loss and L_simple (eq. `l-simple`)."""

import torch

from .parameterization import prediction_target


def denoising_loss(model, schedule, x0, t, eps, prediction="eps", labels=None):
    """|| target - f_theta(x_t, t[, y]) ||^2 averaged over batch and dimensions, eq. `l-simple` and its x_0 and v
    variants.

    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps; the target is
    :func:`prediction_target`. With ``labels`` the network is also given the
    class labels y (a conditional model). The network's output is compared in
    float32 even when it ran in lower precision.
    """
    target = prediction_target(schedule, x0, t, eps, prediction)
    xt = schedule.q_sample(x0, t, eps)
    output = model(xt, t) if labels is None else model(xt, t, labels)
    return (target - output.float()).pow(2).mean()


def l_simple(model, schedule, x0, generator=None, labels=None):
    """E_{t, x_0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2, eq. `l-simple`.

    Averaged over the batch and the dimensions, with t uniform on 0..T-1; with ``labels`` the network also reads y.
    """
    t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return denoising_loss(model, schedule, x0, t, eps, labels=labels)
