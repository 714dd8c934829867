"""The command line of the engine (train.py): options named like the fields of TrainConfig, parsed to their types;
every bad option, and every error found while training, one line naming it, in process and as a subprocess.

That the command line trains (under torchrun, with DDP) is checked in test_engine.py.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from image_folders import write_images

import diffusion_lib.train as train_cli
from diffusion_lib.engine import TrainConfig
from diffusion_lib.train import parse_config

REPO = Path(__file__).resolve().parents[1]


def test_parse_config_types():
    config = parse_config(["--channel_mults", "1,2", "--bf16", "--steps", "5", "--lr", "0.01"])
    assert config.channel_mults == (1, 2) and isinstance(config.channel_mults, tuple)
    assert config.bf16 is True
    assert config.steps == 5 and isinstance(config.steps, int)
    assert config.lr == 0.01 and isinstance(config.lr, float)
    assert config.compile is None and config.epochs is None and config.time_budget is None
    assert config.attention_resolutions == (7,) and config.dataset == "mnist"
    assert parse_config(["--steps", "1", "--no-compile"]).compile is False
    assert parse_config(["--steps", "1", "--compile", "--no-bf16"]).compile is True
    assert parse_config(["--steps", "1", "--no-bf16"]).bf16 is False
    assert parse_config(["--steps", "1", "--time_budget", "1.5", "--root", "somewhere"]).time_budget == 1.5
    assert parse_config(["--steps", "1", "--time-budget", "2"]).time_budget == 2  # both spellings
    default = dataclasses.asdict(TrainConfig(steps=1))
    assert dataclasses.asdict(parse_config(["--steps", "1"])) == default


PROGRAM = "python -m diffusion_lib.train"
BAD_OPTIONS = {
    "--steps 0": "argument --steps: must be a positive integer, got 0",
    "--steps -1": "argument --steps: must be a positive integer, got -1",
    "--steps 5 --lr -1": "argument --lr: must be a number > 0, got -1",
    "--steps 5 --channel-mults 1,0": (
        "argument --channel-mults: must be one or more positive integers, separated by commas, got 1,0"
    ),
    "--steps 5 --class-dropout 1.5": "argument --class-dropout: must be a number in [0, 1], got 1.5",
    "--steps 5 --dataset imagenet": (
        "argument --dataset: must be one of mnist, cifar10, celeba, digits, folder:PATH, got imagenet"
    ),
    "--steps 5 --ema-decay 1": "argument --ema-decay: must be a number in [0, 1), got 1",
    "--steps 5 --prediction score": "argument --prediction: must be one of eps, x0, v, got score",
    "--steps 5 --epochs 2": "argument --steps: must be set if and only if --epochs is not, got 5",
    "--steps 5 --schedule quadratic": "argument --schedule: must be one of linear, cosine, got quadratic",
    "--steps 5 --batch_size 0": "argument --batch_size: must be a positive integer, got 0",  # the spelling given
    "--steps 5 --dataset folder:/tmp": (
        "argument --image-size: must be a positive integer for folder:PATH data sets, got None"
    ),
}


def error_line(stderr):
    """The one error line of an argparse failure: the usage (wrapped over indented lines), then exactly one line."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert lines[0].startswith(f"usage: {PROGRAM} ")
    assert all(line.startswith(" ") for line in lines[1:-1]), stderr  # only the usage's continuation lines
    assert lines[-1].startswith(f"{PROGRAM}: error: "), stderr
    return lines[-1].removeprefix(f"{PROGRAM}: error: ")


@pytest.fixture
def invoked_as_module(monkeypatch):
    """sys.argv[0] as `python -m diffusion_lib.train` sets it, so that the program is named as in a shell."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "diffusion_lib" / "train.py")])


@pytest.mark.parametrize("options", list(BAD_OPTIONS))
def test_a_bad_option_exits_2_with_one_line_naming_it(options, invoked_as_module, capsys):
    with pytest.raises(SystemExit) as exit:
        train_cli.main(options.split())
    assert exit.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and error_line(captured.err) == BAD_OPTIONS[options]


def test_an_error_found_while_training_is_one_line_too(tmp_path, invoked_as_module, capsys):
    nowhere, unlabelled = tmp_path / "nowhere", write_images(tmp_path / "unlabelled", 16)
    cases = {
        ("--root", str(nowhere)): ["MNIST not found:", f"{nowhere.resolve()}/MNIST/raw lacks train-images-idx3-ubyte"],
        ("--dataset", f"folder:{nowhere}", "--image-size", "8"): [f"image folder not found: {nowhere.resolve()}"],
        ("--dataset", "digits", "--batch-size", "2000"): ["batch_size (2000) exceeds the data set's size (1500)"],
        ("--dataset", f"folder:{unlabelled}", "--image-size", "8", "--batch-size", "8", "--conditional"): [
            "this data set carries no class labels, so it cannot train a conditional model"
        ],
    }
    for options, fragments in cases.items():
        out = tmp_path / "out"
        with pytest.raises(SystemExit) as exit:
            train_cli.main(["--steps", "5", "--device", "cpu", "--out", str(out), *options])
        assert exit.value.code == 2
        message = error_line(capsys.readouterr().err)
        assert all(fragment in message for fragment in fragments), (options, message)
        assert not out.exists()  # nothing was written


def test_the_help_shows_the_option_groups_and_the_program_as_invoked(monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(REPO / "diffusion_lib" / "train.py")])
    text = train_cli.build_parser().format_help()
    assert text.startswith(f"usage: {PROGRAM} [-h]")
    for title in ("data", "model", "the diffusion process", "optimisation", "hardware", "output and stopping"):
        assert f"\n{title}:\n" in text
    assert "--batch-size BATCH_SIZE" in text and "--batch_size" not in text  # the underscore spelling is hidden
    assert "[128]" in text and "[1,2,2]" in text  # defaults, tuples as typed
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/diffusion-train"])
    assert train_cli.build_parser().format_help().startswith("usage: diffusion-train [-h]")


def test_the_command_line_reports_errors_in_one_line_and_shows_its_help(tmp_path):
    """The same as a subprocess: exit code 2 and one error line (an option's, then one found while training) with no
    traceback, and --help. The three commands run side by side."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    nowhere, out = str(tmp_path / "nowhere"), str(tmp_path / "out")
    commands = {
        "bad option": ["--steps", "5", "--ema-decay", "1"],
        "missing data": ["--steps", "5", "--device", "cpu", "--root", nowhere, "--out", out],
        "help": ["--help"],
    }

    def start(options):
        command = [sys.executable, "-m", "diffusion_lib.train", *options]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    running = {name: start(options) for name, options in commands.items()}
    results = {name: (process.communicate(timeout=120), process.returncode) for name, process in running.items()}

    (stdout, stderr), code = results["bad option"]
    assert code == 2 and stdout == ""
    assert error_line(stderr) == "argument --ema-decay: must be a number in [0, 1), got 1"
    (stdout, stderr), code = results["missing data"]
    assert code == 2 and stdout == ""
    assert error_line(stderr).startswith(f"MNIST not found: {Path(nowhere).resolve()}/MNIST/raw lacks ")
    assert not Path(out).exists()
    (stdout, stderr), code = results["help"]
    assert code == 0 and stderr == ""
    assert stdout.startswith(f"usage: {PROGRAM} [-h]")
    for title in ("data", "model", "the diffusion process", "optimisation", "hardware", "output and stopping"):
        assert f"\n{title}:\n" in stdout


def test_a_run_is_never_written_into_a_stored_artifact(tmp_path, invoked_as_module, capsys):
    artifact = tmp_path / "mnist-ddpm"
    artifact.mkdir()
    (artifact / "meta.json").write_text("{}")
    with pytest.raises(SystemExit) as exit:
        train_cli.main(["--steps", "5", "--dataset", "digits", "--device", "cpu", "--out", str(artifact)])
    assert exit.value.code == 2
    expected = f"argument --out: must be a folder without a stored artifact's meta.json, got {artifact}"
    assert error_line(capsys.readouterr().err) == expected
    assert sorted(path.name for path in artifact.iterdir()) == ["meta.json"]
