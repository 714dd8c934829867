"""Small in-memory fitting: the denoiser of two-dimensional data and classifiers, on one shared optimisation step.

The image training engine (:mod:`diffusion_lib.engine`) takes its steps with
the same :func:`optimisation_step`.
"""

import math

import torch

from .losses import l_simple


def cosine_learning_rate(lr, step, steps):
    """The learning rate at a step (0-indexed) of a half-cosine decay from lr to 0 over `steps` steps."""
    return lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def optimisation_step(optimizer, loss, lr, grad_clip=None):
    """Set the learning rate, back-propagate the loss, clip the gradient's global norm at grad_clip, step."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def fit(
    model,
    schedule,
    data,
    steps=2000,
    batch_size=256,
    lr=1e-3,
    generator=None,
    decay=True,
    labels=None,
    class_dropout=0.1,
):
    """Adam on L_simple over random minibatches of ``data`` (Ho et al. 2020, Algorithm 1), eq. `l-simple`.

    Each step draws a minibatch of x_0 from ``data`` (with replacement), lets
    :func:`l_simple` draw t and eps, and takes one Adam step. With ``decay``
    the learning rate falls from ``lr`` to 0 along a half cosine
    (:func:`cosine_learning_rate`), so that the last steps are small and
    average out the noise of the stochastic gradient. Returns the loss of
    every step as a list of floats; the model is left in eval mode.

    With ``labels`` (one per row of data) the model is conditional: each
    minibatch's labels are replaced by the null label ``model.num_classes``
    with probability ``class_dropout`` (:func:`drop_labels`), so that one
    network learns eps(x_t, t, y) and eps(x_t, t) for classifier-free
    guidance, eq. `cfg`.
    """
    _check_positive(steps=steps, batch_size=batch_size)
    if labels is not None and len(labels) != len(data):
        raise ValueError(f"got {len(labels)} labels for {len(data)} data points")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        rows = torch.randint(0, len(data), (batch_size,), generator=generator)
        batch_labels = None
        if labels is not None:
            batch_labels = drop_labels(labels[rows], model.num_classes, class_dropout, generator)
        loss = l_simple(model, schedule, data[rows], generator, batch_labels)
        optimisation_step(optimizer, loss, cosine_learning_rate(lr, step, steps) if decay else lr)
        losses.append(loss.item())
    model.eval()
    return losses


def drop_labels(labels, null_label, class_dropout, generator=None):
    """The labels with each replaced by null_label with probability class_dropout (Ho and Salimans 2022)."""
    if not 0 <= class_dropout < 1:
        raise ValueError(f"class_dropout must be in [0, 1), got {class_dropout!r}")
    dropped = torch.rand(labels.shape, generator=generator) < class_dropout
    return torch.where(dropped.to(labels.device), null_label, labels)


def classifier_epoch(model, optimizer, images, labels, epoch, epochs, batch_size, lr, generator=None):
    """One epoch of :func:`fit_classifier`: the images in a fresh random order from ``generator``, in batches of
    batch_size (the last partial batch dropped), with the half-cosine learning rate of a run of ``epochs`` epochs.
    Returns the epoch's mean loss."""
    batches_per_epoch = len(images) // batch_size
    order = torch.randperm(len(images), generator=generator).to(images.device)
    total = 0.0
    for i in range(batches_per_epoch):
        batch = order[i * batch_size : (i + 1) * batch_size]
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        step = epoch * batches_per_epoch + i
        optimisation_step(optimizer, loss, cosine_learning_rate(lr, step, epochs * batches_per_epoch))
        total += loss.detach()
    return float(total) / batches_per_epoch


class Noised(torch.nn.Module):
    """x_0 -> classifier(x_t, t), with t uniform on 0..T-1 and x_t ~ q(x_t | x_0) (eq. `q-marginal`) drawn afresh
    at each call from ``generator`` (on the CPU, so that a checkpoint of it resumes the same draws).

    :func:`classifier_epoch` trains a noise-conditional classifier through it
    with the loop that trains a classifier of clean images.
    """

    def __init__(self, classifier, schedule, generator):
        super().__init__()
        self.classifier, self.schedule, self.generator = classifier, schedule, generator

    def forward(self, x0):
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), generator=self.generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype).to(x0.device)
        return self.classifier(self.schedule.q_sample(x0, t, eps), t)


def fit_classifier(model, images, labels, epochs=5, batch_size=128, lr=1e-3, generator=None):
    """Adam on the cross-entropy of model(images) against labels, with a half-cosine learning rate.

    Returns the mean loss of each epoch (:func:`classifier_epoch`); the model is left in eval mode.
    """
    _check_positive(epochs=epochs, batch_size=batch_size)
    if len(images) < batch_size:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of images ({len(images)})")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = [
        classifier_epoch(model, optimizer, images, labels, epoch, epochs, batch_size, lr, generator)
        for epoch in range(epochs)
    ]
    model.eval()
    return losses
