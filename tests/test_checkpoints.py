"""Training state on disk (checkpoints.py): the optimizer's state round trip through safetensors, and atomic writes.

The restored optimizer is compared tensor by tensor with the original and
then takes the same next step.
"""

import json
from pathlib import Path

import pytest
import torch

import diffusion_lib.checkpoints as checkpoints


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


def test_prefixed_and_unprefixed_are_inverse_and_select_by_whole_prefix():
    tensors = {"a": torch.zeros(1), "b.c": torch.ones(2)}
    stored = {**checkpoints.prefixed("model", tensors), **checkpoints.prefixed("model_ema", {"a": torch.ones(3)})}
    assert set(stored) == {"model.a", "model.b.c", "model_ema.a"}
    back = checkpoints.unprefixed("model", stored)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert set(checkpoints.unprefixed("model_ema", stored)) == {"a"}


def test_load_gives_tensors_on_the_device_and_the_meta(tmp_path):
    path = tmp_path / "state.safetensors"
    tensors = {"x": torch.arange(6.0).reshape(2, 3).t(), "y": torch.tensor([1, 2], dtype=torch.int64)}
    checkpoints.save(path, tensors, {"step": 7, "history": [{"loss": 0.5}]})
    loaded, meta = checkpoints.load(str(path), torch.device("cpu"))
    assert meta == {"step": 7, "history": [{"loss": 0.5}]}
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].device.type == "cpu" for k in tensors)
    with pytest.raises(FileNotFoundError, match=str((tmp_path / "absent").resolve())):
        checkpoints.load(tmp_path / "absent")


def test_rng_states_round_trip_restores_the_same_draws():
    torch.manual_seed(3)
    states = checkpoints.rng_states("cpu")
    assert set(states) == {"cpu"}
    expected = torch.rand(5)
    torch.manual_seed(4)
    checkpoints.restore_rng_states(states, "cpu")
    assert torch.equal(torch.rand(5), expected)


def test_restored_moments_take_their_parameters_memory_layout():
    """A channels-last network's Adam moments come back channels-last, so that the fused step sees one layout."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(2, 4, 3).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(1, 2, 5, 5)).sum().backward()
    optimizer.step()
    tensors, param_groups = checkpoints.optimizer_state(optimizer)
    restored = torch.optim.Adam(model.parameters())
    checkpoints.restore_optimizer(restored, {k: v.contiguous() for k, v in tensors.items()}, param_groups)
    slots = restored.state[model.weight]
    assert slots["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(slots["exp_avg"], optimizer.state[model.weight]["exp_avg"])
    assert torch.equal(slots["step"], optimizer.state[model.weight]["step"])


def test_save_creates_the_folders_and_stores_any_tensor(tmp_path):
    """Missing parent folders are made; tensors that require gradients or are views are stored as their values."""
    path = tmp_path / "run" / "deeper" / "state.safetensors"
    weight = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    checkpoints.save(path, {"w": weight, "view": weight.detach().t()}, {"step": 1})
    checkpoints.save(path, {"w": weight * 2}, {"step": 2})  # and overwritten in the folder that now exists
    tensors, meta = checkpoints.load(path)
    assert meta == {"step": 2} and set(tensors) == {"w"}
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3) * 2) and not tensors["w"].requires_grad


@pytest.mark.parametrize("kept", [0.5, 0.01])
def test_a_truncated_file_is_a_value_error_naming_it(tmp_path, kept):
    path = tmp_path / "run" / "checkpoint.safetensors"
    checkpoints.save(path, {"w": torch.ones(100)}, {"step": 3})
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * kept)])
    with pytest.raises(ValueError, match=f"{path.resolve()} is damaged or truncated"):
        checkpoints.load(path)
