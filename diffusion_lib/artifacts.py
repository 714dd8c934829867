"""Named experiments, computed once (on a GPU) and stored in ``artifacts/<name>/`` for the book to load.

Each artifact folder holds ``weights.safetensors``, ``meta.json`` (the config
and its hash, the hash of the library source that defines the model and its
training, git commit, device, wall time, steps, final loss), ``metrics.json``
and, for generative models, ``samples.safetensors``, ``samples.png`` and
``history.json`` (the training curve).

    python -m diffusion_lib.artifacts status
    python -m diffusion_lib.artifacts build mnist-ddpm --device cuda --time-budget 540

A build is resumable: it stops cleanly when its time budget is spent, keeps
its progress under ``artifacts/<name>/run/`` and continues on the next call.
"""

import argparse
import ast
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import checkpoints, data, metrics
from .models.classifier import Classifier
from .sampling import as_eps_model, sample
from .schedules import NoiseSchedule
from .train import TrainConfig, build_unet, fit_classifier, train

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Experiment:
    """A named artifact: what it is, how it is built, and which library files define it."""

    name: str
    description: str
    kind: str
    config: dict
    sources: tuple
    needs: tuple = field(default=())


EXPERIMENTS = {
    e.name: e
    for e in [
        Experiment(
            "mnist-classifier",
            "A small CNN trained on the MNIST training set; the judge of generated digits and the feature map of FID.",
            "classifier",
            {"dataset": "mnist", "epochs": 8, "batch_size": 128, "lr": 1e-3, "seed": 0},
            ("models/classifier.py", "train.py:fit_classifier", "train.py:cosine_learning_rate"),
        ),
        Experiment(
            "mnist-ddpm",
            "An unconditional DDPM U-Net on MNIST (epsilon prediction, linear schedule, T = 1000), EMA weights.",
            "ddpm",
            {
                "train": dataclasses.asdict(
                    TrainConfig(
                        dataset="mnist",
                        batch_size=512,
                        steps=8000,
                        lr=1e-3,
                        warmup=500,
                        ema_decay=0.999,
                        dropout=0.1,
                        log_every=100,
                        checkpoint_every=2000,
                    )
                ),
                "evaluation": {"num_samples": 10_000, "sampling_steps": 1000, "batch_size": 5000, "seed": 1},
            },
            ("models/unet.py", "models/embeddings.py", "train.py", "losses.py", "schedules.py", "sampling.py"),
            needs=("mnist-classifier",),
        ),
    ]
}


def root():
    """The artifacts folder: $DIFFUSION_ARTIFACTS, else artifacts/ beside the library's source."""
    return Path(os.environ.get("DIFFUSION_ARTIFACTS") or PACKAGE.parent / "artifacts")


def experiment(name):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown artifact {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def config_hash(exp):
    return hashlib.sha256(json.dumps(exp.config, sort_keys=True).encode()).hexdigest()[:16]


def source_hash(exp):
    """A hash of the library source an experiment depends on: whole files ("train.py") or single
    top-level definitions in them ("train.py:fit_classifier")."""
    digest = hashlib.sha256()
    for source in exp.sources:
        digest.update(_source(source).encode())
    return digest.hexdigest()[:16]


def _source(entry):
    file, _, name = entry.partition(":")
    text = (PACKAGE / file).read_text()
    if not name:
        return text
    node = next(node for node in ast.parse(text).body if getattr(node, "name", None) == name)
    return ast.get_source_segment(text, node)


def _rebuild_hint(name):
    return f"python -m diffusion_lib.artifacts build {name} --device cuda"


@dataclass
class Artifact:
    """A loaded artifact: ``model`` (eval mode, CPU, float32), and for diffusion models ``schedule`` and
    ``image_shape``; ``meta`` and ``metrics`` as stored, ``path`` its folder."""

    name: str
    path: Path
    model: object
    meta: dict
    metrics: dict
    schedule: NoiseSchedule | None = None
    image_shape: tuple | None = None

    def tensors(self, filename):
        """The tensors stored in another safetensors file of this artifact (e.g. samples.safetensors)."""
        return load_file(self.path / filename)

    def history(self):
        """The training curve: a list of {step, loss, lr, images_per_second, seconds}."""
        return json.loads((self.path / "history.json").read_text())


def _stored_meta(path):
    """The meta.json of the artifact in path, or None when its meta or weights are missing."""
    if not (path / "meta.json").exists() or not (path / "weights.safetensors").exists():
        return None
    return json.loads((path / "meta.json").read_text())


def load(name):
    """Load the named artifact, checking that it exists and matches its definition.

    Raises FileNotFoundError (missing) or ValueError (built from another
    config, or weights that do not fit the model), each naming the command
    that rebuilds it.
    """
    exp = experiment(name)
    path = root() / name
    meta = _stored_meta(path)
    if meta is None:
        raise FileNotFoundError(
            f"artifact {name!r} is missing (no meta.json and weights.safetensors in {path.resolve()}); "
            f"build it with: {_rebuild_hint(name)}"
        )
    if meta["config_hash"] != config_hash(exp):
        raise ValueError(
            f"artifact {name!r} was built from another config (hash {meta['config_hash']}, now {config_hash(exp)}); "
            f"rebuild it with: {_rebuild_hint(name)}"
        )
    model = _model(exp, tuple(meta.get("image_shape", (1, 28, 28))))
    try:
        model.load_state_dict({k: v.float() for k, v in load_file(path / "weights.safetensors").items()})
    except RuntimeError as error:
        hint = _rebuild_hint(name)
        raise ValueError(f"artifact {name!r} does not fit its model ({error}); rebuild it with: {hint}") from error
    model.eval().requires_grad_(False)
    found = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    artifact = Artifact(name, path, model, meta, found)
    if exp.kind == "ddpm":
        config = TrainConfig(**exp.config["train"])
        artifact.schedule = NoiseSchedule.named(config.schedule, T=config.T)
        artifact.model = as_eps_model(model, artifact.schedule, config.prediction)
        artifact.image_shape = tuple(meta["image_shape"])
    return artifact


def _model(exp, image_shape):
    if exp.kind == "classifier":
        return Classifier(image_channels=image_shape[0], image_size=image_shape[1])
    return build_unet(TrainConfig(**exp.config["train"]), image_shape)


def status(name):
    """One of "missing", "stale: config changed", "stale: source changed", or "ok"; plus the device it was built on."""
    exp = experiment(name)
    meta = _stored_meta(root() / name)
    if meta is None:
        return "missing", None
    if meta["config_hash"] != config_hash(exp):
        return "stale: config changed", meta["device"]
    if meta["source_hash"] != source_hash(exp):
        return "stale: source changed", meta["device"]
    return "ok", meta["device"]


def build(name, device, time_budget=None):
    """Build (or continue building) the named artifact and the ones it needs; returns True when complete."""
    exp = experiment(name)
    started = time.perf_counter()
    for needed in exp.needs:
        if status(needed)[0] == "missing" and not build(needed, device, time_budget):
            return False
    remaining = None if time_budget is None else time_budget - (time.perf_counter() - started)
    builder = {"classifier": _build_classifier, "ddpm": _build_ddpm}[exp.kind]
    return builder(exp, root() / exp.name, torch.device(device), remaining)


def _provenance(exp, device, seconds, **extra):
    commit = os.environ.get("GIT_COMMIT")  # set it where the checkout has no (or another) git history
    if not commit:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PACKAGE).stdout
    return {
        "name": exp.name,
        "description": exp.description,
        "config": exp.config,
        "config_hash": config_hash(exp),
        "sources": list(exp.sources),
        "source_hash": source_hash(exp),
        "git_commit": commit.strip(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "cpu_made": device.type == "cpu",
        "torch_version": torch.__version__,
        "built": time.strftime("%Y-%m-%d"),
        "seconds": seconds,
        **extra,
    }


def _write(path, meta, metrics_found, weights):
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().cpu() for k, v in weights.items()}, path / "weights.safetensors")
    (path / "metrics.json").write_text(json.dumps(metrics_found, indent=1))
    (path / "meta.json").write_text(json.dumps(meta, indent=1))


def _mnist(train_split, device):
    images, labels = data.mnist_images(train=train_split)
    return images.to(device), labels.to(device)


def _accuracy(model, images, labels):
    return (metrics.classify(model, images)[1].argmax(dim=1) == labels).float().mean().item()


def _build_classifier(exp, path, device, time_budget):
    config, started = exp.config, time.perf_counter()
    train_images, train_labels = _mnist(True, device)
    test_images, test_labels = _mnist(False, device)
    torch.manual_seed(config["seed"])
    model = _model(exp, tuple(train_images.shape[1:])).to(device)
    generator = torch.Generator().manual_seed(config["seed"])
    losses = fit_classifier(
        model, train_images, train_labels, config["epochs"], config["batch_size"], config["lr"], generator
    )
    found = {
        "test_accuracy": _accuracy(model, test_images, test_labels),
        "train_accuracy": _accuracy(model, train_images, train_labels),
        "epoch_losses": losses,
    }
    seconds = time.perf_counter() - started
    meta = _provenance(exp, device, seconds, steps=config["epochs"] * (len(train_images) // config["batch_size"]))
    meta["final_loss"] = losses[-1]
    _write(path, meta, found, model.state_dict())
    print(f"{exp.name}: test accuracy {found['test_accuracy']:.4f} in {seconds:.0f} s", flush=True)
    return True


def _build_ddpm(exp, path, device, time_budget):
    started = time.perf_counter()
    _forget_other_runs(path / "run", exp.config)
    config = TrainConfig(**{**exp.config["train"], "out": str(path / "run"), "device": str(device)})
    config = dataclasses.replace(config, time_budget=time_budget)
    summary = train(config)
    if not summary["complete"]:
        print(f"{exp.name}: trained {summary['steps']}/{summary['total_steps']} steps; run the build again", flush=True)
        return False
    ema_tensors, _ = checkpoints.load(path / "run" / "ema.safetensors", device)
    image_shape = summary["image_shape"]
    model = _model(exp, image_shape).to(device)
    model.load_state_dict(ema_tensors)
    model.eval().requires_grad_(False)
    schedule = NoiseSchedule.named(config.schedule, T=config.T).to(device)
    eps_model = as_eps_model(model, schedule, config.prediction)

    evaluation = exp.config["evaluation"]
    left = None if time_budget is None else time_budget - (time.perf_counter() - started)
    samples, sampling_seconds = _sample_in_chunks(eps_model, schedule, image_shape, evaluation, path / "run", left)
    if samples is None:
        print(f"{exp.name}: sampling not finished; run the build again", flush=True)
        return False
    trajectory = _filmstrip(eps_model, schedule, image_shape, evaluation["seed"], device)

    classifier = load(exp.needs[0]).model.to(device)
    found = evaluate_samples(samples.to(device), classifier, device)
    found.update(sampling_steps=evaluation["sampling_steps"], sampling_seconds=sampling_seconds)
    meta = _provenance(
        exp,
        device,
        summary["seconds"] + sampling_seconds,
        train_seconds=summary["seconds"],
        steps=summary["steps"],
        final_loss=summary["final_loss"],
        image_shape=list(image_shape),
        parameters=sum(p.numel() for p in model.parameters()),
    )
    _write(path, meta, found, {k: v.half() for k, v in model.state_dict().items()})
    save_file({"samples": to_bytes(samples), "trajectory": trajectory}, path / "samples.safetensors")
    (path / "history.json").write_text((path / "run" / "history.json").read_text())
    from torchvision.utils import save_image

    save_image((samples[:100].float() + 1) / 2, path / "samples.png", nrow=10)
    print(f"{exp.name}: {json.dumps({k: v for k, v in found.items() if k != 'class_fractions'})}", flush=True)
    return True


def _forget_other_runs(run, config):
    """Clear what run/ holds from another config: all of it if training differs, the samples if evaluation does."""
    config = json.loads(json.dumps(config))
    stamp = run / "experiment.json"
    if stamp.exists():
        before = json.loads(stamp.read_text())
        if before["train"] != config["train"]:
            shutil.rmtree(run)
        elif before["evaluation"] != config["evaluation"]:
            for chunk in run.glob("samples_*.safetensors"):
                chunk.unlink()
    run.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(config))


def to_bytes(images):
    """Images in [-1, 1] quantised to uint8 pixel values 0..255 (as stored and as judged)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_bytes(pixels):
    """uint8 pixel values 0..255 back to floats in [-1, 1]."""
    return pixels.float() / 127.5 - 1


@torch.no_grad()
def _sample_in_chunks(eps_model, schedule, image_shape, evaluation, run, time_budget):
    """Draw evaluation["num_samples"] images chunk by chunk, each chunk saved, so that sampling can resume."""
    started, device = time.perf_counter(), schedule.betas.device
    chunks = range(evaluation["num_samples"] // evaluation["batch_size"])
    for chunk in chunks:
        file = run / f"samples_{chunk}.safetensors"
        if file.exists():
            continue
        if time_budget is not None and time.perf_counter() - started > time_budget:
            return None, None
        chunk_started = time.perf_counter()
        generator = torch.Generator(device).manual_seed(evaluation["seed"] * 1_000_003 + chunk)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x = sample(
                eps_model, schedule, (evaluation["batch_size"], *image_shape), generator,
                evaluation["sampling_steps"], device=device,
            )  # fmt: skip
        pixels = to_bytes(x).cpu()  # waits for the device, so the time below is the sampling's
        seconds = time.perf_counter() - chunk_started
        checkpoints.save(file, {"samples": pixels}, {"seconds": seconds})
        print(f"sampled chunk {chunk + 1}/{len(chunks)} in {seconds:.1f} s", flush=True)
    stored = [checkpoints.load(run / f"samples_{chunk}.safetensors") for chunk in chunks]
    samples = torch.cat([tensors["samples"] for tensors, _ in stored])
    return from_bytes(samples), sum(meta["seconds"] for _, meta in stored)


@torch.no_grad()
def _filmstrip(eps_model, schedule, image_shape, seed, device, num_images=10, frames=11):
    """x_t of a few samples at `frames` evenly spaced steps of the reverse process, float16 (frames, n, C, H, W)."""
    generator = torch.Generator(device).manual_seed(seed)
    states = sample(eps_model, schedule, (num_images, *image_shape), generator, trajectory=True, device=device)
    keep = torch.linspace(0, len(states) - 1, frames).round().long()
    return states[keep].half().cpu()


@torch.no_grad()
def evaluate_samples(samples, classifier, device, reference_size=10_000):
    """The book's measures of generated digits, against the MNIST test set; see the evaluation chapter.

    Returns the fraction classified with confidence >= 0.9, the class
    fractions, the FID to the test set beside its floor (reference_size
    training images against the test set), and the median distance from a
    sample, and from a test image, to its nearest training image.
    """
    train_images, _ = _mnist(True, device)
    test_images, _ = _mnist(False, device)
    features, probabilities = metrics.classify(classifier, samples)
    test_features, _ = metrics.classify(classifier, test_images)
    train_features, _ = metrics.classify(classifier, train_images[:reference_size])
    flat_train = train_images.flatten(1)
    return {
        "num_samples": len(samples),
        "confident_fraction": metrics.confident_fraction(probabilities, 0.9),
        "class_fractions": metrics.class_fractions(probabilities).tolist(),
        "fid": metrics.fid(features, test_features),
        "fid_floor": metrics.fid(train_features, test_features),
        "median_nearest_train_distance": metrics.nearest_distances(samples.flatten(1), flat_train).median().item(),
        "median_test_nearest_train_distance": metrics.nearest_distances(test_images.flatten(1), flat_train)
        .median()
        .item(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.artifacts", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build", help="build (or continue building) artifacts")
    build_parser.add_argument("names", nargs="+", choices=list(EXPERIMENTS))
    build_parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    build_parser.add_argument("--time-budget", type=float, default=None, help="seconds; stop cleanly after them")
    commands.add_parser("status", help="list the artifacts and whether each is missing, stale or ok")
    args = parser.parse_args(argv)
    if args.command == "status":
        for name in EXPERIMENTS:
            state, device = status(name)
            print(f"{name:20s} {state}" + (f" (built on {device})" if device else ""))
        return
    started = time.perf_counter()
    for name in args.names:
        left = None if args.time_budget is None else args.time_budget - (time.perf_counter() - started)
        if not build(name, args.device, left):
            raise SystemExit(f"{name}: not finished within the time budget; run the same command again to continue")


if __name__ == "__main__":
    main()
