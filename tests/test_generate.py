"""The sampling command: its sampler flags come from the registry, each option goes to the samplers that declare it
and no other, and what it wrote names the options the sampler took."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffusion_lib import artifacts, generate
from diffusion_lib.engine import train
from diffusion_lib.sampling import SAMPLERS


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
