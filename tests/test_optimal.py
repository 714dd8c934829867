"""Exact denoisers against independent computations: Gaussian conditioning solved directly, Monte Carlo posterior
means (self-normalised importance sampling from the prior), a direct softmax over the training set, and the
minimum of the denoising loss."""

import math

import pytest
import torch

from diffusion_lib import NoiseSchedule, sample
from diffusion_lib.data import mnist_images
from diffusion_lib.optimal import EmpiricalDenoiser, GaussianDenoiser, MixtureDenoiser
from diffusion_lib.parameterization import x0_from_eps

f64 = torch.float64


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def random_gaussian(d, seed):
    generator = seeded(seed)
    mean = torch.randn(d, generator=generator, dtype=f64)
    factor = torch.randn(d, d, generator=generator, dtype=f64)
    return mean, factor @ factor.T / d + 0.05 * torch.eye(d, dtype=f64)


def test_gaussian_denoiser_is_gaussian_conditioning():
    """E[x_0 | x_t] = mu + Cov(x_0, x_t) Cov(x_t)^-1 (x_t - E x_t), with Cov(x_0, x_t) = s Sigma and
    Cov(x_t) = s^2 Sigma + (1 - alpha_bar) I, solved as a linear system instead of in the eigenbasis."""
    schedule = NoiseSchedule.cosine(100)
    mean, covariance = random_gaussian(5, 0)
    denoiser = GaussianDenoiser(mean, covariance, schedule)
    xt = torch.randn(7, 5, generator=seeded(1), dtype=f64)
    for t in (0, 30, 99):
        alpha_bar = schedule.alpha_bars[t]
        s = alpha_bar.sqrt()
        cov_xt = alpha_bar * covariance + (1 - alpha_bar) * torch.eye(5, dtype=f64)
        expected = mean + torch.linalg.solve(cov_xt, (xt - s * mean).T).T @ (s * covariance)
        torch.testing.assert_close(denoiser.x0(xt, t), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(x0_from_eps(schedule, xt, t, denoiser(xt, t)), expected, rtol=1e-9, atol=1e-9)


def importance_posterior_mean(prior_samples, schedule, xt, t):
    """Self-normalised importance estimate of E[x_0 | x_t] from prior samples, with its standard error per
    coordinate (delta method for a ratio estimator)."""
    alpha_bar = schedule.alpha_bars[t]
    log_w = -((xt - alpha_bar.sqrt() * prior_samples).pow(2).sum(1)) / (2 * (1 - alpha_bar))
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    estimate = (w[:, None] * prior_samples).sum(0)
    standard_error = (w[:, None] ** 2 * (prior_samples - estimate) ** 2).sum(0).sqrt()
    return estimate, standard_error


def test_mixture_denoiser_matches_monte_carlo_posterior_means():
    schedule = NoiseSchedule.linear(1000)
    generator = seeded(2)
    means = torch.tensor([[0.6, 0.0], [-0.3, 0.5], [-0.3, -0.5]], dtype=f64)
    weights, std = torch.tensor([0.5, 0.3, 0.2], dtype=f64), 0.15
    denoiser = MixtureDenoiser(means, schedule, std=std, weights=weights)
    n = 400_000
    components = torch.multinomial(weights, n, replacement=True, generator=generator)
    prior = means[components] + std * torch.randn(n, 2, generator=generator, dtype=f64)
    points = torch.tensor([[0.2, 0.1], [-0.4, 0.4], [1.0, -1.0]], dtype=f64)
    for t in (100, 400, 800):
        exact = denoiser.x0(points, t)
        for point, value in zip(points, exact, strict=True):
            estimate, standard_error = importance_posterior_mean(prior, schedule, point, t)
            gap = (estimate - value).abs()
            assert (gap < 5 * standard_error).all(), (t, point, value, estimate, standard_error)


def test_mixture_responsibilities_sum_to_one_and_chunking_changes_nothing():
    schedule = NoiseSchedule.cosine(50)
    means = torch.randn(37, 3, generator=seeded(3), dtype=f64)
    xt = torch.randn(5, 3, generator=seeded(4), dtype=f64)
    reference = MixtureDenoiser(means, schedule, std=0.2, chunk_size=1000)
    for chunk_size in (1, 4, 36):
        chunked = MixtureDenoiser(means, schedule, std=0.2, chunk_size=chunk_size)
        for t in (0, 25, 49):
            torch.testing.assert_close(chunked.x0(xt, t), reference.x0(xt, t), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(chunked.posterior(xt, t).sum(1), torch.ones(5, dtype=f64))


def test_empirical_denoiser_is_a_softmax_over_the_training_set():
    schedule = NoiseSchedule.linear(200)
    images = torch.rand(11, 1, 4, 4, generator=seeded(5), dtype=f64) * 2 - 1
    denoiser = EmpiricalDenoiser(images, schedule, chunk_size=3)
    xt = torch.randn(6, 1, 4, 4, generator=seeded(6), dtype=f64)
    flat = images.flatten(1)
    for t in (0, 50, 199):
        alpha_bar = schedule.alpha_bars[t]
        distances = torch.cdist(xt.flatten(1), alpha_bar.sqrt() * flat).pow(2)
        weights = (-distances / (2 * (1 - alpha_bar))).softmax(dim=1)
        expected = (weights @ flat).reshape(xt.shape)
        torch.testing.assert_close(denoiser.x0(xt, t), expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(denoiser.posterior(xt, t), weights, rtol=1e-10, atol=1e-12)


def test_empirical_denoiser_goes_from_the_mean_to_the_nearest_image():
    schedule = NoiseSchedule.linear(1000)
    images = torch.rand(20, 1, 4, 4, generator=seeded(7), dtype=f64) * 2 - 1
    denoiser = EmpiricalDenoiser(images, schedule)
    x = images[3:4] + 0.01 * torch.randn(1, 1, 4, 4, generator=seeded(8), dtype=f64)
    torch.testing.assert_close(denoiser.x0(x, 0), images[3:4], rtol=0, atol=1e-9)  # the posterior is one point
    noisy = torch.randn(1, 1, 4, 4, generator=seeded(9), dtype=f64)
    gap = (denoiser.x0(noisy, 999) - images.mean(0, keepdim=True)).abs().max().item()
    assert gap < 0.02  # at alpha_bar = 4e-5 the weights are nearly uniform


def test_sampling_with_the_empirical_denoiser_returns_training_images():
    schedule = NoiseSchedule.linear(1000)
    images = torch.rand(8, 1, 4, 4, generator=seeded(10), dtype=f64) * 2 - 1
    denoiser = EmpiricalDenoiser(images, schedule)
    for sampler in ("ddim", "ddpm"):
        x = sample(denoiser, schedule, (16, 1, 4, 4), sampler=sampler, num_steps=100, generator=seeded(11),
                   x_T=torch.randn(16, 1, 4, 4, generator=seeded(12), dtype=f64))  # fmt: skip
        nearest = torch.cdist(x.flatten(1), images.flatten(1)).min(dim=1).values
        assert nearest.max() < 1e-3, (sampler, nearest)


def test_the_optimal_denoiser_has_the_smallest_loss():
    """The exact eps* beats any perturbation of it on the denoising loss; its loss is tr Cov(eps | x_t) =
    d - (1 - alpha_bar) tr (alpha_bar Sigma + (1 - alpha_bar) I)^-1 for Gaussian data (Monte Carlo, 5 s.e.)."""
    schedule = NoiseSchedule.linear(1000)
    mean, covariance = random_gaussian(4, 13)
    denoiser = GaussianDenoiser(mean, covariance, schedule)
    generator, n, t = seeded(14), 200_000, 300
    x0 = mean + torch.randn(n, 4, generator=generator, dtype=f64) @ torch.linalg.cholesky(covariance).T
    eps = torch.randn(n, 4, generator=generator, dtype=f64)
    xt = schedule.q_sample(x0, t, eps)
    errors = (eps - denoiser(xt, t)).pow(2).sum(1)
    alpha_bar = schedule.alpha_bars[t]
    exact = (
        4
        - (1 - alpha_bar) * torch.linalg.inv(alpha_bar * covariance + (1 - alpha_bar) * torch.eye(4, dtype=f64)).trace()
    )
    assert abs(errors.mean() - exact) < 5 * errors.std() / math.sqrt(n)
    for scale in (0.9, 1.1):
        assert (eps - scale * denoiser(xt, t)).pow(2).sum(1).mean() > errors.mean()


def test_the_empirical_denoiser_of_all_of_mnist_fits_in_memory(mnist_root):
    images, _ = mnist_images(train=True, root=mnist_root)
    schedule = NoiseSchedule.linear(1000)
    denoiser = EmpiricalDenoiser(images, schedule)
    x = schedule.q_sample(images[:4], 10, torch.randn(4, 1, 28, 28, generator=seeded(15)))
    estimate = denoiser.x0(x, 10)
    assert estimate.shape == (4, 1, 28, 28) and estimate.dtype == torch.float32
    assert (estimate - images[:4]).abs().max() < 1e-3  # at t = 10 the nearest image is the one noised


def test_mismatched_shapes_are_named():
    denoiser = EmpiricalDenoiser(torch.zeros(3, 1, 4, 4), NoiseSchedule.linear(10))
    with pytest.raises(ValueError, match=r"x_t has shape \(2, 1, 5, 5\) but the data have shape \(N, 1, 4, 4\)"):
        denoiser(torch.zeros(2, 1, 5, 5), 3)
