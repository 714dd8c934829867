"""Training objectives (losses.py): the denoising loss and L_simple.

L_simple of the optimal predictor for Gaussian data is compared with its
closed form (the mean of alpha_bar over t) by Monte Carlo within 5 standard
errors.
"""

import math

import pytest
import torch

from diffusion_lib import NoiseSchedule
from diffusion_lib.losses import denoising_loss, l_simple


def test_l_simple_of_the_optimal_predictor_for_gaussian_data_is_the_mean_alpha_bar():
    """For x_0 ~ N(0, I), eps - E[eps | x_t] has variance alpha_bar_t per dimension."""
    schedule, generator = NoiseSchedule.linear(T=100), torch.Generator().manual_seed(7)

    def model(x, t):
        return (1 - schedule.alpha_bars[t][:, None]).sqrt() * x

    losses = torch.stack(
        [
            l_simple(model, schedule, torch.randn(2_000, 2, generator=generator, dtype=torch.float64), generator)
            for _ in range(200)
        ]
    )
    standard_error = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean() - schedule.alpha_bars.mean()) < 5 * standard_error


def test_l_simple_draws_every_step_uniformly_including_the_first_and_the_last():
    """t ~ Uniform{0, ..., T-1}: over N draws each count is Binomial(N, 1/T); each must lie within 5 standard
    deviations of N / T (a correct sampler leaves that band with probability below 1e-5 over all T counts)."""
    T, calls = 7, []
    schedule = NoiseSchedule.linear(T=T, beta_start=0.01, beta_end=0.3)

    def model(x, t):
        calls.append(t)
        return torch.zeros_like(x)

    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        l_simple(model, schedule, torch.zeros(70, 2), generator)
    t = torch.cat(calls)
    assert t.dtype == torch.long and t.min() == 0 and t.max() == T - 1
    counts = torch.bincount(t, minlength=T)
    n, p = len(t), 1 / T
    assert len(counts) == T and ((counts - n * p).abs() < 5 * math.sqrt(n * p * (1 - p))).all(), counts


def test_l_simple_is_the_mean_squared_noise_error_at_the_drawn_steps():
    """With the (t, x_t) the model receives, eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t) by hand:
    the loss is mean((eps - model(x_t, t))^2), and the eps drawn are standard normal (moments within 5 standard
    errors)."""
    schedule = NoiseSchedule.cosine(T=50)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.rand(4000, 3, generator=generator, dtype=torch.float64) * 2 - 1
    seen = {}

    def model(x, t):
        seen.update(x=x, t=t)
        return 0.5 * x

    loss = l_simple(model, schedule, x0, generator)
    alpha_bar = torch.tensor([math.prod(1 - b for b in schedule.betas[: k + 1].tolist()) for k in seen["t"].tolist()])
    alpha_bar = alpha_bar.double()[:, None]
    eps = (seen["x"] - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    expected = (eps - 0.5 * seen["x"]).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)  # the output is compared after rounding to float32
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n)
    assert abs(eps.pow(2).mean().item() - 1) < 5 * math.sqrt(2 / n)


def test_denoising_loss_compares_a_low_precision_output_in_float32():
    """A network run in bfloat16 is compared with its target in float32, against the loss computed here in float64
    from the same bfloat16 values."""
    schedule = NoiseSchedule.linear(T=20)
    generator = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(8, 2, generator=generator), torch.randn(8, 2, generator=generator)
    t = torch.arange(8) * 2

    def model(x, steps):
        return (0.3 * x).to(torch.bfloat16)

    loss = denoising_loss(model, schedule, x0, t, eps)
    assert loss.dtype == torch.float32
    a = schedule.alpha_bars[t].double()[:, None]
    xt = (a.sqrt() * x0.double() + (1 - a).sqrt() * eps.double()).float()
    expected = (eps.double() - (0.3 * xt).to(torch.bfloat16).double()).pow(2).mean()
    # float32 arithmetic on these values: a few units of 6e-8 relative (bfloat16 would be off by 4e-3).
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_denoising_loss_gives_the_labels_to_a_conditional_network_only_when_given():
    schedule = NoiseSchedule.linear(T=20)
    generator = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    t, labels, seen = torch.tensor([0, 5, 10, 19]), torch.tensor([3, 0, 1, 3]), []

    def model(x, steps, *y):
        seen.append(y)
        return torch.zeros_like(x)

    unconditional = denoising_loss(model, schedule, x0, t, eps)
    conditional = denoising_loss(model, schedule, x0, t, eps, labels=labels)
    assert seen[0] == () and len(seen[1]) == 1 and seen[1][0] is labels
    assert unconditional.item() == conditional.item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-6)


def test_l_simple_draws_t_then_eps_in_the_data_precision_from_its_generator_and_passes_the_labels():
    """l_simple's draws, made again by hand from a generator seeded alike: t uniform on 0..T-1, then eps in float64
    for float64 data; the network receives exactly q_sample(x_0, t, eps) and the labels given."""
    schedule = NoiseSchedule.cosine(T=50)
    x0 = torch.rand(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    labels, seen = torch.arange(64) % 4, {}

    def model(x, t, y):
        seen.update(x=x, t=t, y=y)
        return torch.zeros_like(x)

    l_simple(model, schedule, x0, torch.Generator().manual_seed(5), labels)
    by_hand = torch.Generator().manual_seed(5)
    t = torch.randint(0, schedule.T, (64,), generator=by_hand)
    eps = torch.randn(x0.shape, generator=by_hand, dtype=torch.float64)
    assert torch.equal(seen["t"], t) and seen["y"] is labels
    torch.testing.assert_close(seen["x"], schedule.q_sample(x0, t, eps), rtol=0, atol=0)
