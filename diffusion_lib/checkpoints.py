"""Training state on disk: tensors in safetensors (never pickle), everything else as JSON in its header.

A checkpoint holds the network, its EMA copy, the optimizer's moments and
the random number generators' states, so that a resumed run continues
exactly where the stopped one left off.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file


def write_safetensors(path, tensors, metadata=None):
    """Write tensors (a dict of name -> tensor, copied to the CPU) to path in safetensors, readable as any file this
    process writes (safetensors itself makes its files private to their owner)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path, metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save(path, tensors, meta):
    """Write tensors (a dict of name -> tensor) and meta (JSON-serialisable) to path, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write_safetensors(partial, tensors, {"meta": json.dumps(meta)})
    os.replace(partial, path)


def load(path, device="cpu"):
    """The (tensors, meta) that :func:`save` wrote to path; a ValueError naming the file when it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path.resolve()}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
        return load_file(path, device=str(device)), meta
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path.resolve()} is damaged or truncated ({error}); it cannot be read") from error


def prefixed(prefix, tensors):
    """{prefix.name: tensor} for every entry of tensors."""
    return {f"{prefix}.{name}": tensor for name, tensor in tensors.items()}


def unprefixed(prefix, tensors):
    """The entries of tensors whose names start with prefix., with the prefix removed."""
    start = len(prefix) + 1
    return {name[start:]: tensor for name, tensor in tensors.items() if name.startswith(prefix + ".")}


def optimizer_state(optimizer):
    """An optimizer's state as (tensors, JSON-serialisable hyperparameters)."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value for index, slots in state["state"].items() for key, value in slots.items()}
    return tensors, state["param_groups"]


def restore_optimizer(optimizer, tensors, param_groups):
    """Load into optimizer the state that :func:`optimizer_state` returned."""
    state = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    for param, slots in optimizer.state.items():  # moments take their parameter's memory layout (channels-last)
        for key, value in slots.items():
            if value.shape == param.shape:
                slots[key] = torch.empty_like(param).copy_(value)


def rng_states(device):
    """The global generators' states: the CPU's, and the accelerator's when device is one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states, device):
    """Set the global generators to the states that :func:`rng_states` returned."""
    torch.set_rng_state(states["cpu"].cpu())
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
