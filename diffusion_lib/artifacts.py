"""Stored results: load an artifact, report whether it is current, build it, from Python or the command line.

Each artifact folder ``artifacts/<name>/`` holds ``weights.safetensors``,
``meta.json`` (the config and its hash, the hash of each piece of library
source that defines the computation, git commit, device, wall time, steps,
final loss and a SHA-256 of every other file) and ``metrics.json``; models
of images also store samples and their training curve.

    python -m diffusion_lib.artifacts status
    python -m diffusion_lib.artifacts build mnist-ddpm --device cuda --time-budget 540

A build is resumable: it stops cleanly when its time budget is spent, keeps
its progress under ``artifacts/<name>/run/`` and continues on the next call.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from . import checkpoints, store
from .cli import usable_device
from .experiments import EXPERIMENTS
from .pipeline import Pipeline


def experiment(name):
    """The registered experiment of that name."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def rebuild_hint(name):
    return f"python -m diffusion_lib.artifacts build {name} --device cuda"


@dataclass
class Artifact:
    """A loaded artifact: ``model`` (eval mode, CPU, float32; for a diffusion model its eps form), ``meta`` and
    ``metrics`` as stored, ``path`` its folder; a diffusion model's :class:`~diffusion_lib.pipeline.Pipeline` in
    ``pipeline``, whose ``schedule`` and ``image_shape`` it shows as its own."""

    name: str
    path: object
    model: object
    meta: dict
    metrics: dict
    status: str = "ok"
    pipeline: Pipeline | None = None

    @property
    def schedule(self):
        return None if self.pipeline is None else self.pipeline.schedule

    @property
    def image_shape(self):
        return None if self.pipeline is None else self.pipeline.image_shape

    def tensors(self, filename):
        """The tensors stored in another safetensors file of this artifact (e.g. samples.safetensors)."""
        return load_file(self.path / filename)

    def history(self):
        """The training curve: a list of {step, loss, lr, images_per_second, seconds}."""
        return json.loads((self.path / "history.json").read_text())

    def sample(self, n, sampler="ddpm", steps=None, eta=0.0, seed=0, device="cpu", labels=None, progress=False,
               guidance_scale=None, **options):  # fmt: skip
        """n images (n, C, H, W) in [-1, 1] (clamped) from this diffusion model, on the CPU in float32: its
        pipeline's :meth:`~diffusion_lib.pipeline.Pipeline.sample`, with the same arguments."""
        if self.pipeline is None:
            raise ValueError(f"artifact {self.name!r} is not a diffusion model; it cannot sample")
        return self.pipeline.sample(n, sampler=sampler, steps=steps, eta=eta, seed=seed, device=device, labels=labels,
                                    progress=progress, guidance_scale=guidance_scale, **options)  # fmt: skip


def load(name):
    """Load the named artifact, checking that it exists, is intact and matches its definition.

    Raises FileNotFoundError (missing) or ValueError (a damaged file, built
    from another config, or weights that do not fit the model), each naming
    the remedy. An artifact whose defining source changed since it was built
    loads; its ``status`` says which source changed.
    """
    exp = experiment(name)
    path = store.root() / name
    state, meta = _check(exp, path)
    if state == "missing":
        raise FileNotFoundError(f"artifact {name!r} is missing (no meta.json in {path.resolve()}); {_remedy(name)}")
    if state.startswith("damaged"):
        raise ValueError(f"artifact {name!r} is {state} in {path.resolve()}; {_remedy(name)}")
    if state == "stale: config changed":
        raise ValueError(
            f"artifact {name!r} was built from another config (hash {meta['config_hash']}, now "
            f"{store.config_hash(exp.config)}); rebuild it with: {rebuild_hint(name)}"
        )
    network = None if exp.make_model is None else exp.make_model(exp, meta)
    if network is not None:
        try:
            network.load_state_dict({k: v.float() for k, v in load_file(path / "weights.safetensors").items()})
        except RuntimeError as error:
            hint = rebuild_hint(name)
            raise ValueError(f"artifact {name!r} does not fit its model ({error}); rebuild it with: {hint}") from error
        network.eval().requires_grad_(False)
    found = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    return Artifact(name, path, meta=meta, metrics=found, status=state, **exp.open(exp, network, meta))


def load_run(folder):
    """A training run folder's EMA network as an Artifact (status "run"), to sample from like a stored one."""
    from .engine import build_unet  # here, so that loading a stored artifact does not import the engine
    from .train_config import TrainConfig

    path = Path(folder)
    if not (path / "ema.safetensors").exists():
        raise FileNotFoundError(f"no training run in {path.resolve()}: it has no ema.safetensors (train it first)")
    tensors, meta = checkpoints.load(path / "ema.safetensors")
    if "image_shape" not in meta:
        raise ValueError(f"{path / 'ema.safetensors'} records no image shape: train the run again to sample from it")
    config = TrainConfig(**meta["config"])
    network = build_unet(config, tuple(meta["image_shape"]), meta["num_classes"])
    network.load_state_dict({k: v.float() for k, v in tensors.items()})
    network.eval().requires_grad_(False)
    pipeline = Pipeline.from_config(network, config, meta["image_shape"], meta["num_classes"])
    return Artifact(path.name, path, pipeline.model, meta, {}, "run", pipeline)


def status(name):
    """The artifact's state, and the device it was built on (None when missing).

    The state is "missing", "damaged: FILE, ..." (a file missing or not the
    one built), "stale: config changed", "stale: source changed in ENTRY, ..."
    (naming the library sources that changed since the build), or "ok".
    """
    state, meta = _check(experiment(name), store.root() / name)
    return state, None if meta is None else meta["device"]


def _check(exp, path):
    try:
        meta = store.read_meta(path)
    except json.JSONDecodeError:
        return "damaged: meta.json", None
    if meta is None:
        return "missing", None
    damaged = store.damaged_files(path, meta)
    if damaged:
        return f"damaged: {', '.join(damaged)}", meta
    if meta["config_hash"] != store.config_hash(exp.config):
        return "stale: config changed", meta
    built_with, now = meta["source_hashes"], store.source_hashes(exp.sources)
    changed = [entry for entry in now if built_with.get(entry) != now[entry]]
    changed += [entry for entry in built_with if entry not in now]
    if changed:
        return f"stale: source changed in {', '.join(changed)}", meta
    return "ok", meta


def _remedy(name):
    return (
        f"if you installed the library without the repository's artifacts/ folder, point DIFFUSION_ARTIFACTS at "
        f"that folder (a clone of the repository has it); otherwise rebuild it with: {rebuild_hint(name)}"
    )


def build(name, device, time_budget=None, force=False):
    """Build (or continue building) the named artifact and the ones it needs; returns True when complete.

    An artifact that is ok is left as it is unless ``force``; so is, with a ValueError, one built on a GPU that a
    build on another device would replace (the CPU recipes are smaller, and the GPU ones would take days there).
    """
    exp = experiment(name)
    state, built_on = status(name)
    if not force and state == "ok":
        print(f"{name} is ok (built on {built_on}); nothing to do (--force rebuilds it)", flush=True)
        return True
    if not force and built_on == "cuda" and torch.device(device).type != "cuda":
        raise ValueError(f"{name} was built on a GPU and is {state}; a build on {device} would replace it with a "
                         f"{device} build: build it on a GPU, or pass --force")  # fmt: skip
    started = time.perf_counter()
    for needed in exp.needs:
        if status(needed)[0] == "missing" and not build(needed, device, time_budget):
            return False
    remaining = None if time_budget is None else max(0.0, time_budget - (time.perf_counter() - started))
    folder = store.root() / name
    extra = exp.build(exp, folder, torch.device(device), remaining, {needed: load(needed) for needed in exp.needs})
    if extra is None:
        return False
    meta = {
        "name": exp.name,
        "description": exp.description,
        "config": exp.config,
        "config_hash": store.config_hash(exp.config),
        "source_hashes": store.source_hashes(exp.sources),
        **store.provenance(device, extra.pop("seconds")),
        **extra,
    }
    store.finish(folder, meta)
    return True


def seconds(text):
    """A time budget from the command line: a number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.artifacts", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build (or continue building) artifacts")
    build_parser.add_argument("names", nargs="+", choices=list(EXPERIMENTS))
    build_parser.add_argument("--device", type=usable_device, default="cuda" if torch.cuda.is_available() else "cpu",
                              help="cpu, cuda or cuda:N [cuda if available]")  # fmt: skip
    build_parser.add_argument("--time-budget", type=seconds, default=None, help="seconds; stop cleanly after them")
    build_parser.add_argument("--force", action="store_true", help="rebuild an artifact that is ok, or a GPU-made "
                              "one on another device")  # fmt: skip
    commands.add_parser("status", help="list the artifacts and whether each is missing, stale or ok")
    args = parser.parse_args(argv)
    if args.command == "status":
        width = max(map(len, EXPERIMENTS))
        for name in EXPERIMENTS:
            state, device = status(name)
            print(f"{name:{width}s} {state}" + (f" (built on {device})" if device else ""))
        return
    started = time.perf_counter()
    for name in args.names:
        left = None if args.time_budget is None else max(0.0, args.time_budget - (time.perf_counter() - started))
        try:
            complete = build(name, args.device, left, args.force)
        except ValueError as error:
            build_parser.error(str(error))
        if not complete:
            raise SystemExit(f"{name}: not finished within the time budget; run the same command again to continue")


if __name__ == "__main__":
    main()
