"""The training engine (engine.py): its pieces against independent computations, then whole runs.

The pieces: the batch order and learning rate against their definitions, the
EMA after k updates against its closed form (the decay sequence of the
warm-up included), the logged loss against the mean of the per-step losses,
and whole training steps reproduced by hand (the batch and noise from (seed,
step), the loss, the gradient's global norm and its clip, AdamW's update, the
EMA) against the engine's checkpoint. The runs: exact resume after a kill or a
time budget, config checks on resume, DDP against one process, sample grids.

Runs are tiny U-Nets on scikit-learn's 8 x 8 digits, on the CPU (conftest.py's tiny_config).
"""

import dataclasses
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from image_folders import write_images
from safetensors.torch import load_file

import diffusion_lib.checkpoints as checkpoints
import diffusion_lib.engine as train_module
from diffusion_lib import data, resumable
from diffusion_lib.engine import build_unet, epoch_batches, null_label_mask, train, warmup_cosine_learning_rate
from diffusion_lib.experiments import EXPERIMENTS, judge
from diffusion_lib.models.unet import UNet
from diffusion_lib.train import parse_config
from diffusion_lib.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


# The engine's pieces against independent computations -----------------------------------------------------------------


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


def test_ema_update_after_k_steps_is_the_closed_form():
    """ema_k = (prod_s d_s) theta_ema + sum_s (1 - d_s) (prod_{r > s} d_r) theta_s, in float64 from Python floats."""
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    start = [p.detach().double().clone() for p in ema.parameters()]
    decays = [0.5, 0.9, 0.0, 0.75, 0.99]
    generator = torch.Generator().manual_seed(1)
    thetas = []
    for decay in decays:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
        thetas.append([p.detach().double().clone() for p in model.parameters()])
        train_module.ema_update(ema, model, decay)
    for i, parameter in enumerate(ema.parameters()):
        expected = math.prod(decays) * start[i]
        for s, decay in enumerate(decays):
            expected = expected + (1 - decay) * math.prod(decays[s + 1 :]) * thetas[s][i]
        # float32 parameters: each of the five updates rounds to 6e-8 relative.
        torch.testing.assert_close(parameter.detach().double(), expected, rtol=1e-6, atol=1e-7)


def test_loss_log_records_the_mean_of_its_window():
    log = train_module.LossLog()
    for loss in (1.0, 2.0, 4.5):
        log.add(torch.tensor(loss))
    assert log.window() == {"loss_sum": 7.5, "steps": 3}
    record = log.record(step=3, lr=0.1, batch_size=16, seconds=2.0)
    assert record["loss"] == pytest.approx(7.5 / 3, rel=1e-7)  # float32 sums of these values are exact
    assert record["step"] == 3 and record["lr"] == 0.1 and record["seconds"] == 2.0
    assert record["images_per_second"] > 0
    assert log.window() == {"loss_sum": 0.0, "steps": 0} and log.history == [record]
    # A log resumed from a checkpoint's open window continues that window.
    resumed = train_module.LossLog(history=[record], loss_sum=3.0, steps=2)
    resumed.add(torch.tensor(6.0))
    assert resumed.record(step=6, lr=0.1, batch_size=16, seconds=4.0)["loss"] == pytest.approx(3.0, rel=1e-7)
    assert [r["step"] for r in resumed.history] == [3, 6]


LINEAR_BETAS = (1e-4, 0.02)  # TrainConfig's default schedule "linear" (Ho et al. 2020)


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory, tiny_config):
    """A tiny run of 3 steps (warm-up 2, no dropout, a gradient clip far below the gradient's norm, an EMA decay that
    the warm-up caps at first and then ema_decay caps), with the weights after every step and every loss recorded
    by wrapping ema_update and denoising_loss (both still run as they are)."""
    out = tmp_path_factory.mktemp("traced")
    config = tiny_config(
        out, steps=3, warmup=2, log_every=2, dropout=0.0, grad_clip=1e-3, ema_decay=0.15, lr=1e-3, checkpoint_every=100
    )
    weights, losses, decays = [], [], []
    original_ema_update, original_loss = train_module.ema_update, train_module.denoising_loss

    def recording_ema_update(ema, model, decay):
        weights.append({k: v.detach().double().clone() for k, v in model.named_parameters()})
        decays.append(decay)
        original_ema_update(ema, model, decay)

    def recording_loss(*args):
        loss = original_loss(*args)
        losses.append(loss.item())
        return loss

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "ema_update", recording_ema_update)
        patch.setattr(train_module, "denoising_loss", recording_loss)
        summary = train(config)
    assert summary["complete"] and summary["steps"] == 3
    return config, out, weights, losses, decays


def initial_weights(config):
    """The U-Net's weights at the start of the run: the engine seeds the global generator with config.seed first."""

    torch.manual_seed(config.seed)
    net = UNet(image_channels=1, image_size=8, **config.model_kwargs())
    return net


def test_ema_of_a_run_is_the_closed_form_of_the_warm_up_decays(traced_run):
    """The stored EMA is prod(d) theta_0 + sum_s (1 - d_s) prod_{r > s} d_r theta_s with d_s = min(ema_decay,
    (1 + s) / (10 + s)), from the initial weights theta_0 and the weights theta_s after each step."""
    config, out, weights, _, passed = traced_run
    decays = [min(config.ema_decay, (1 + s) / (10 + s)) for s in range(config.steps)]
    assert decays == [0.1, 0.15, 0.15]  # the warm-up caps the first decay, ema_decay the others
    assert passed == pytest.approx(decays, rel=1e-15)  # the decays the engine gave ema_update
    start = {k: v.detach().double() for k, v in initial_weights(config).named_parameters()}
    ema, _ = checkpoints.load(out / "ema.safetensors")
    assert ema.keys() == start.keys()
    for name, value in ema.items():
        expected = math.prod(decays) * start[name]
        for s, decay in enumerate(decays):
            expected = expected + (1 - decay) * math.prod(decays[s + 1 :]) * weights[s][name]
        # Compared as the change from the initial weights, to 1e-3 of its size plus rounding: the float32 EMA rounds
        # to 2^-24 = 6e-8 of the weights' size in each of three updates; a wrong decay or lerp weight moves it more.
        gap, size = (value.double() - expected).norm().item(), (expected - start[name]).norm().item()
        assert gap <= 1e-3 * size + 4 * 2**-24 * expected.norm().item(), (name, gap, size)


def test_logged_losses_are_the_means_of_the_per_step_losses(traced_run):
    _, out, _, step_losses, _ = traced_run
    history = json.loads((out / "history.json").read_text())
    assert [record["step"] for record in history] == [2, 3]  # every log_every = 2 steps, and at the last step
    expected = [sum(step_losses[:2]) / 2, step_losses[2]]
    # float32 sums of two losses: a few units of 6e-8 relative.
    assert [record["loss"] for record in history] == pytest.approx(expected, rel=1e-6)


def test_training_steps_reproduced_by_hand(traced_run):
    """Each step by hand: the batch and (t, eps) from (seed, step), x_t from alpha_bar by Python's running product,
    the mean squared error, the global gradient norm clipped as clip_grad_norm_ documents it (scale
    max_norm / (norm + 1e-6) when below 1), AdamW's update (betas 0.9, 0.999, eps 1e-8, no weight decay) at the
    warm-up-then-cosine learning rate, and the EMA; compared with the engine's checkpoint."""
    from sklearn.datasets import load_digits

    config, out, weights, losses, _ = traced_run
    images = torch.tensor(load_digits().images[:1500], dtype=torch.float32).unsqueeze(1) / 8 - 1
    low, high = LINEAR_BETAS
    alpha_bar, alpha_bars = 1.0, []
    for i in range(config.T):
        alpha_bar *= 1 - (low + (high - low) * i / (config.T - 1))
        alpha_bars.append(alpha_bar)
    alpha_bars = torch.tensor(alpha_bars, dtype=torch.float64)

    net = initial_weights(config)
    params = dict(net.named_parameters())
    ema = {k: v.detach().double().clone() for k, v in params.items()}
    m = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed * 1_000_003))
    for s in range(config.steps):
        x0 = images[order[s * config.batch_size : (s + 1) * config.batch_size]]
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + s)
        t = torch.randint(0, config.T, (config.batch_size,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        a = alpha_bars[t].float().reshape(-1, 1, 1, 1)
        net.zero_grad()
        loss = (eps - net(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)).pow(2).mean()
        loss.backward()
        assert loss.item() == pytest.approx(losses[s], rel=1e-5)
        norm = math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in params.values()))
        assert norm > 10 * config.grad_clip  # the clip is active at every step
        scale = config.grad_clip / (norm + 1e-6)
        if s < config.warmup:
            lr = config.lr * (s + 1) / config.warmup
        else:
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * (s - config.warmup) / max(config.steps - config.warmup, 1)))
        decay = min(config.ema_decay, (1 + s) / (10 + s))
        with torch.no_grad():
            for name, p in params.items():
                g = p.grad.double() * scale
                m[name] = 0.9 * m[name] + 0.1 * g
                v2[name] = 0.999 * v2[name] + 0.001 * g**2
                m_hat, v_hat = m[name] / (1 - 0.9 ** (s + 1)), v2[name] / (1 - 0.999 ** (s + 1))
                p.copy_(p.double() - lr * m_hat / (v_hat.sqrt() + 1e-8))
                ema[name] = decay * ema[name] + (1 - decay) * p.double()

    tensors, meta = checkpoints.load(out / "checkpoint.safetensors")
    assert meta["step"] == config.steps
    start = {k: v.detach().double() for k, v in initial_weights(config).named_parameters()}

    def assert_same_update(actual, expected, what):
        """Compare the change from the initial weights, to 1e-3 of its size plus rounding: float32 weights round to
        2^-24 = 6e-8 of their size in each of the three steps, and the gradients here and the engine's differ by
        such roundings; a wrong rate, clip, moment or decay changes the step by far more."""
        gap, size = (actual - expected).norm().item(), (expected - start[name]).norm().item()
        assert gap <= 1e-3 * size + 4 * 2**-24 * expected.norm().item(), (what, name, gap, size)

    for i, (name, p) in enumerate(params.items()):
        assert_same_update(tensors[f"model.{name}"].double(), p.detach().double(), "weights")
        assert_same_update(weights[-1][name], p.detach().double(), "weights seen by ema_update")
        assert_same_update(tensors[f"ema.{name}"].double(), ema[name], "EMA")
        # The moments as whole tensors, to 1e-4 of their norm: rounding is far below that, and a missing clip or a
        # wrong beta changes them by a factor.
        for key, expected in (("exp_avg", m[name]), ("exp_avg_sq", v2[name])):
            gap = (tensors[f"optimizer.{i}.{key}"].double() - expected).norm()
            assert gap <= 1e-4 * expected.norm() + 1e-30, (name, key, gap, expected.norm())
    assert meta["param_groups"][0]["lr"] == pytest.approx(config.lr, rel=1e-12)  # the last step's, after warm-up


# Exact resume, DDP and sample grids: runs of the tiny config ----------------------------------------------------------


@pytest.fixture(scope="session")
def config(tiny_config):
    """config(out, **changes): the tiny run of these tests, with dropout (so that resuming must restore the global
    generator) and a checkpoint every 2 steps."""
    return lambda out, **changes: tiny_config(out, **{"dropout": 0.1, "checkpoint_every": 2, **changes})


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
def run_a(tmp_path_factory, config):
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("run_a")
    summary = train(config(out))
    assert summary["complete"] and summary["steps"] == summary["total_steps"] == 6
    return out


def test_resume_after_a_kill_is_exact(run_a, tmp_path, monkeypatch, config):
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


def test_the_resume_check_is_sensitive(run_a, tmp_path, monkeypatch, config):
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


def test_time_budget_stops_cleanly_and_resumes(run_a, tmp_path, config):
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


def test_resume_rejects_another_defining_config(tmp_path, config):
    out = tmp_path / "run"
    train(config(out, time_budget=0))
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0002 -> 0.001\)"):
        train(config(out, lr=1e-3))
    with pytest.raises(ValueError, match=r"other settings \(dropout: 0.1 -> 0.0\)"):
        train(config(out, dropout=0.0))
    assert saved(out)[1]["step"] == 0  # the refused runs left the checkpoint alone

    summary = train(config(out, log_every=2, checkpoint_every=3))
    assert summary["complete"] and summary["steps"] == 6
    assert [step for step, _ in losses(out)] == [2, 4, 6]


def test_a_moved_run_folder_resumes_and_an_ample_budget_does_not_stop_it(run_a, tmp_path, config):
    before, after = tmp_path / "before", tmp_path / "after"
    train(config(before, time_budget=0))
    before.rename(after)
    train(config(after, time_budget=3600))  # an hour for six tiny steps
    assert_same_weights(run_a, after)


def test_resume_logs_the_same_losses_when_checkpoints_fall_inside_a_log_window(tmp_path, monkeypatch, config):
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
@pytest.mark.alone
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


def test_sample_grids_every_epoch_and_a_bf16_run(tmp_path, config):
    from PIL import Image

    # 1500 digits in batches of 500: three steps per epoch, so six steps make two epochs and two grids.
    summary = train(config(tmp_path, batch_size=500, sample_every=1, sample_steps=3, bf16=True))
    assert summary["complete"] and summary["steps"] == 6
    grids = sorted(path.name for path in tmp_path.glob("samples_epoch_*.png"))
    assert grids == ["samples_epoch_1.png", "samples_epoch_2.png"]
    assert Image.open(tmp_path / "samples_epoch_2.png").size == (8 * (8 + 2) + 2,) * 2  # 8 x 8 images, padding 2
    assert all(math.isfinite(loss) for _, loss in losses(tmp_path))


# The engine as a tool: run folders, extending runs, command-line errors, conditional training, sampling command ---


def test_a_fresh_run_folder_holds_checkpoint_ema_history_and_a_grid(tmp_path, tiny_config):
    from PIL import Image

    out = tmp_path / "fresh"
    # 1500 digits in batches of 250: the six steps make one epoch, and so one grid.
    config = tiny_config(out, batch_size=250, sample_every=1, sample_steps=2)
    summary = train(config)
    assert summary == {
        "out": str(out), "steps": 6, "total_steps": 6, "device": "cpu", "image_shape": (1, 8, 8), "num_classes": None,
        "complete": True, "seconds": summary["seconds"], "final_loss": summary["final_loss"],
    }  # fmt: skip
    assert summary["seconds"] > 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["checkpoint.safetensors", "config.json", "ema.safetensors", "history.json", "samples_epoch_1.png"]
    assert json.loads((out / "config.json").read_text()) == json.loads(json.dumps(dataclasses.asdict(config)))

    ema, meta = checkpoints.load(out / "ema.safetensors")
    assert meta["image_shape"] == [1, 8, 8] and meta["num_classes"] is None and meta["step"] == 6
    assert meta["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert ema.keys() == build_unet(config, (1, 8, 8)).state_dict().keys()
    tensors, checkpoint_meta = checkpoints.load(out / "checkpoint.safetensors")
    assert all(torch.equal(value, tensors[f"ema.{name}"]) for name, value in ema.items())  # the checkpoint's EMA
    assert checkpoint_meta["step"] == checkpoint_meta["total_steps"] == 6

    history = json.loads((out / "history.json").read_text())
    assert [record["step"] for record in history] == [1, 2, 3, 4, 5, 6]  # log_every = 1
    assert all(record.keys() == {"step", "loss", "lr", "images_per_second", "seconds"} for record in history)
    assert history == checkpoint_meta["history"] and summary["final_loss"] == history[-1]["loss"]

    grid = Image.open(out / "samples_epoch_1.png")
    assert grid.size == (8 * (8 + 2) + 2,) * 2  # 64 images of 8 x 8 in 8 rows and columns, 2 pixels apart


def test_a_finished_run_is_complete_and_trained_longer_exactly(tmp_path, monkeypatch, capsys, config):
    """Asking a finished run for more steps continues it. With every step in the warm-up (whose learning rate does not
    depend on the run's length), 6 steps and then 3 more equal 9 uninterrupted steps bit for bit."""
    extended, whole = tmp_path / "extended", tmp_path / "whole"
    train(config(extended, warmup=100))
    before = (extended / "checkpoint.safetensors").read_bytes()
    capsys.readouterr()

    def no_training(*args):
        raise AssertionError("a complete run trained")

    monkeypatch.setattr(train_module, "denoising_loss", no_training)
    summary = train(config(extended, warmup=100))
    assert capsys.readouterr().out == f"{extended} is already complete (6 steps); nothing to do\n"
    assert summary["complete"] is True and summary["steps"] == summary["total_steps"] == 6
    assert summary["final_loss"] == losses(extended)[-1][1]
    assert (extended / "checkpoint.safetensors").read_bytes() == before
    monkeypatch.undo()

    summary = train(config(extended, warmup=100, steps=9))
    assert summary["complete"] is True and summary["steps"] == summary["total_steps"] == 9
    train(config(whole, warmup=100, steps=9))
    assert_same_weights(whole, extended)
    assert losses(whole) == losses(extended) and [step for step, _ in losses(extended)] == list(range(1, 10))
    ema_whole, _ = checkpoints.load(whole / "ema.safetensors")
    ema_extended, meta_extended = checkpoints.load(extended / "ema.safetensors")
    assert all(torch.equal(ema_whole[k], ema_extended[k]) for k in ema_whole) and meta_extended["step"] == 9

    with pytest.raises(ValueError, match=re.escape(f"{extended} has already trained 9 steps, more than the 4 asked")):
        train(config(extended, warmup=100, steps=4))


def test_extending_a_run_follows_the_longer_schedule_from_where_it_stopped(tmp_path, config):
    out, lr, warmup = tmp_path / "cosine", 2e-4, 2
    train(config(out, warmup=warmup))
    first = json.loads((out / "history.json").read_text())
    train(config(out, warmup=warmup, steps=9))
    history = json.loads((out / "history.json").read_text())
    assert history[:6] == first  # the finished steps are kept as they were
    # The record of step k logs the learning rate of step k - 1: of a 6-step run first, then of a 9-step run.
    expected = [warmup_cosine_learning_rate(lr, k - 1, 6 if k <= 6 else 9, warmup) for k in range(1, 10)]
    assert [record["lr"] for record in history] == pytest.approx(expected, rel=1e-12)
    assert expected[6] != warmup_cosine_learning_rate(lr, 6, 6, warmup)  # so the schedule did change


def test_an_existing_run_folder_refuses_other_defining_settings(tmp_path, config):
    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    train(config(finished))
    before = (finished / "checkpoint.safetensors").read_bytes()
    named = re.escape(f"{finished} holds a run with other settings (channels: 8 -> 16; lr: 0.0002 -> 0.001)")
    with pytest.raises(ValueError, match=named):
        train(config(finished, lr=1e-3, channels=16))
    with pytest.raises(ValueError, match=re.escape("other settings (lr: 0.0002 -> 0.001); a finished run can only")):
        train(config(finished, lr=1e-3, steps=12))  # a longer run is allowed, the other lr is not
    assert (finished / "checkpoint.safetensors").read_bytes() == before

    train(config(stopped, time_budget=0))  # an unfinished run cannot change its length either
    with pytest.raises(ValueError, match=re.escape(f"{stopped} holds a run with other settings (steps: 6 -> 9)")):
        train(config(stopped, steps=9))


def test_null_label_mask_drops_labels_at_the_configured_rate_reproducibly():
    n = 20_000
    for rate in (0.1, 0.5):
        config = TrainConfig(steps=1, conditional=True, class_dropout=rate)
        mask = null_label_mask(config, 3, n, "cpu")
        assert mask.dtype == torch.bool and mask.shape == (n,)
        # A binomial count: 5 standard errors leave a false alarm once in ~1.7 million runs (and the draws are seeded).
        assert abs(mask.sum().item() - n * rate) < 5 * math.sqrt(n * rate * (1 - rate))
        assert torch.equal(mask, null_label_mask(config, 3, n, "cpu"))  # a function of (seed, step)
        assert not torch.equal(mask, null_label_mask(config, 4, n, "cpu"))
        assert not torch.equal(mask, null_label_mask(dataclasses.replace(config, seed=1), 3, n, "cpu"))
    # drawn apart from (t, eps): not the uniform draws that step_noise's generator would give at the same step
    config = TrainConfig(steps=1, conditional=True, class_dropout=0.5)
    same_stream = torch.rand(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + 3)) < 0.5
    assert not torch.equal(null_label_mask(config, 3, n, "cpu"), same_stream)
    assert not null_label_mask(TrainConfig(steps=1, class_dropout=0.0), 0, 1000, "cpu").any()
    assert null_label_mask(TrainConfig(steps=1, class_dropout=1.0), 0, 1000, "cpu").all()


def test_conditional_training_drops_labels_and_resumes_exactly(tmp_path, monkeypatch, config):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    conditional = {"conditional": True, "class_dropout": 0.5}
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        original = train_module.denoising_loss

        def recording(*args):
            seen.append(args[6].clone())  # denoising_loss(network, schedule, x0, t, eps, prediction, labels)
            return original(*args)

        patch.setattr(train_module, "denoising_loss", recording)
        summary = train(config(reference, **conditional))
    assert summary["complete"] and summary["num_classes"] == 10

    # The labels of each step: the batch's digits, each replaced by the null label 10 where the mask says so.
    labels, run = data.digits().tensors[1], config(reference, **conditional)
    batches = itertools.islice(epoch_batches(len(labels), run.batch_size, run.seed, 0), run.steps)
    for step, (indices, given) in enumerate(zip(batches, seen, strict=True)):
        expected = torch.where(null_label_mask(run, step, run.batch_size, "cpu"), 10, labels[indices])
        assert torch.equal(given, expected), step
    everything = torch.cat(seen)
    assert (everything == 10).any() and (everything < 10).any()

    ema, meta = checkpoints.load(reference / "ema.safetensors")
    assert meta["num_classes"] == 10 and ema["class_embedding.weight"].shape == (11, 4 * run.channels)

    kill_at_step(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="killed at step 5"):
        train(config(resumed, **conditional))
    monkeypatch.undo()
    train(config(resumed, **conditional))
    assert_same_weights(reference, resumed)
    assert losses(reference) == losses(resumed)

    # For a conditional run the label drop-out rate is a defining setting.
    with pytest.raises(ValueError, match=re.escape("other settings (class_dropout: 0.5 -> 0.2)")):
        train(config(reference, conditional=True, class_dropout=0.2))


def test_conditional_training_needs_a_data_set_with_labels(tmp_path, tiny_config):
    unlabelled, out = write_images(tmp_path / "unlabelled", 16), tmp_path / "out"
    config = tiny_config(out, dataset=f"folder:{unlabelled}", image_size=8, conditional=True)
    with pytest.raises(ValueError, match="this data set carries no class labels, so it cannot train a conditional"):
        train(config)
    assert not out.exists()
    # A folder with one subfolder per class does carry labels.
    write_images(tmp_path / "classes" / "cats", 2)
    write_images(tmp_path / "classes" / "dogs", 2, seed=1)
    assert data.num_classes(data.image_dataset(f"folder:{tmp_path / 'classes'}", image_size=8)) == 2


@pytest.mark.parametrize("name", ["mnist-classifier", "mnist-noisy-classifier"])
def test_a_classifier_build_stops_at_its_time_budget_and_resumes_exactly(name, tmp_path, monkeypatch, capsys,
                                                                        small_mnist_root):  # fmt: skip
    """A fake clock that reads the number of epochs trained makes a budget of 0.5 "seconds" stop the build after the
    first of its two epochs; the next call (with the same budget) finishes it, with the weights of an uninterrupted
    build (for the noisy classifier: the same noised images too). (The budget is checked before each epoch, so even
    a budget of 0 trains one epoch on this clock.)"""
    monkeypatch.setenv("DIFFUSION_DATA", str(small_mnist_root))  # 256 training images: 2 batches of 128 an epoch
    real = EXPERIMENTS[name]
    experiment = dataclasses.replace(real, config={**real.config, "epochs": 2})
    build = real.build
    epochs = [0]
    original = judge.classifier_epoch

    def counting(*args):
        loss = original(*args)
        epochs[0] += 1
        return loss

    monkeypatch.setattr(judge, "classifier_epoch", counting)
    clock = SimpleNamespace(perf_counter=lambda: float(epochs[0]))
    monkeypatch.setattr(judge, "time", clock)
    monkeypatch.setattr(resumable, "time", clock)  # the budget's clock
    cpu = torch.device("cpu")
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"

    assert build(experiment, stopped, cpu, 0.5, {}) is None
    assert epochs[0] == 1
    assert f"{name}: trained 1/2 epochs; run the build again" in capsys.readouterr().out
    _, meta = checkpoints.load(stopped / "run" / "checkpoint.safetensors")
    assert len(meta["losses"]) == 1 and meta["seconds"] == 1.0  # one epoch on the fake clock
    assert not (stopped / "weights.safetensors").exists() and not (stopped / "metrics.json").exists()

    finished = build(experiment, stopped, cpu, 0.5, {})
    assert epochs[0] == 2  # only the missing epoch
    assert finished["steps"] == 2 * (256 // 128) and finished["image_shape"] == [1, 28, 28]
    uninterrupted = build(experiment, whole, cpu, None, {})
    assert epochs[0] == 4

    weights, reference = load_file(stopped / "weights.safetensors"), load_file(whole / "weights.safetensors")
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)
    found, expected = (json.loads((path / "metrics.json").read_text()) for path in (stopped, whole))
    assert found == expected and len(found["epoch_losses"]) == 2
    assert finished["final_loss"] == uninterrupted["final_loss"] == found["epoch_losses"][-1]


def test_data_loader_batches_are_the_in_memory_batches():
    """A data set that is not held in memory (a folder of images, CelebA) goes through a DataLoader with the same
    batch order: on the 8 x 8 digits both paths give the same images and labels, batch for batch."""
    dataset = data.image_dataset("digits")
    in_memory = data.as_tensors(dataset)
    process = train_module.Process("cpu")
    config = SimpleNamespace(batch_size=16, seed=3, workers=0)
    from_memory = train_module._batches(dataset, in_memory, process, config, start_step=5)
    from_loader = train_module._batches(dataset, None, process, config, start_step=5)
    for (x, y), (x_loaded, y_loaded) in itertools.islice(zip(from_memory, from_loader, strict=False), 4):
        assert torch.equal(x, x_loaded) and torch.equal(y, y_loaded)


def test_a_resumed_run_adds_its_time_to_that_of_the_earlier_sessions(tmp_path, monkeypatch, config):
    """The checkpoint's seconds are the training time of every session so far: a resumed run reports them plus its
    own, in its summary and in the history it logs after resuming. The earlier session is made to look 1000 s
    long, far more than six tiny steps take."""
    out = tmp_path / "run"
    train(config(out, time_budget=0))
    original = train_module._resume

    def resumed_after_a_long_session(*args):
        step, seconds, log = original(*args)
        return step, seconds + 1000.0, log

    monkeypatch.setattr(train_module, "_resume", resumed_after_a_long_session)
    started = time.perf_counter()
    summary = train(config(out, log_every=2))
    elapsed = time.perf_counter() - started
    assert summary["complete"] and 1000.0 < summary["seconds"] < 1000.0 + elapsed
    history = json.loads((out / "history.json").read_text())
    assert [record["step"] for record in history] == [2, 4, 6] and all(r["seconds"] > 1000.0 for r in history)


def test_a_warm_up_longer_than_the_run_is_warned_of(tmp_path, capsys, tiny_config):
    train(tiny_config(tmp_path / "long", steps=4, warmup=4))
    assert "warning: the warm-up (4 steps) does not end before the run does (4 steps)" in capsys.readouterr().err
    train(tiny_config(tmp_path / "short", steps=4, warmup=2))
    assert "warm-up" not in capsys.readouterr().err
