"""The command line of the engine (train.py): options named like the fields of TrainConfig, parsed to their types.

That the command line trains (under torchrun, with DDP) is checked in test_engine.py.
"""

import dataclasses

from diffusion_lib.engine import TrainConfig
from diffusion_lib.train import parse_config


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
