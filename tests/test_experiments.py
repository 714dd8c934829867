"""The sampler-table experiment on tiny data: every row drawn from the same noises, measured beside real images, and
the build resumable under a time budget."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import diffusion_lib.artifacts as artifacts
from diffusion_lib.experiments import samplers

TINY_TRAIN = dict(
    channels=8, channel_mults=[1, 2], attention_resolutions=[7], steps=3, batch_size=16, log_every=1, T=10
)


def tiny(real):
    classifier, ddpm, table = real["mnist-classifier"], real["mnist-ddpm"], real["mnist-samplers"]
    evaluation = {**ddpm.config["evaluation"], "num_samples": 8, "batch_size": 4, "sampling_steps": 3}
    sampler_config = {**table.config, "steps": [2, 5], "num_samples": {"cuda": 8, "cpu": 8}, "batch_size": 4,
                      "reference_sets": 3, "grid_images": 2}  # fmt: skip
    return {
        classifier.name: dataclasses.replace(classifier, config={**classifier.config, "epochs": 1}),
        ddpm.name: dataclasses.replace(
            ddpm, config={"train": {**ddpm.config["train"], **TINY_TRAIN}, "evaluation": evaluation}
        ),
        table.name: dataclasses.replace(table, config=sampler_config),
    }


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch, small_mnist_root):
    monkeypatch.setattr(artifacts, "EXPERIMENTS", tiny(artifacts.EXPERIMENTS))
    monkeypatch.setenv("DIFFUSION_DATA", str(small_mnist_root))
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(samplers, "inference_network", lambda model, device: model)  # compiling costs a minute
    return tmp_path


def test_the_sampler_table_builds_resumes_and_measures_every_row(tiny_folder):
    assert artifacts.build("mnist-samplers", "cpu", time_budget=None) is True
    table = artifacts.load("mnist-samplers")
    assert table.model is None and table.status == "ok"
    found = table.metrics
    rows = [f"{name}-{steps}" for name in ("ddpm", "ddim-eta0", "ddim-eta1", "dpm-solver++") for steps in (2, 5)]
    assert list(found["rows"]) == rows and found["num_samples"] == 8
    for row in found["rows"].values():
        assert row["fid"] >= 0 and row["seconds_per_image"] > 0 and 0 <= row["confident_fraction"] <= 1
        assert sum(row["class_fractions"]) == pytest.approx(1)
    assert len(found["real"]) == 3 and len(found["ddpm-1000"]) == 1  # the stored DDPM has 8 samples: one set of 8
    grids = load_file(tiny_folder / "mnist-samplers" / "samples.safetensors")
    assert set(grids) == set(rows) and all(grid.shape == (2, 1, 28, 28) for grid in grids.values())
    # deterministic samplers from the same x_T: DDIM and DPM-Solver++ agree more closely with each other than with DDPM
    ddim, dpm, ddpm = (grids[f"{name}-5"].float() for name in ("ddim-eta0", "dpm-solver++", "ddpm"))
    assert (ddim - dpm).abs().mean() < (ddim - ddpm).abs().mean()
    # the distance to the flow map is measured against the last sampler at its most steps: zero there, and for
    # another row the mean over images of the RMS pixel distance to the same noise's reference image
    assert found["rows"]["dpm-solver++-5"]["flow_distance"] == 0
    chunks = [load_file(tiny_folder / "mnist-samplers" / "run" / f"{row}_{chunk}.safetensors")["samples"]
              for row in ("ddim-eta0-2", "dpm-solver++-5") for chunk in (0, 1)]  # fmt: skip
    ddim_2, reference = ((torch.cat(pair).float() / 127.5 - 1).double() for pair in (chunks[:2], chunks[2:]))
    by_hand = ((ddim_2 - reference) ** 2).mean(dim=(1, 2, 3)).sqrt().mean().item()
    assert found["rows"]["ddim-eta0-2"]["flow_distance"] == pytest.approx(by_hand, rel=1e-12)


def test_the_sampler_table_stops_and_resumes_under_a_time_budget(tiny_folder):
    assert artifacts.build("mnist-ddpm", "cpu") is True
    assert artifacts.build("mnist-samplers", "cpu", time_budget=0) is False
    run = tiny_folder / "mnist-samplers" / "run"
    assert json.loads((run / "experiment.json").read_text())["steps"] == [2, 5]
    assert not list(run.glob("*_1.safetensors"))  # stopped before the second chunk of any row
    assert artifacts.status("mnist-samplers")[0] == "missing"
    assert artifacts.build("mnist-samplers", "cpu") is True
    assert len(list(run.glob("*.safetensors"))) == 8 * 2
    first = load_file(run / "ddim-eta0-2_0.safetensors")["samples"]
    torch.manual_seed(123)  # the global generator plays no part: every row's noises come from the config's seed
    assert artifacts.build("mnist-samplers", "cpu") is True
    assert torch.equal(first, load_file(run / "ddim-eta0-2_0.safetensors")["samples"])
