"""The artifact folder: where stored results live, what their meta.json records, and how they are written and checked.

An artifact is a folder ``<root>/<name>/`` holding ``weights.safetensors``,
``meta.json`` and any further files (metrics, samples, history). meta.json
records the config and its hash, a hash of each piece of library source that
defines the computation, provenance (git commit, device, wall time) and a
SHA-256 of every other file of the folder, so that a damaged or replaced file
is caught when the artifact is loaded.
"""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch

from . import checkpoints

PACKAGE = Path(__file__).resolve().parent


def root():
    """The artifacts folder: $DIFFUSION_ARTIFACTS, else artifacts/ beside the library's source."""
    return Path(os.environ.get("DIFFUSION_ARTIFACTS") or PACKAGE.parent / "artifacts")


def config_hash(config):
    """A short hash of a JSON-serialisable config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def source_text(entry):
    """The library source an entry names: a whole file ("engine.py") or one top-level definition ("fit.py:fit")."""
    file, _, name = entry.partition(":")
    text = (PACKAGE / file).read_text()
    if not name:
        return text
    found = [node for node in ast.parse(text).body if getattr(node, "name", None) == name]
    if not found:
        raise ValueError(f"source entry {entry!r}: {file} defines no top-level {name!r}")
    return ast.get_source_segment(text, found[0])


def source_hashes(sources):
    """{entry: short hash of its source text} for every entry of sources."""
    return {entry: hashlib.sha256(source_text(entry).encode()).hexdigest()[:16] for entry in sources}


def file_hash(path):
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_meta(folder):
    """The meta.json of the artifact in folder, or None when it has no meta.json."""
    path = Path(folder) / "meta.json"
    return json.loads(path.read_text()) if path.exists() else None


def damaged_files(folder, meta):
    """The files of an artifact that are missing or whose SHA-256 differs from the one meta.json records."""
    folder = Path(folder)
    return [
        name
        for name, digest in meta["files"].items()
        if not (folder / name).is_file() or file_hash(folder / name) != digest
    ]


def provenance(device, seconds):
    """Where and when a result was computed: git commit, device, wall time, versions."""
    commit = os.environ.get("GIT_COMMIT")  # set it where the checkout has no (or another) git history
    if not commit:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PACKAGE).stdout
    device = torch.device(device)
    return {
        "git_commit": commit.strip(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "cpu_made": device.type == "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "built": time.strftime("%Y-%m-%d"),
        "seconds": seconds,
    }


def save_weights(folder, weights):
    """Write a state dict to folder/weights.safetensors."""
    save_tensors(folder, "weights.safetensors", weights)


def save_tensors(folder, name, tensors):
    """Write a dict of tensors to folder/name in safetensors."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    checkpoints.write_safetensors(Path(folder) / name, tensors)


def save_grid(folder, name, images, nrow):
    """Write images (n, C, H, W) in [-1, 1] as a PNG grid, nrow images per row, 2 pixels apart."""
    from torchvision.utils import save_image

    Path(folder).mkdir(parents=True, exist_ok=True)
    save_image((images.float().clamp(-1, 1) + 1) / 2, Path(folder) / name, nrow=nrow)


def save_json(folder, name, value):
    """Write a JSON-serialisable value to folder/name."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / name).write_text(json.dumps(value, indent=1) + "\n")


def finish(folder, meta):
    """Record the SHA-256 of every file in folder (but meta.json, a meta.json.partial left by a finish that was
    killed, and the run/ folder) and write meta.json last.

    Writing meta.json last makes it the mark of a complete artifact.
    """
    folder, partial = Path(folder), Path(folder) / "meta.json.partial"
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in ("meta.json", partial.name))
    meta = {**meta, "files": {name: file_hash(folder / name) for name in names}}
    partial.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(partial, folder / "meta.json")
    return meta


def forget_other_runs(run, config):
    """Clear what run/ holds from another config: the samples only if the training part ("train") is the same,
    all of it otherwise."""
    config = json.loads(json.dumps(config))
    stamp = run / "experiment.json"
    if stamp.exists():
        before = json.loads(stamp.read_text())
        if "train" in config and before.get("train") == config["train"]:
            if before != config:
                for chunk in run.glob("samples_*.safetensors"):
                    chunk.unlink()
        elif before != config:
            shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(config))
