"""The sampling command (generate.py): what it writes, as a subprocess; its sampler flags come from the registry, each
option goes to the samplers that declare it and no other, and what it wrote names the options the sampler took."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lib import artifacts, generate
from diffusion_lib.engine import train
from diffusion_lib.sampling import SAMPLERS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("run")
    assert train(tiny_config(out))["complete"]
    return out


def error_of(capsys, argv):
    with pytest.raises(SystemExit) as stopped:
        generate.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_every_option_of_the_registry_is_a_flag_that_names_its_samplers():
    text = generate.build_parser().format_help()
    for row in SAMPLERS.values():
        assert row.name in text and row.help in " ".join(text.split())
        for option in row.options:
            assert "--" + option.name.replace("_", "-") in text
    assert "--eta X" in text and "(sampler ddpm, ddim)" in " ".join(text.split())  # clip_x0's samplers


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sampler", "ddpm", "--eta", "0.5"], "argument --sampler ddpm: sampler 'ddpm' takes no option 'eta'"),
        (["--sampler", "heun", "--clip-x0"], "argument --sampler heun: sampler 'heun' takes no option 'clip_x0'"),
        (["--sampler", "ddim", "--eta", "1.5"], "option eta=1.5 is not allowed; allowed: a number in [0.0, 1.0]"),
        (["--sampler", "ddim", "--variance", "beta"], "sampler 'ddim' takes no option 'variance'"),
        (["--eta", "half"], "argument --eta: invalid float value: 'half'"),
        (["--variance", "big"], "argument --variance: invalid choice: 'big'"),
        (["--label", "3", "--guidance-scale", "nan"], "argument --guidance-scale: must be a finite number, got nan"),
        (["--label", "3", "--guidance-scale=-inf"], "argument --guidance-scale: must be a finite number, got -inf"),
    ],
)
def test_an_option_the_sampler_does_not_take_is_one_line_before_any_work(capsys, run, tmp_path, flags, message):
    out = tmp_path / "out"
    assert message in error_of(capsys, [str(run), "--n", "2", "--steps", "2", "--out", str(out), *flags])
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "taken"),
    [
        (["--sampler", "ddim", "--eta", "0.5", "--clip-x0"], {"eta": 0.5, "clip_x0": True}),
        (["--sampler", "ddpm", "--variance", "beta"], {"variance": "beta", "clip_x0": False}),
        (["--sampler", "heun"], {}),
    ],
)
def test_the_options_reach_the_sampler_and_the_settings(run, tmp_path, flags, taken):
    out = tmp_path / "out"
    generate.main([str(run), "--n", "3", "--steps", "3", "--seed", "4", "--device", "cpu", "--out", str(out), *flags])
    settings = json.loads((out / "settings.json").read_text())
    assert {key: settings[key] for key in taken} == taken
    assert not {"eta", "variance", "clip_x0"} - set(taken) & set(settings)  # no option the sampler does not take
    expected = artifacts.load_run(run).sample(3, sampler=flags[1], steps=3, seed=4, **taken)
    torch.testing.assert_close(load_file(out / "samples.safetensors")["images"], expected)


def test_the_sampling_command_writes_a_grid_tensors_and_settings(run, tmp_path):
    out = tmp_path / "samples"
    options = [str(run), "--n", "4", "--sampler", "ddim", "--steps", "5", "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-m", "diffusion_lib.generate", *options], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    grid = str(out / "samples.png")
    assert json.loads(result.stdout.splitlines()[-1]) == {"images": 4, "out": str(out), "grid": grid}
    assert sorted(path.name for path in out.iterdir()) == ["samples.png", "samples.safetensors", "settings.json"]

    stored = load_file(out / "samples.safetensors")
    assert stored.keys() == {"images"}
    images = stored["images"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    # the images the library draws from the run folder with the same options (the default seed 0)
    expected = artifacts.load_run(run).sample(4, sampler="ddim", steps=5, seed=0, device="cpu")
    torch.testing.assert_close(images, expected)

    settings = json.loads((out / "settings.json").read_text())
    assert settings == {"source": str(run), "label": None, "guidance_scale": None, "n": 4, "sampler": "ddim",
                        "steps": 5, "seed": 0, "device": "cpu", "eta": 0.0, "clip_x0": False}  # fmt: skip
    from PIL import Image

    assert Image.open(out / "samples.png").size == (2 * (8 + 2) + 2,) * 2  # 2 x 2 images of 8 x 8, 2 pixels apart


def test_the_sampling_command_names_only_the_stored_diffusion_models(capsys):
    assert generate.DIFFUSION_MODELS == ["mnist-ddpm", "mnist-cfg"]
    with pytest.raises(SystemExit) as stopped:
        generate.main(["mnist-classifier", "--n", "2"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'mnist-classifier' is neither a stored diffusion model (mnist-ddpm, mnist-cfg) nor a run folder" in error
    with pytest.raises(SystemExit) as stopped:
        generate.main(["mnist-cfg", "--n", "2", "--guidance-scale", "3"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("argument --guidance-scale: needs --label, the class to steer towards")


def test_the_output_folder_is_checked_before_any_work_and_never_a_stored_artifact(capsys, run, tmp_path):
    artifact, foreign, a_file = tmp_path / "artifact", tmp_path / "notes", tmp_path / "a-file"
    artifact.mkdir()
    (artifact / "meta.json").write_text("{}")
    (artifact / "samples.png").write_bytes(b"the artifact's own")
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("mine")
    a_file.write_text("")
    expected = {
        artifact: f"argument --out: {artifact} holds a stored artifact (meta.json); choose another folder",
        foreign: f"argument --out: {foreign} holds files this command did not write (thesis.tex)",
        a_file: f"argument --out: {a_file} is a file, not a folder",
    }
    for out, message in expected.items():
        assert message in error_of(capsys, [str(run), "--n", "2", "--steps", "2", "--out", str(out)])
    assert (artifact / "samples.png").read_bytes() == b"the artifact's own" and len(list(artifact.iterdir())) == 2
    assert [path.name for path in foreign.iterdir()] == ["thesis.tex"] and a_file.read_text() == ""
    again = tmp_path / "again"  # a folder this command wrote may be written again
    for _ in range(2):
        generate.main([str(run), "--n", "2", "--steps", "2", "--device", "cpu", "--out", str(again)])
    assert sorted(path.name for path in again.iterdir()) == sorted(generate.OUTPUTS)


def test_a_truncated_run_file_is_one_line_naming_it(capsys, run, tmp_path):
    damaged = tmp_path / "damaged-run"
    damaged.mkdir()
    ema = (run / "ema.safetensors").read_bytes()
    (damaged / "ema.safetensors").write_bytes(ema[: len(ema) // 2])
    error = error_of(capsys, [str(damaged), "--n", "2", "--steps", "2", "--out", str(tmp_path / "out")])
    assert f"{(damaged / 'ema.safetensors').resolve()} is damaged or truncated" in error
    assert not (tmp_path / "out").exists()


def test_the_label_and_guidance_scale_reach_the_sampler(tmp_path, tiny_config):
    run = tmp_path / "conditional"
    assert train(tiny_config(run, conditional=True))["complete"]
    out = tmp_path / "out"
    generate.main([str(run), "--n", "3", "--steps", "3", "--seed", "5", "--label", "7", "--guidance-scale", "2.5",
                   "--sampler", "ddim", "--device", "cpu", "--out", str(out)])  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())
    assert (settings["label"], settings["guidance_scale"], settings["seed"]) == (7, 2.5, 5)
    expected = artifacts.load_run(run).sample(3, sampler="ddim", steps=3, seed=5, labels=torch.full((3,), 7),
                                              guidance_scale=2.5)  # fmt: skip
    torch.testing.assert_close(load_file(out / "samples.safetensors")["images"], expected, rtol=0, atol=0)
    plain = artifacts.load_run(run).sample(3, sampler="ddim", steps=3, seed=5, labels=torch.full((3,), 7))
    assert not torch.equal(expected, plain)  # the scale made a difference, so dropping it would be seen
