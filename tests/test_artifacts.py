"""Artifacts: building (resumable, dependencies first), what a build writes, loading, integrity, staleness and the
command line.

The two experiments are shrunk to a few steps (T = 10) and read a small MNIST of a few hundred real images, so that a
whole build runs on the CPU in seconds.
"""

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import diffusion_lib.artifacts as artifacts
from diffusion_lib import checkpoints, store

BUILD_HINT = "python -m diffusion_lib.artifacts build"
TRAIN_IMAGES = 256  # the small MNIST of conftest.py


def tiny_experiments():
    real = artifacts.EXPERIMENTS
    classifier, ddpm = real["mnist-classifier"], real["mnist-ddpm"]
    train = {
        **ddpm.config["train"],
        **dict(channels=8, channel_mults=[1, 2], attention_resolutions=[7], steps=3, batch_size=16, log_every=1, T=10),
    }
    evaluation = {**ddpm.config["evaluation"], "num_samples": 8, "batch_size": 4, "sampling_steps": 3}
    return {
        classifier.name: dataclasses.replace(classifier, config={**classifier.config, "epochs": 1}),
        ddpm.name: dataclasses.replace(ddpm, config={"train": train, "evaluation": evaluation}),
    }


def ddpm_changed(**parts):
    """The tiny experiments, with entries of the DDPM's "train" or "evaluation" config changed."""
    changed = tiny_experiments()
    ddpm = changed["mnist-ddpm"]
    config = {**ddpm.config, **{part: {**ddpm.config[part], **values} for part, values in parts.items()}}
    changed["mnist-ddpm"] = dataclasses.replace(ddpm, config=config)
    return changed


def shrink(patch, small_mnist_root, folder):
    patch.setattr(artifacts, "EXPERIMENTS", tiny_experiments())
    patch.setenv("DIFFUSION_DATA", str(small_mnist_root))
    patch.setenv("DIFFUSION_ARTIFACTS", str(folder))
    patch.setenv("TQDM_DISABLE", "1")
    patch.delenv("GIT_COMMIT", raising=False)


@pytest.fixture
def fresh(tmp_path, monkeypatch, small_mnist_root):
    """An empty artifacts folder and the tiny experiments."""
    shrink(monkeypatch, small_mnist_root, tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_mnist_root):
    """One artifacts folder in which mnist-ddpm (and so mnist-classifier) was built: first with a time budget of 0,
    which stops cleanly in the classifier it needs; then the classifier alone; then mnist-ddpm with a budget of 0
    again, which stops after its first checkpoint; then to completion. Yields (folder, what was observed)."""
    folder = tmp_path_factory.mktemp("artifacts")
    with pytest.MonkeyPatch.context() as patch:
        shrink(patch, small_mnist_root, folder)
        calls = []
        for name, exp in artifacts.EXPERIMENTS.items():

            def recording(*args, original=exp.build, name=name):
                calls.append(name)
                return original(*args)

            artifacts.EXPERIMENTS[name] = dataclasses.replace(exp, build=recording)
        observed = {"before": {name: artifacts.status(name) for name in artifacts.EXPERIMENTS}}
        observed["classifier_budget_0"] = artifacts.build("mnist-ddpm", "cpu", time_budget=0)
        observed["after_classifier_budget_0"] = {name: artifacts.status(name) for name in artifacts.EXPERIMENTS}
        observed["classifier"] = artifacts.build("mnist-classifier", "cpu")
        observed["budget_0"] = artifacts.build("mnist-ddpm", "cpu", time_budget=0)
        observed["after_budget_0"] = {name: artifacts.status(name) for name in artifacts.EXPERIMENTS}
        observed["checkpoint_meta"] = checkpoints.load(folder / "mnist-ddpm" / "run" / "checkpoint.safetensors")[1]
        observed["calls_budget_0"] = list(calls)
        observed["complete"] = artifacts.build("mnist-ddpm", "cpu")
        observed["calls"] = list(calls)
        yield folder, observed


@pytest.fixture
def in_built(built, monkeypatch, small_mnist_root):
    """The built folder, with the tiny experiments in place again (for tests that patch them further)."""
    folder, _ = built
    shrink(monkeypatch, small_mnist_root, folder)
    return folder


def test_missing_artifacts(fresh):
    assert store.root() == fresh
    for name in artifacts.EXPERIMENTS:
        assert artifacts.status(name) == ("missing", None)
        with pytest.raises(FileNotFoundError, match=f"{BUILD_HINT} {name}") as error:
            artifacts.load(name)
        assert "meta.json" in str(error.value) and "DIFFUSION_ARTIFACTS" in str(error.value)
    with pytest.raises(ValueError, match="unknown artifact 'mnist-gan'"):
        artifacts.load("mnist-gan")
    with pytest.raises(ValueError, match="unknown artifact 'mnist-gan'"):
        artifacts.status("mnist-gan")


def test_time_budget_stops_cleanly_and_the_build_resumes(built):
    folder, observed = built
    missing = ("missing", None)
    assert observed["before"] == dict.fromkeys(artifacts.EXPERIMENTS, missing)
    assert observed["classifier_budget_0"] is False  # stopped in what it needs first
    assert observed["after_classifier_budget_0"] == dict.fromkeys(artifacts.EXPERIMENTS, missing)
    assert observed["classifier"] is True
    assert observed["budget_0"] is False
    assert observed["after_budget_0"] == {
        **dict.fromkeys(artifacts.EXPERIMENTS, missing),
        "mnist-classifier": ("ok", "cpu"),
    }
    assert observed["checkpoint_meta"]["step"] == 0
    assert observed["complete"] is True
    # the classifier is finished once, then handed over without another build
    assert observed["calls"] == ["mnist-classifier", "mnist-classifier", "mnist-ddpm", "mnist-ddpm"]


def test_build_needs_the_classifier_first_and_hands_it_over(fresh, monkeypatch):
    """With no time budget the dependency is built first, then the model, which receives it loaded."""
    received = []

    def build_ddpm(exp, folder, device, time_budget, needed):
        received.append(needed)
        store.save_weights(folder, exp.make_model(exp, {"image_shape": [1, 28, 28]}).state_dict())
        return {"seconds": 0.0, "image_shape": [1, 28, 28]}

    ddpm = artifacts.EXPERIMENTS["mnist-ddpm"]
    monkeypatch.setitem(artifacts.EXPERIMENTS, "mnist-ddpm", dataclasses.replace(ddpm, build=build_ddpm))
    assert artifacts.build("mnist-ddpm", "cpu") is True
    assert artifacts.status("mnist-classifier") == ("ok", "cpu") and artifacts.status("mnist-ddpm") == ("ok", "cpu")
    assert list(received[0]) == ["mnist-classifier"]
    assert received[0]["mnist-classifier"].model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    classifier_meta = json.loads((fresh / "mnist-classifier" / "meta.json").read_text())
    assert classifier_meta["steps"] == TRAIN_IMAGES // 128  # one epoch of batches of 128
    built_at = (fresh / "mnist-classifier" / "meta.json").stat().st_mtime_ns
    artifacts.build("mnist-ddpm", "cpu", force=True)
    assert (fresh / "mnist-classifier" / "meta.json").stat().st_mtime_ns == built_at  # not built again


def test_build_writes_weights_meta_and_provenance(built):
    folder, _ = built
    path = folder / "mnist-ddpm"
    expected_files = {"weights.safetensors", "metrics.json", "samples.safetensors", "samples.png", "history.json"}
    assert expected_files | {"meta.json", "run"} <= {p.name for p in path.iterdir()}
    meta = json.loads((path / "meta.json").read_text())
    exp = tiny_experiments()["mnist-ddpm"]
    assert meta["config_hash"] == store.config_hash(exp.config)
    assert meta["source_hashes"] == store.source_hashes(exp.sources)
    assert meta["config"] == json.loads(json.dumps(exp.config))
    assert set(meta["files"]) == expected_files
    assert all(meta["files"][name] == store.file_hash(path / name) for name in expected_files)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=store.PACKAGE)
    assert meta["git_commit"] == head.stdout.strip()
    assert meta["device"] == "cpu" and meta["device_name"] == "CPU" and meta["cpu_made"] is True
    assert meta["steps"] == 3
    assert isinstance(meta["final_loss"], float) and 0 < meta["final_loss"] < 10
    assert meta["seconds"] > 0 and meta["train_seconds"] > 0 and meta["seconds"] >= meta["train_seconds"]
    assert meta["image_shape"] == [1, 28, 28]
    assert meta["parameters"] == sum(v.numel() for v in load_file(path / "weights.safetensors").values())
    history = json.loads((path / "history.json").read_text())
    assert [record["step"] for record in history] == [1, 2, 3]
    assert history[-1]["loss"] == meta["final_loss"]

    classifier_meta = json.loads((folder / "mnist-classifier" / "meta.json").read_text())
    assert classifier_meta["device"] == "cpu" and classifier_meta["steps"] == TRAIN_IMAGES // 128
    classifier_metrics = json.loads((folder / "mnist-classifier" / "metrics.json").read_text())
    assert 0 <= classifier_metrics["test_accuracy"] <= 1 and len(classifier_metrics["epoch_losses"]) == 1


def test_build_writes_metrics_and_samples(built):
    folder, _ = built
    path = folder / "mnist-ddpm"
    found = json.loads((path / "metrics.json").read_text())
    assert found["num_samples"] == 8 and found["sampling_steps"] == 3
    assert 0 <= found["confident_fraction"] <= 1
    assert len(found["class_fractions"]) == 10
    assert sum(found["class_fractions"]) == pytest.approx(1, abs=1e-12)
    assert all(8 * fraction == round(8 * fraction) for fraction in found["class_fractions"])  # counts of 8 samples
    assert math.isfinite(found["fid"]) and found["fid"] >= 0
    assert math.isfinite(found["fid_floor"]) and found["fid_floor"] >= 0
    assert found["median_nearest_train_distance"] > 0 and found["sampling_seconds"] > 0

    stored = load_file(path / "samples.safetensors")
    assert stored.keys() == {"samples", "trajectory"}
    samples = stored["samples"]
    assert samples.dtype == torch.uint8 and samples.shape == (8, 1, 28, 28)
    assert samples.float().std() > 0
    chunks = [load_file(path / "run" / f"samples_{chunk}.safetensors")["samples"] for chunk in range(2)]
    assert torch.equal(samples, torch.cat(chunks))
    trajectory = stored["trajectory"]
    assert trajectory.dtype == torch.float16 and trajectory.shape == (11, 10, 1, 28, 28)
    assert 0.8 < trajectory[0].float().std() < 1.2  # x_T ~ N(0, I)
    assert not torch.equal(trajectory[0], trajectory[-1])
    with Image.open(path / "samples.png") as image:
        assert image.size == (8 * 30 + 2, 30 + 2)  # one row of 8 images of 28 pixels, 2 pixels of padding


def test_load_the_built_model(in_built):
    artifact = artifacts.load("mnist-ddpm")
    assert artifact.status == "ok"
    assert artifact.schedule.T == 10 and artifact.image_shape == (1, 28, 28)
    assert artifact.meta["steps"] == 3 and artifact.metrics["num_samples"] == 8
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 5, 9])
    eps = artifact.model(x, t)
    assert eps.shape == x.shape and eps.dtype == torch.float32 and torch.isfinite(eps).all()
    assert torch.equal(eps, artifact.model(x, t))  # eval mode: no dropout
    assert artifact.history()[-1]["step"] == 3
    assert artifact.tensors("samples.safetensors")["samples"].shape == (8, 1, 28, 28)

    weights = load_file(in_built / "mnist-ddpm" / "weights.safetensors")
    assert weights and all(v.dtype == torch.float16 for v in weights.values())
    ema, _ = checkpoints.load(in_built / "mnist-ddpm" / "run" / "ema.safetensors")
    assert weights.keys() == ema.keys()
    assert all(torch.equal(weights[k], ema[k].half()) for k in weights)  # the EMA weights, rounded
    network = artifact.model  # eps prediction: the network itself
    state = network.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], weights[k].float()) for k in weights)
    assert not network.training

    classifier = artifacts.load("mnist-classifier")
    logits = classifier.model(x)
    assert logits.shape == (3, 10) and classifier.schedule is None


def test_changed_config_makes_the_artifact_stale(in_built, monkeypatch):
    assert artifacts.status("mnist-ddpm") == ("ok", "cpu")
    monkeypatch.setattr(artifacts, "EXPERIMENTS", ddpm_changed(train={"lr": 5e-4}))
    assert artifacts.status("mnist-ddpm") == ("stale: config changed", "cpu")
    assert artifacts.status("mnist-classifier") == ("ok", "cpu")
    with pytest.raises(ValueError, match=f"another config.*{BUILD_HINT} mnist-ddpm"):
        artifacts.load("mnist-ddpm")


def test_changed_source_is_named_in_the_status(in_built, monkeypatch):
    original = store.source_text
    edited = {"losses.py:denoising_loss", "metrics.py:fid"}
    monkeypatch.setattr(store, "source_text", lambda entry: original(entry) + "\n# edited" * (entry in edited))
    assert artifacts.status("mnist-ddpm") == (
        "stale: source changed in losses.py:denoising_loss, metrics.py:fid",
        "cpu",
    )
    assert artifacts.status("mnist-classifier") == ("ok", "cpu")  # it depends on neither
    loaded = artifacts.load("mnist-ddpm")  # stale source is reported, not refused
    assert loaded.status.startswith("stale: source changed in losses.py:denoising_loss")


def test_source_hashes_follow_single_definitions(in_built, tmp_path, monkeypatch):
    """The classifier depends on one definition in fit.py (classifier_epoch); editing another definition there
    leaves it current."""
    package = tmp_path / "diffusion_lib"
    shutil.copytree(store.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(store, "PACKAGE", package)
    assert artifacts.status("mnist-ddpm") == ("ok", "cpu") and artifacts.status("mnist-classifier") == ("ok", "cpu")

    fit_py = package / "fit.py"
    text = fit_py.read_text()
    edited = text.replace("losses.append(loss.item())", "losses.append(float(loss))")
    assert edited != text
    fit_py.write_text(edited)
    assert artifacts.status("mnist-classifier") == ("ok", "cpu")  # fit (of chapter 3) defines neither artifact

    edited_again = edited.replace("total += loss.detach()", "total = total + loss.detach()")
    assert edited_again != edited
    fit_py.write_text(edited_again)
    assert artifacts.status("mnist-classifier") == ("stale: source changed in fit.py:classifier_epoch", "cpu")


def random_bytes(data):
    return torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def flipped(data):
    """4 KB of the tensor data (the end of the file) with every bit flipped."""
    return data[:-8192] + bytes(255 - b for b in data[-8192:-4096]) + data[-4096:]


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "random bytes": lambda data: bytes(random_bytes(data).tolist()),
    "a Git LFS pointer": lambda data: b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n",
    "4 KB flipped inside the tensors": flipped,
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_weights_file_is_named_with_the_remedy(rebuilt, damage):
    weights = rebuilt / "mnist-ddpm" / "weights.safetensors"
    weights.write_bytes(DAMAGE[damage](weights.read_bytes()))
    assert artifacts.status("mnist-ddpm") == ("damaged: weights.safetensors", "cpu")
    with pytest.raises(ValueError, match="damaged: weights.safetensors") as error:
        artifacts.load("mnist-ddpm")
    assert str(weights.parent.resolve()) in str(error.value)
    assert "DIFFUSION_ARTIFACTS" in str(error.value) and f"{BUILD_HINT} mnist-ddpm" in str(error.value)


def test_a_truncated_meta_file_is_damage_not_a_crash(rebuilt, capsys):
    meta = rebuilt / "mnist-ddpm" / "meta.json"
    meta.write_bytes(meta.read_bytes()[:40])
    assert artifacts.status("mnist-ddpm") == ("damaged: meta.json", None)
    artifacts.main(["status"])
    assert ["mnist-ddpm", "damaged:", "meta.json"] in [line.split() for line in capsys.readouterr().out.splitlines()]
    with pytest.raises(ValueError, match="artifact 'mnist-ddpm' is damaged: meta.json in"):
        artifacts.load("mnist-ddpm")


def test_a_missing_or_changed_metrics_file_is_caught(rebuilt):
    (rebuilt / "mnist-ddpm" / "metrics.json").unlink()
    assert artifacts.status("mnist-ddpm") == ("damaged: metrics.json", "cpu")
    (rebuilt / "mnist-ddpm" / "metrics.json").write_text("{}")
    assert artifacts.status("mnist-ddpm") == ("damaged: metrics.json", "cpu")


def test_status_command_lists_every_experiment(in_built, capsys):
    artifacts.main(["status"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(artifacts.EXPERIMENTS) == 2
    for line, name in zip(lines, artifacts.EXPERIMENTS, strict=True):
        assert line.split()[0] == name
        assert line.endswith("ok (built on cpu)")


def test_status_command_on_a_fresh_folder(fresh, capsys):
    artifacts.main(["status"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [["mnist-classifier", "missing"], ["mnist-ddpm", "missing"]]
    with pytest.raises(SystemExit):
        artifacts.main(["build", "mnist-gan"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture
def rebuilt(in_built, tmp_path):
    """The built folder, for tests that change it; put back as it was afterwards (in place, not as a copy
    elsewhere: a training run resumes only in the folder where it started)."""
    backup = tmp_path / "backup"
    shutil.copytree(in_built, backup)
    yield in_built
    shutil.rmtree(in_built)
    shutil.copytree(backup, in_built)


def test_an_artifact_that_is_ok_is_not_built_again_unless_forced(rebuilt, capsys):
    meta = rebuilt / "mnist-ddpm" / "meta.json"
    before = meta.read_bytes(), meta.stat().st_mtime_ns
    assert artifacts.build("mnist-ddpm", "cpu") is True
    assert (meta.read_bytes(), meta.stat().st_mtime_ns) == before
    assert "mnist-ddpm is ok (built on cpu); nothing to do (--force rebuilds it)" in capsys.readouterr().out
    assert artifacts.build("mnist-ddpm", "cpu", force=True) is True
    assert meta.stat().st_mtime_ns != before[1] and artifacts.status("mnist-ddpm") == ("ok", "cpu")


def test_a_gpu_made_artifact_is_not_replaced_by_a_cpu_build_unless_forced(rebuilt, monkeypatch, capsys):
    stored = json.loads((rebuilt / "mnist-ddpm" / "meta.json").read_text())
    (rebuilt / "mnist-ddpm" / "meta.json").write_text(json.dumps({**stored, "device": "cuda"}))
    monkeypatch.setattr(artifacts, "EXPERIMENTS", ddpm_changed(train={"lr": 5e-4}))  # stale, so a build would run
    message = "mnist-ddpm was built on a GPU and is stale: config changed; a build on cpu would replace it"
    with pytest.raises(ValueError, match=message):
        artifacts.build("mnist-ddpm", "cpu")
    with pytest.raises(SystemExit) as stopped:
        artifacts.main(["build", "mnist-ddpm", "--device", "cpu"])
    assert stopped.value.code == 2 and "build it on a GPU, or pass --force" in capsys.readouterr().err
    assert json.loads((rebuilt / "mnist-ddpm" / "meta.json").read_text())["device"] == "cuda"  # untouched
    assert artifacts.build("mnist-ddpm", "cpu", force=True) is True


@pytest.mark.parametrize("budget", ["-3", "nan", "inf", "soon"])
def test_a_time_budget_is_a_finite_number_of_seconds(fresh, budget, capsys):
    with pytest.raises(SystemExit) as stopped:
        artifacts.main(["build", "mnist-ddpm", f"--time-budget={budget}"])
    assert stopped.value.code == 2 and "argument --time-budget:" in capsys.readouterr().err.splitlines()[-1]
    assert artifacts.status("mnist-ddpm") == ("missing", None)


def test_the_rebuild_command_rebuilds_after_a_training_config_change(rebuilt, monkeypatch):
    monkeypatch.setattr(artifacts, "EXPERIMENTS", ddpm_changed(train={"lr": 5e-4}))
    assert artifacts.status("mnist-ddpm")[0] == "stale: config changed"
    assert artifacts.build("mnist-ddpm", "cpu") is True
    assert artifacts.status("mnist-ddpm") == ("ok", "cpu")


def test_a_rebuild_after_an_evaluation_change_draws_new_samples(rebuilt, monkeypatch):
    path = rebuilt / "mnist-ddpm"
    old = load_file(path / "samples.safetensors")["samples"]
    monkeypatch.setattr(artifacts, "EXPERIMENTS", ddpm_changed(evaluation={"sampling_steps": 2, "seed": 7}))
    assert artifacts.build("mnist-ddpm", "cpu") is True
    assert artifacts.status("mnist-ddpm") == ("ok", "cpu")
    assert json.loads((path / "metrics.json").read_text())["sampling_steps"] == 2
    assert not torch.equal(load_file(path / "samples.safetensors")["samples"], old)


def test_restamping_records_the_current_sources_and_a_note_and_refuses_a_damaged_artifact(
    in_built, tmp_path, monkeypatch
):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    import restamp_artifacts

    copy = tmp_path / "artifacts"
    shutil.copytree(in_built, copy, ignore=shutil.ignore_patterns("run"))
    monkeypatch.setenv("DIFFUSION_ARTIFACTS", str(copy))
    original = store.source_text
    monkeypatch.setattr(store, "source_text", lambda entry: original(entry) + "\n# moved" * (entry == "metrics.py:fid"))
    assert artifacts.status("mnist-ddpm")[0] == "stale: source changed in metrics.py:fid"
    assert restamp_artifacts.restamp("mnist-ddpm", "fid moved, nothing recomputed") == ["metrics.py:fid"]
    assert artifacts.status("mnist-ddpm")[0] == "ok"
    assert store.read_meta(copy / "mnist-ddpm")["revisions"][-1].endswith(": fid moved, nothing recomputed")
    (copy / "mnist-ddpm" / "metrics.json").write_text("{}")
    with pytest.raises(SystemExit, match="damaged: metrics.json"):
        restamp_artifacts.restamp("mnist-ddpm", "a damaged file is not a moved source")
