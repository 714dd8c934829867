"""Fitting a denoiser to a tensor of data by minimising L_simple."""

import math

import torch

from .losses import l_simple


def cosine_learning_rate(lr, step, steps):
    """The learning rate at a step (0-indexed) of a half-cosine decay from lr to 0 over `steps` steps."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def fit(model, schedule, data, steps=2000, batch_size=256, lr=1e-3, generator=None, decay=True):
    """Adam on L_simple over random minibatches of ``data`` (Ho et al. 2020, Algorithm 1), eq. `l-simple`.

    Each step draws a minibatch of x_0 from ``data`` (with replacement), lets
    :func:`l_simple` draw t and eps, and takes one Adam step. With ``decay``
    the learning rate falls from ``lr`` to 0 along a half cosine
    (:func:`cosine_learning_rate`), so that the last steps are small and
    average out the noise of the stochastic gradient. Returns the loss of
    every step as a list of floats; the model is left in eval mode.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        if decay:
            for group in optimizer.param_groups:
                group["lr"] = cosine_learning_rate(lr, step, steps)
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        loss = l_simple(model, schedule, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
