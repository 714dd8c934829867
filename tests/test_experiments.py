"""The experiments on tiny data: the sampler table (every row drawn from the same noises, measured beside real images,
the build resumable under a time budget), the conditional DDPM, the noise-conditional classifier and the guidance
sweep."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import diffusion_lib.artifacts as artifacts
from diffusion_lib import data, metrics, optimal
from diffusion_lib.evaluation import floor_and_reference_rows, per_class_measures
from diffusion_lib.experiments import guidance_sweep, patch_machine, samplers
from diffusion_lib.guidance import classifier_free
from diffusion_lib.inference import inference_network
from diffusion_lib.sampling import sample

TINY_TRAIN = dict(
    channels=8, channel_mults=[1, 2], attention_resolutions=[7], steps=3, batch_size=16, log_every=1, T=10
)


def tiny(real):
    classifier, ddpm, table = real["mnist-classifier"], real["mnist-ddpm"], real["mnist-samplers"]
    cfg, noisy, sweep = real["mnist-cfg"], real["mnist-noisy-classifier"], real["mnist-guidance"]
    features, measures = real["mnist-judge-features"], real["mnist-guidance-measures"]
    machine, roll = real["mnist-patch-machine"], real["roll-ddpm"]
    cfg_train = {kind: {**recipe, **TINY_TRAIN} for kind, recipe in cfg.config["train"].items()}
    cfg_train["cuda"]["channels"] = 16  # tells the recipes apart
    evaluation = {**ddpm.config["evaluation"], "num_samples": 8, "batch_size": 4, "sampling_steps": 3}
    sampler_config = {**table.config, "steps": [2, 5], "num_samples": {"cuda": 8, "cpu": 8}, "batch_size": 4,
                      "reference_sets": 3, "grid_images": 2}  # fmt: skip
    return {
        classifier.name: dataclasses.replace(classifier, config={**classifier.config, "epochs": 1}),
        ddpm.name: dataclasses.replace(
            ddpm, config={"train": {**ddpm.config["train"], **TINY_TRAIN}, "evaluation": evaluation}
        ),
        table.name: dataclasses.replace(table, config=sampler_config),
        cfg.name: dataclasses.replace(cfg, config={"train": cfg_train, "grid": {**cfg.config["grid"], "steps": 3}}),
        noisy.name: dataclasses.replace(
            noisy, config={**noisy.config, "epochs": 1, "width": 4, "report_steps": [0, 9], "T": 10}
        ),  # fmt: skip
        sweep.name: dataclasses.replace(
            sweep,
            config={
                **sweep.config,
                "free": {"scales": [1, 3]},
                "classifier": {"scales": [2]},
                "interval": {"scales": [3], "sigma": [1e3, 1e4]},
                "per_class": {"cuda": 4, "cpu": 2},
                "chunk_per_class": 1,
                "sampling_steps": 3,
            },
        ),  # fmt: skip
        features.name: dataclasses.replace(features, config={**features.config, "train_images": 20}),
        roll.name: dataclasses.replace(roll, config={**roll.config, "points": 64, "steps": 5, "width": 8}),
        measures.name: dataclasses.replace(
            measures, config={**measures.config, "accuracy": {"steps": [0, 9], "seed": 1}}
        ),
        machine.name: dataclasses.replace(
            machine,
            config={
                **machine.config,
                "patch_images": 6,
                "candidates": [3, 5],
                "calibration_images": 2,
                "sampling_steps": 4,
                "samples": 2,
            },
        ),  # fmt: skip
    }


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch, small_mnist_root):
    monkeypatch.setattr(artifacts, "EXPERIMENTS", tiny(artifacts.EXPERIMENTS))
    monkeypatch.setenv("DIFFUSION_DATA", str(small_mnist_root))
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    for builder in (samplers, guidance_sweep):  # compiling costs a minute; inference.py has its own tests
        monkeypatch.setattr(builder, "inference_network", lambda model, device, compile=False, bfloat16=True: model)
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
    assert artifacts.build("mnist-samplers", "cpu", force=True) is True
    assert torch.equal(first, load_file(run / "ddim-eta0-2_0.safetensors")["samples"])


def test_the_conditional_model_builds_with_the_recipe_of_its_device_and_takes_labels(tiny_folder):
    assert artifacts.build("mnist-cfg", "cpu") is True
    cfg = artifacts.load("mnist-cfg")
    assert cfg.status == "ok" and cfg.meta["cpu_made"] and cfg.meta["num_classes"] == 10
    assert cfg.model.num_classes == 10 and cfg.model.input.out_channels == 8  # the cpu recipe, not the cuda one
    assert cfg.meta["steps"] == 3 and cfg.image_shape == (1, 28, 28) and cfg.schedule.T == 10
    grid = load_file(tiny_folder / "mnist-cfg" / "samples.safetensors")
    assert grid["grid"].shape == (100, 1, 28, 28) and grid["labels"].tolist() == [
        k for k in range(10) for _ in range(10)
    ]
    assert 0 <= cfg.metrics["grid_agreement"] <= 1
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0, 5, 9])
    assert cfg.model(x, t, torch.tensor([0, 9, 10])).shape == (3, 1, 28, 28)
    # no label is the null label: the unconditional model
    torch.testing.assert_close(cfg.model(x, t), cfg.model(x, t, torch.full((3,), 10)))
    with pytest.raises(ValueError, match="label 11 out of range"):
        cfg.model(x, t, torch.tensor([0, 1, 11]))
    assert cfg.sample(2, steps=3, labels=[3, 4]).shape == (2, 1, 28, 28)
    # guided sampling is the sampler run on the classifier-free guided model
    guided = cfg.sample(2, sampler="ddim", steps=3, labels=[3, 4], guidance_scale=2.0, seed=5)
    model = classifier_free(inference_network(cfg.model, "cpu"), torch.tensor([3, 4]), 2.0)
    x = sample(model, cfg.schedule, (2, 1, 28, 28), sampler="ddim", num_steps=3,
               generator=torch.Generator().manual_seed(5))  # fmt: skip
    torch.testing.assert_close(guided, x.clamp(-1, 1))
    with pytest.raises(ValueError, match="guidance_scale needs labels"):
        cfg.sample(2, steps=3, guidance_scale=2.0)
    artifacts.build("mnist-ddpm", "cpu")
    with pytest.raises(ValueError, match="labels need a conditional model; this one was trained without labels"):
        artifacts.load("mnist-ddpm").sample(2, steps=3, labels=[1, 2], guidance_scale=2.0)


def test_the_noisy_classifier_builds_and_reports_its_accuracy_at_each_step(tiny_folder):
    assert artifacts.build("mnist-noisy-classifier", "cpu") is True
    noisy = artifacts.load("mnist-noisy-classifier")
    assert noisy.status == "ok" and noisy.meta["cpu_made"]
    assert list(noisy.metrics["test_accuracy_by_step"]) == ["0", "9"]
    assert all(0 <= accuracy <= 1 for accuracy in noisy.metrics["test_accuracy_by_step"].values())
    assert noisy.model(torch.zeros(2, 1, 28, 28), torch.tensor([0, 9])).shape == (2, 10)


def test_the_guidance_sweep_draws_every_setting_from_the_same_noises_and_resumes(tiny_folder):
    assert artifacts.build("mnist-cfg", "cpu") and artifacts.build("mnist-noisy-classifier", "cpu")
    run = tiny_folder / "mnist-guidance" / "run"
    assert artifacts.build("mnist-guidance", "cpu", time_budget=0) is False
    assert not list(run.glob("*_*.safetensors")) and artifacts.status("mnist-guidance")[0] == "missing"
    assert artifacts.build("mnist-guidance", "cpu") is True
    # a build that lost a chunk draws only that chunk again, the same images
    first = load_file(tiny_folder / "mnist-guidance" / "samples.safetensors")
    lost = run / "free-3_1.safetensors"
    kept = {file: file.stat().st_mtime_ns for file in run.glob("*_*.safetensors") if file != lost}
    lost.unlink()
    (tiny_folder / "mnist-guidance" / "meta.json").unlink()
    assert artifacts.build("mnist-guidance", "cpu") is True
    assert all(file.stat().st_mtime_ns == mtime for file, mtime in kept.items()) and len(kept) == 7
    again = load_file(tiny_folder / "mnist-guidance" / "samples.safetensors")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    sweep = artifacts.load("mnist-guidance")
    settings = ["free-1", "free-3", "classifier-2", "interval-3"]
    assert list(sweep.metrics["settings"]) == settings and sweep.metrics["images_per_class"] == 2
    stored = load_file(tiny_folder / "mnist-guidance" / "samples.safetensors")
    assert stored["labels"].tolist() == list(range(10)) * 2
    assert all(
        stored[setting].shape == (20, 1, 28, 28) and stored[setting].dtype == torch.uint8 for setting in settings
    )
    assert all(
        0 <= row["agreement"] <= 1 and row["seconds_per_image"] > 0 for row in sweep.metrics["settings"].values()
    )
    # the same noises for every setting: an interval of noise levels that no step reaches leaves the conditional
    # model (classifier-free guidance at scale 1), image for image
    assert torch.equal(stored["interval-3"], stored["free-1"])


def test_the_judge_features_are_those_of_the_judge(tiny_folder):
    assert artifacts.build("mnist-judge-features", "cpu") is True
    stored = artifacts.load("mnist-judge-features").tensors("features.safetensors")
    judge = artifacts.load("mnist-classifier").model
    sets = {
        "test": data.mnist_images(train=False)[0],
        "train": data.mnist_images(train=True)[0][:20],
        "mnist-ddpm": data.from_bytes(artifacts.load("mnist-ddpm").tensors("samples.safetensors")["samples"]),
    }
    for name, images in sets.items():
        features, probabilities = metrics.classify(judge, images)
        assert (
            stored[f"{name}/features"].dtype == torch.float16 and stored[f"{name}/probabilities"].dtype == torch.float32
        )
        # float16 keeps 11 significant bits: relative rounding at most 2^-11, and below 2^-14 (its subnormals) an
        # absolute rounding of at most half their spacing, 2^-25
        torch.testing.assert_close(stored[f"{name}/features"].float(), features, rtol=2**-11, atol=2**-25)
        torch.testing.assert_close(stored[f"{name}/probabilities"], probabilities, rtol=0, atol=0)


def test_the_guidance_measures_are_those_of_the_sweep_against_the_same_reference(tiny_folder, monkeypatch):
    sweep = artifacts.EXPERIMENTS["mnist-guidance"]
    four_per_digit = {**sweep.config, "per_class": {"cuda": 4, "cpu": 4}}  # KID needs three images of a digit
    monkeypatch.setitem(artifacts.EXPERIMENTS, sweep.name, dataclasses.replace(sweep, config=four_per_digit))
    assert artifacts.build("mnist-guidance-measures", "cpu") is True
    found = artifacts.load("mnist-guidance-measures").metrics
    sweep = artifacts.load("mnist-guidance")
    assert found["accuracy"]["steps"] == [0, 9] and found["images_per_class"] == 4
    assert all(len(found["accuracy"][name]) == 2 for name in ("noise-conditional classifier", "judge"))
    assert list(found["settings"]) == list(sweep.metrics["settings"])
    test_images, test_labels = data.mnist_images(train=False)
    floor_rows, reference_rows = floor_and_reference_rows(test_labels, 4, 5, torch.Generator().manual_seed(3))
    assert len(found["floors"]) == len(floor_rows)
    stored = sweep.tensors("samples.safetensors")
    again = per_class_measures(data.from_bytes(stored["free-3"]), stored["labels"],
                               artifacts.load("mnist-classifier").model, test_images[reference_rows],
                               test_labels[reference_rows], data.mnist_images(train=True)[0])  # fmt: skip
    assert again == found["settings"]["free-3"]


def test_the_patch_machine_is_calibrated_and_samples_from_the_stored_noise(tiny_folder):
    assert artifacts.build("mnist-patch-machine", "cpu") is True
    stored = artifacts.load("mnist-patch-machine")
    results, found, config = stored.tensors("results.safetensors"), stored.metrics, stored.meta["config"]
    ddpm = artifacts.load("mnist-ddpm")
    assert results["agreement"].shape == (2, 2) and results["calibrated_steps"].tolist() == [0, 6]
    assert results["machine"].shape == results["network"].shape == results["optimal"].shape == (2, 1, 28, 28)
    sizes, last = patch_machine.patch_sizes_to_use(results["agreement"], [3, 5])
    assert found["sizes_used"] == sizes and found["last_agreeing"] == last
    # one calibration step recomputed alone gives the stored agreement
    clean = data.mnist_images(train=False)[0][:2]
    noise = patch_machine.calibration_noise(config, 1, clean.shape)
    machine = {5: optimal.PatchDenoiser(data.mnist_images(train=True)[0][:6], ddpm.schedule, 5, border=-1.0)}
    again = patch_machine.agreement_at(6, noise, clean, ddpm.model, machine)
    assert again[5] == pytest.approx(results["agreement"][1, 1].item(), rel=1e-6)
    network = sample(ddpm.model, ddpm.schedule, (2, 1, 28, 28), sampler="ddim", num_steps=4, x_T=results["x_T"])
    torch.testing.assert_close(results["network"], network)


def test_the_patch_size_rule_keeps_the_best_size_while_one_explains_half_then_the_largest():
    agreement = torch.tensor([[0.9, 0.8, 0.1], [0.4, 0.7, 0.6], [0.1, 0.3, 0.45], [0.2, 0.6, 0.1]])
    # steps 0, 1 and 3 reach 0.5; step 2 does not, but a noisier one does: every step up to the noisiest that does
    # keeps its best size
    assert patch_machine.patch_sizes_to_use(agreement, [3, 7, 11]) == ([3, 7, 11, 7], 3)
    assert patch_machine.patch_sizes_to_use(agreement[:3], [3, 7, 11]) == ([3, 7, 11], 1)


def test_the_toy_ddpms_train_one_network_per_schedule_reproducibly(tiny_folder):
    assert artifacts.build("roll-ddpm", "cpu") is True
    stored = artifacts.load("roll-ddpm")
    assert stored.status == "ok" and list(stored.model) == ["linear", "cosine"]
    losses = stored.history()
    assert [len(losses[name]) for name in ("linear", "cosine")] == [5, 5]
    assert stored.model["linear"](torch.zeros(3, 2), torch.tensor([0, 1, 2])).shape == (3, 2)
    first = {k: v.clone() for k, v in stored.model.state_dict().items()}
    (tiny_folder / "roll-ddpm" / "meta.json").unlink()
    assert artifacts.build("roll-ddpm", "cpu") is True
    again = artifacts.load("roll-ddpm")
    assert all(torch.equal(first[k], v) for k, v in again.model.state_dict().items())
    assert again.history() == losses
