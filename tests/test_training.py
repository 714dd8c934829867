"""The training engine: exact resume after a kill or a time budget, config checks on resume, DDP, the command line,
the batch order, the learning rate, the denoising targets and the checkpoint helpers.

Runs are tiny U-Nets on scikit-learn's 8 x 8 digits, on the CPU.
"""

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffusion_lib.checkpoints as checkpoints
import diffusion_lib.engine as train_module
from diffusion_lib.engine import (
    TrainConfig,
    build_unet,
    epoch_batches,
    train,
    warmup_cosine_learning_rate,
)
from diffusion_lib.losses import denoising_loss
from diffusion_lib.parameterization import PREDICTIONS, as_eps_model, prediction_target
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.train import parse_config

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    dataset="digits",
    channels=8,
    channel_mults=(1, 2),
    attention_resolutions=(4,),
    batch_size=16,
    steps=6,
    warmup=2,
    log_every=1,
    device="cpu",
)


def config(out, **changes):
    """The tiny run of these tests, with dropout (so that resuming must restore the global generator)."""
    return TrainConfig(**{**TINY, "dropout": 0.1, "checkpoint_every": 2, "out": str(out), **changes})


def saved(out):
    """(model and EMA tensors, meta) of the checkpoint in out."""
    tensors, meta = checkpoints.load(Path(out) / "checkpoint.safetensors")
    weights = {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}
    return weights, meta


def losses(out):
    return [(record["step"], record["loss"]) for record in json.loads((Path(out) / "history.json").read_text())]


def assert_same_weights(out1, out2):
    weights1, _ = saved(out1)
    weights2, _ = saved(out2)
    assert weights1.keys() == weights2.keys()
    assert any(k.startswith("model.") for k in weights1) and any(k.startswith("ema.") for k in weights1)
    different = [k for k in weights1 if not torch.equal(weights1[k], weights2[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def differs(out1, out2):
    weights1, _ = saved(out1)
    weights2, _ = saved(out2)
    return any(not torch.equal(weights1[k], weights2[k]) for k in weights1)


def kill_at_step(monkeypatch, step):
    """Make train raise inside the given step (1-based), after that step's EMA update, as a killed process would."""
    original, calls = train_module.ema_update, []

    def dying(*args):
        original(*args)
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError(f"killed at step {step}")

    monkeypatch.setattr(train_module, "ema_update", dying)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("run_a")
    summary = train(config(out))
    assert summary["complete"] and summary["steps"] == summary["total_steps"] == 6
    return out


def test_resume_after_a_kill_is_exact(run_a, tmp_path, monkeypatch):
    out = tmp_path / "b"
    kill_at_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="killed at step 5"):
        train(config(out))
    monkeypatch.undo()
    _, meta = saved(out)
    assert meta["step"] == 4  # the last checkpoint (every 2 steps) before the kill
    assert [record["step"] for record in meta["history"]] == [1, 2, 3, 4]
    assert not (out / "ema.safetensors").exists() and not (out / "history.json").exists()

    summary = train(config(out))
    assert summary["complete"] and summary["steps"] == 6
    assert_same_weights(run_a, out)
    assert losses(run_a) == losses(out)
    assert [step for step, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    ema_a, _ = checkpoints.load(run_a / "ema.safetensors")
    ema_b, _ = checkpoints.load(out / "ema.safetensors")
    assert ema_a.keys() == ema_b.keys() and all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_the_resume_check_is_sensitive(run_a, tmp_path, monkeypatch):
    """Another seed gives other weights and losses; so does a resume that does not restore the dropout generator."""
    other_seed = tmp_path / "c"
    train(config(other_seed, seed=1))
    assert differs(run_a, other_seed)
    assert losses(run_a) != losses(other_seed)

    no_rng = tmp_path / "d"
    kill_at_step(monkeypatch, 5)
    with pytest.raises(RuntimeError):
        train(config(no_rng))
    monkeypatch.undo()
    monkeypatch.setattr(checkpoints, "restore_rng_states", lambda states, device: None)
    train(config(no_rng))
    assert differs(run_a, no_rng)
    assert losses(run_a)[:4] == losses(no_rng)[:4]
    assert losses(run_a)[4:] != losses(no_rng)[4:]


def test_time_budget_stops_cleanly_and_resumes(run_a, tmp_path):
    out = tmp_path / "budget"
    summary = train(config(out, time_budget=0))
    assert summary["complete"] is False
    assert summary["steps"] == 0 and summary["total_steps"] == 6
    assert summary["final_loss"] is None
    _, meta = saved(out)
    assert meta["step"] == 0 and meta["history"] == []

    summary = train(config(out, time_budget=None))
    assert summary["complete"] is True and summary["steps"] == 6
    assert_same_weights(run_a, out)
    assert losses(run_a) == losses(out)


def test_resume_rejects_another_defining_config(tmp_path):
    out = tmp_path / "run"
    train(config(out, time_budget=0))
    with pytest.raises(ValueError, match="another config"):
        train(config(out, lr=1e-3))
    with pytest.raises(ValueError, match="another config"):
        train(config(out, dropout=0.0))
    assert saved(out)[1]["step"] == 0  # the refused runs left the checkpoint alone

    summary = train(config(out, log_every=2, checkpoint_every=3))
    assert summary["complete"] and summary["steps"] == 6
    assert [step for step, _ in losses(out)] == [2, 4, 6]


def test_a_moved_run_folder_resumes(run_a, tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    train(config(before, time_budget=0))
    before.rename(after)
    train(config(after))
    assert_same_weights(run_a, after)


def test_resume_logs_the_same_losses_when_checkpoints_fall_inside_a_log_window(tmp_path, monkeypatch):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train(config(reference, log_every=3))
    kill_at_step(monkeypatch, 5)
    with pytest.raises(RuntimeError):
        train(config(resumed, log_every=3))
    monkeypatch.undo()
    train(config(resumed, log_every=3))
    assert_same_weights(reference, resumed)  # the weights do resume exactly
    assert losses(reference) == losses(resumed)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_with_two_processes_matches_one_process(tmp_path):
    options = {
        "dataset": "digits",
        "channels": "8",
        "channel_mults": "1,2",
        "attention_resolutions": "4",
        "device": "cpu",
        "dropout": "0",
        "steps": "3",
        "batch_size": "16",
        "warmup": "1",  # the full learning rate (2e-4) from the first step
    }
    argv = [part for name, value in options.items() for part in (f"--{name}", value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "diffusion_lib.train", *argv, "--out", str(tmp_path / "ddp")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # from process 0 only: the processes' lines would interleave
    assert summaries[0]["complete"] and summaries[0]["steps"] == 3

    single = parse_config([*argv, "--out", str(tmp_path / "single")])
    summary = train(single)
    assert summary["complete"] and summary["steps"] == 3

    ddp_weights, _ = saved(tmp_path / "ddp")
    single_weights, _ = saved(tmp_path / "single")
    assert ddp_weights.keys() == single_weights.keys()
    gap = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in ddp_weights)
    assert gap < 1e-5
    ddp_moments, _ = checkpoints.load(tmp_path / "ddp" / "checkpoint.safetensors")
    single_moments, _ = checkpoints.load(tmp_path / "single" / "checkpoint.safetensors")
    first_moments = [k for k in ddp_moments if k.startswith("optimizer.") and k.endswith(".exp_avg")]
    assert len(first_moments) == len(list(build_unet(single, (1, 8, 8)).parameters()))
    assert max((ddp_moments[k] - single_moments[k]).abs().max().item() for k in first_moments) < 1e-6

    torch.manual_seed(single.seed)
    initial = build_unet(single, (1, 8, 8)).state_dict()
    moved = max((ddp_weights[f"model.{k}"] - v).abs().max().item() for k, v in initial.items())
    assert moved > 2e-4  # three steps at lr 2e-4 moved the weights far more than the tolerance


def test_parse_config_types():
    config = parse_config(["--channel_mults", "1,2", "--bf16", "--steps", "5", "--lr", "0.01"])
    assert config.channel_mults == (1, 2) and isinstance(config.channel_mults, tuple)
    assert config.bf16 is True
    assert config.steps == 5 and isinstance(config.steps, int)
    assert config.lr == 0.01 and isinstance(config.lr, float)
    assert config.compile is None and config.epochs is None and config.time_budget is None
    assert config.attention_resolutions == (7,) and config.dataset == "mnist"
    assert parse_config(["--no-compile"]).compile is False
    assert parse_config(["--compile", "--no-bf16"]).compile is True
    assert parse_config(["--no-bf16"]).bf16 is False
    assert parse_config(["--time_budget", "1.5", "--root", "somewhere"]).time_budget == 1.5
    default = dataclasses.asdict(TrainConfig())
    assert dataclasses.asdict(parse_config([])) == default


def test_epoch_batches_are_permutations_and_resume_by_step():
    n, batch_size, seed = 10, 3, 5
    batches = list(itertools.islice(epoch_batches(n, batch_size, seed, 0), 9))  # 3 steps an epoch, 3 epochs
    assert all(batch.shape == (batch_size,) and batch.dtype == torch.int64 for batch in batches)
    epochs = [torch.cat(batches[i : i + 3]) for i in (0, 3, 6)]
    for indices in epochs:
        assert len(set(indices.tolist())) == 9  # no repeats; one index (the partial batch) dropped
        assert 0 <= indices.min() and indices.max() < n
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    for start in range(9):
        resumed = list(itertools.islice(epoch_batches(n, batch_size, seed, start), 9 - start))
        assert all(torch.equal(a, b) for a, b in zip(resumed, batches[start:], strict=True))
    other_seed = list(itertools.islice(epoch_batches(n, batch_size, seed + 1, 0), 3))
    assert not all(torch.equal(a, b) for a, b in zip(other_seed, batches[:3], strict=True))


def test_warmup_cosine_learning_rate():
    lr, steps, warmup = 1e-3, 10, 4
    assert warmup_cosine_learning_rate(lr, 0, steps, warmup) == pytest.approx(2.5e-4, rel=1e-12)
    assert warmup_cosine_learning_rate(lr, 1, steps, warmup) == pytest.approx(5e-4, rel=1e-12)
    assert warmup_cosine_learning_rate(lr, warmup - 1, steps, warmup) == pytest.approx(1e-3, rel=1e-12)
    assert warmup_cosine_learning_rate(lr, warmup, steps, warmup) == pytest.approx(1e-3, rel=1e-12)
    assert warmup_cosine_learning_rate(lr, 7, steps, warmup) == pytest.approx(5e-4, rel=1e-12)  # cos(pi / 2) = 0
    last = lr * (2 - math.sqrt(3)) / 4  # lr (1 + cos(5 pi / 6)) / 2
    assert warmup_cosine_learning_rate(lr, steps - 1, steps, warmup) == pytest.approx(last, rel=1e-12)


def perfect_setup():
    schedule = NoiseSchedule.linear(T=1000)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 1, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    return schedule, x0, t, eps


def perfect_model(schedule, x0, t, eps, prediction):
    """A network that knows (x0, t, eps) and returns the exact target at x_t."""
    xt = schedule.q_sample(x0, t, eps)

    def model(x, steps):
        assert torch.equal(x, xt) and torch.equal(steps, t)
        return prediction_target(schedule, x0, t, eps, prediction)

    return model


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_perfect_model_has_zero_loss_and_recovers_eps(prediction):
    schedule, x0, t, eps = perfect_setup()
    model = perfect_model(schedule, x0, t, eps, prediction)
    loss = denoising_loss(model, schedule, x0, t, eps, prediction)
    assert loss.dtype == torch.float64
    assert loss.item() < 1e-12
    for other in PREDICTIONS:
        if other != prediction:  # the targets really differ: the same network is wrong under another prediction
            assert denoising_loss(model, schedule, x0, t, eps, other).item() > 1e-2
    xt = schedule.q_sample(x0, t, eps)
    recovered = as_eps_model(model, schedule, prediction)(xt, t)
    assert recovered.dtype == torch.float64
    assert (recovered - eps).abs().max().item() < 1e-10


def test_unknown_prediction_raises(tmp_path):
    schedule, x0, t, eps = perfect_setup()
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        prediction_target(schedule, x0, t, eps, "score")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        denoising_loss(lambda x, steps: x, schedule, x0, t, eps, "score")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        as_eps_model(lambda x, steps: x, schedule, "score")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        train(TrainConfig(**TINY, prediction="score", out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    inputs = torch.randn(8, 3)
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()
        optimizer.step()
    tensors, param_groups = checkpoints.optimizer_state(optimizer)
    path = tmp_path / "optimizer.safetensors"
    checkpoints.save(path, checkpoints.prefixed("optimizer", tensors), {"param_groups": param_groups})
    loaded, meta = checkpoints.load(path)

    copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    copy.load_state_dict(model.state_dict())
    restored = torch.optim.Adam(copy.parameters(), lr=0.5)
    checkpoints.restore_optimizer(restored, checkpoints.unprefixed("optimizer", loaded), meta["param_groups"])
    original_state, restored_state = optimizer.state_dict(), restored.state_dict()
    as_json = json.loads(json.dumps(original_state["param_groups"]))  # the header stores tuples as lists
    assert restored_state["param_groups"] == as_json
    assert restored.param_groups[0]["lr"] == 1e-2 and tuple(restored.param_groups[0]["betas"]) == (0.8, 0.95)
    assert original_state["state"].keys() == restored_state["state"].keys() == {0, 1, 2, 3}
    for index, slots in original_state["state"].items():
        assert slots.keys() == restored_state["state"][index].keys() == {"step", "exp_avg", "exp_avg_sq"}
        for key, value in slots.items():
            assert torch.equal(value, restored_state["state"][index][key])

    for net, opt in ((model, optimizer), (copy, restored)):  # and the next step is the same
        opt.zero_grad()
        net(inputs).pow(2).mean().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters(), strict=True))


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "deeper" / "state.safetensors"
    checkpoints.save(path, {"a": torch.arange(3.0)}, {"step": 1})
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.safetensors"]  # no .partial left behind
    tensors, meta = checkpoints.load(path)
    assert torch.equal(tensors["a"], torch.arange(3.0)) and meta == {"step": 1}

    def fails_midway(tensors, filename, metadata):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", fails_midway)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(path, {"a": torch.zeros(3)}, {"step": 2})
    tensors, meta = checkpoints.load(path)  # the previous checkpoint is intact
    assert torch.equal(tensors["a"], torch.arange(3.0)) and meta == {"step": 1}

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load(tmp_path / "absent.safetensors")


def test_sample_grids_every_epoch_and_a_bf16_run(tmp_path):
    from PIL import Image

    # 1500 digits in batches of 500: three steps per epoch, so six steps make two epochs and two grids.
    summary = train(config(tmp_path, batch_size=500, sample_every=1, sample_steps=3, bf16=True))
    assert summary["complete"] and summary["steps"] == 6
    grids = sorted(path.name for path in tmp_path.glob("samples_epoch_*.png"))
    assert grids == ["samples_epoch_1.png", "samples_epoch_2.png"]
    assert Image.open(tmp_path / "samples_epoch_2.png").size == (8 * (8 + 2) + 2,) * 2  # 8 x 8 images, padding 2
    assert all(math.isfinite(loss) for _, loss in losses(tmp_path))
