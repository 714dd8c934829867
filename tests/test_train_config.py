"""The engine's settings (train_config.py): which of them define a run, and the run folder named by them."""

import dataclasses
import re
from pathlib import Path

from diffusion_lib.engine import train
from diffusion_lib.train_config import TrainConfig, run_folder


def test_the_run_folder_is_named_by_the_data_set_and_a_hash_of_the_defining_settings(tmp_path, monkeypatch,
                                                                                      tiny_training):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    config = TrainConfig(**tiny_training)
    assert config.out is None
    folder = run_folder(config)
    assert folder.parent == Path("runs") and re.fullmatch(r"digits-[0-9a-f]{8}", folder.name)

    not_defining = dict(root="elsewhere", device="cuda", compile=True, workers=0, log_every=7, checkpoint_every=3,
                        sample_every=1, sample_steps=9, time_budget=60.0)  # fmt: skip
    same = [
        dataclasses.replace(config, steps=60),  # the length of training is left out
        dataclasses.replace(config, steps=None, epochs=2),
        dataclasses.replace(config, class_dropout=0.5),  # an unconditional run ignores it
        dataclasses.replace(config, **not_defining),
    ]
    assert [run_folder(other) for other in same] == [folder] * len(same)
    others = [
        dataclasses.replace(config, lr=1e-3),
        dataclasses.replace(config, channels=16),
        dataclasses.replace(config, seed=1),
        dataclasses.replace(config, bf16=True),
        dataclasses.replace(config, conditional=True),
        dataclasses.replace(config, conditional=True, class_dropout=0.5),  # a conditional run does not
    ]
    names = [run_folder(other) for other in others]
    assert len(set(names)) == len(others) and folder not in names
    assert all(name.parent == Path("runs") and re.fullmatch(r"digits-[0-9a-f]{8}", name.name) for name in names)
    assert run_folder(dataclasses.replace(config, dataset="mnist")).name.startswith("mnist-")
    in_folder = run_folder(dataclasses.replace(config, dataset="folder:/data/my faces", image_size=8))
    assert in_folder.parent == Path("runs") and re.fullmatch(r"folder-data-my-faces-[0-9a-f]{8}", in_folder.name)
    in_parent = run_folder(dataclasses.replace(config, dataset="folder:../images/", image_size=8))
    assert re.fullmatch(r"folder-images-[0-9a-f]{8}", in_parent.name)  # one folder, not a path
    assert run_folder(dataclasses.replace(config, out="mine/run")) == Path("mine/run")

    summary = train(config)
    assert summary["out"] == str(folder) and summary["complete"]
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == [folder.name]
    written = {path.name for path in (tmp_path / folder).iterdir()}
    assert {"checkpoint.safetensors", "ema.safetensors", "history.json"} <= written
