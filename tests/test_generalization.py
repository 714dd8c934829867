"""The N-sweep of memorization against generalization, on tiny 2-D data (CPU, seconds): disjoint training sets,
the shapes of what it returns, seeded reproducibility, resuming from saved models and the time budget."""

import torch
from safetensors.torch import load_file

from diffusion_lib import NoiseSchedule, data
from diffusion_lib.experiments import Experiment
from diffusion_lib.experiments.generalization import (
    build_generalization,
    disjoint_halves,
    mean_denoising_loss,
    sweep_data,
    sweep_sizes,
)

CONFIG = {"seed": 0, "sizes": [2, 5], "width": 16, "depth": 1, "steps": 20, "batch_size": 8, "lr": 1e-3,
          "samples": 7, "sampling_steps": 4, "loss_draws": 64}  # fmt: skip
schedule = NoiseSchedule.linear(50)


def tiny_data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(21, 2, generator=generator), torch.randn(6, 2, generator=generator)


def test_halves_are_disjoint_and_of_equal_size():
    first, second = disjoint_halves(21, seed=3)
    assert len(first) == len(second) == 10
    assert len(set(first.tolist()) | set(second.tolist())) == 20


def test_sweep_trains_two_models_per_size_and_is_reproducible(tmp_path):
    points, test = tiny_data()
    lines = []
    found = sweep_sizes(points, test, schedule, CONFIG, run=tmp_path, progress=lines.append)
    assert found["samples"].shape == (2, 2, 7, 2)
    assert found["train_loss"].shape == found["test_loss"].shape == (2, 2)
    assert len(lines) == 4
    halves = found["halves"]
    assert not set(halves[0].tolist()) & set(halves[1].tolist())
    # the two models of a size start from the same x_T but differ (other data, other initial weights)
    assert not torch.equal(found["samples"][0, 0], found["samples"][0, 1])

    again = sweep_sizes(points, test, schedule, CONFIG, progress=lines.append)  # trained anew, no run folder
    torch.testing.assert_close(again["samples"], found["samples"], rtol=0, atol=0)
    resumed = sweep_sizes(points, test, schedule, CONFIG, run=tmp_path, progress=lines.append)  # loaded
    assert len(lines) == 8  # the resumed sweep trained nothing
    torch.testing.assert_close(resumed["test_loss"], found["test_loss"], rtol=0, atol=0)


def test_a_spent_time_budget_returns_none_before_training():
    points, test = tiny_data()
    assert sweep_sizes(points, test, schedule, CONFIG, time_budget=0.0, progress=print) is None


def test_mean_denoising_loss_of_a_zero_predictor_is_the_mean_squared_noise():
    """With eps_theta = 0 the loss is the mean of eps^2 over the draws: about 1, within the Monte Carlo spread."""
    points, _ = tiny_data()
    draws = 4096

    def zero(x, t):
        return torch.zeros_like(x)

    loss = mean_denoising_loss(zero, schedule, points, draws, seed=5)
    # eps^2 has variance 2 per coordinate; the mean over 2 * draws coordinates has standard deviation 1 / sqrt(draws)
    assert abs(loss - 1) < 5 / draws**0.5


def test_a_toy_sweep_draws_its_points_from_its_seed_and_stores_them(tmp_path):
    config = {**CONFIG, "dataset": "swiss_roll", "points": 30, "test_points": 5, "schedule": "linear", "T": 50}
    experiment = Experiment("roll", "", config, build_generalization, None, ())
    assert build_generalization(experiment, tmp_path, "cpu", None, {})["models"] == 4
    stored = load_file(tmp_path / "sweep.safetensors")
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(stored["points"], data.toy_data("swiss_roll", 30, generator), rtol=0, atol=0)
    torch.testing.assert_close(stored["test"], data.toy_data("swiss_roll", 5, generator), rtol=0, atol=0)
    assert stored["samples"].shape == (2, 2, 7, 2)
    digits = {**config, "dataset": "digits"}
    assert [len(part) for part in sweep_data(digits)] == [1500, 297]
