"""Fitting a denoiser to a tensor of data by minimising L_simple."""

import torch

from .losses import l_simple


def fit(model, schedule, data, steps=2000, batch_size=256, lr=1e-3, generator=None):
    """Adam on L_simple over random minibatches of ``data`` (Ho et al. 2020, Algorithm 1).

    Returns the loss of every step as a list of floats.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        loss = l_simple(model, schedule, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
