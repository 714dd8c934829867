"""What defines a training run: :class:`TrainConfig`, its checks, and the run folder it writes to.

Each field carries its command-line group, its help text and a check of its
value, so that the command line (:mod:`diffusion_lib.train`), the engine and
the checks read one definition.
"""

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import data
from .inference import unavailable_device
from .parameterization import PREDICTIONS

SCHEDULES = ("linear", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def positive_int(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        return "a positive integer"


def non_negative_int(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "an integer >= 0"


def positive_number(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        return "a number > 0"


def non_negative_number(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        return "a number >= 0"


def probability(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        return "a number in [0, 1]"


def decay(value):
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        return "a number in [0, 1)"


def positive_ints(value):
    if not isinstance(value, tuple | list) or not value or any(positive_int(v) for v in value):
        return "one or more positive integers, separated by commas"


def one_of(*allowed):
    def check(value):
        if value not in allowed:
            return f"one of {', '.join(map(str, allowed))}"

    return check


def dataset_name(value):
    if not isinstance(value, str) or not (value in data.IMAGE_DATASETS[:-1] or value.startswith("folder:")):
        return f"one of {', '.join(data.IMAGE_DATASETS)}"


def usable_device(value):
    if not isinstance(value, str) or unavailable_device(value):
        return "cpu, or cuda / cuda:N where this machine has that GPU"


def not_an_artifact(value):
    if not isinstance(value, str) or (Path(value) / "meta.json").exists():
        return "a folder without a stored artifact's meta.json"


def optional(check):
    def check_unless_none(value):
        return None if value is None else check(value)

    return check_unless_none


def option(default, group, help, check=None):
    """A TrainConfig field: its default, command-line group, help text and value check."""
    return field(default=default, metadata={"group": group, "help": help, "check": check})


@dataclass
class TrainConfig:
    """Everything that defines a training run; each field is also a command-line option."""

    dataset: str = option("mnist", "data", "the images: mnist, cifar10, celeba, digits or folder:PATH", dataset_name)
    root: str | None = option(None, "data", "folder holding the data sets (default: $DIFFUSION_DATA, else data/)")
    image_size: int | None = option(
        None, "data", "resize images to this square size (required for folder:PATH)", optional(positive_int)
    )
    conditional: bool = option(False, "model", "train with class labels (for classifier-free guidance)")
    class_dropout: float = option(
        0.1, "model", "conditional runs: probability of replacing a label by the null label", probability
    )
    channels: int = option(64, "model", "channels at the first level of the U-Net", positive_int)
    channel_mults: tuple[int, ...] = option((1, 2, 2), "model", "channel multiplier of each level", positive_ints)
    blocks_per_level: int = option(2, "model", "residual blocks per level", positive_int)
    attention_resolutions: tuple[int, ...] = option(
        (7,), "model", "resolutions at which self-attention runs", positive_ints
    )
    dropout: float = option(0.1, "model", "dropout probability in the residual blocks", decay)
    schedule: str = option("linear", "diffusion", "noise schedule: linear or cosine", one_of(*SCHEDULES))
    T: int = option(1000, "diffusion", "number of diffusion steps", positive_int)
    prediction: str = option("eps", "diffusion", "what the network predicts: eps, x0 or v", one_of(*PREDICTIONS))
    steps: int | None = option(
        None, "optimisation", "optimisation steps (give this or --epochs)", optional(positive_int)
    )
    epochs: int | None = option(
        None, "optimisation", "passes over the data (give this or --steps)", optional(positive_int)
    )
    batch_size: int = option(128, "optimisation", "images per optimisation step", positive_int)
    lr: float = option(2e-4, "optimisation", "peak learning rate of AdamW", positive_number)
    warmup: int = option(500, "optimisation", "steps of linear learning-rate warm-up", non_negative_int)
    grad_clip: float = option(1.0, "optimisation", "clip the gradient's norm at this value", positive_number)
    ema_decay: float = option(0.9999, "optimisation", "decay of the exponential moving average of the weights", decay)
    seed: int = option(0, "optimisation", "seed of the weights, batches, steps and noises", non_negative_int)
    device: str | None = option(
        None, "hardware", "cpu, cuda or cuda:N (default: cuda if available)", optional(usable_device)
    )
    bf16: bool | None = option(None, "hardware", "bfloat16 autocast (default: on for CUDA)")
    compile: bool | None = option(None, "hardware", "torch.compile the network (default: on for CUDA)")
    compile_mode: str | None = option(
        None, "hardware", f"torch.compile mode: {', '.join(COMPILE_MODES)}", optional(one_of(*COMPILE_MODES))
    )
    workers: int = option(4, "hardware", "data-loading processes for data sets read from files", non_negative_int)
    out: str | None = option(
        None, "output", "run folder (default: runs/<data set>-<hash of the settings>)", optional(not_an_artifact)
    )
    checkpoint_every: int = option(1000, "output", "steps between checkpoints", positive_int)
    log_every: int = option(50, "output", "steps between records of the training curve", positive_int)
    sample_every: int = option(0, "output", "epochs between sample grids (0: none)", non_negative_int)
    sample_steps: int = option(100, "output", "sampling steps of those grids", positive_int)
    time_budget: float | None = option(
        None, "output", "seconds; stop cleanly with a checkpoint after them", optional(non_negative_number)
    )

    def model_kwargs(self):
        """The U-Net's keyword arguments (without the number of classes, which the data set gives)."""
        names = ("channels", "channel_mults", "blocks_per_level", "attention_resolutions", "dropout")
        return {name: getattr(self, name) for name in names}


def problems(config):
    """Every invalid value of a config, as (field name, value, what is allowed)."""
    found = []
    for spec in dataclasses.fields(TrainConfig):
        check = spec.metadata["check"]
        allowed = check(getattr(config, spec.name)) if check else None
        if allowed:
            found.append((spec.name, getattr(config, spec.name), allowed))
    if (config.steps is None) == (config.epochs is None):
        found.append(("steps", config.steps, "set if and only if --epochs is not"))
    if config.dataset.startswith("folder:") and config.image_size is None:
        found.append(("image_size", None, "a positive integer for folder:PATH data sets"))
    return found


def check(config):
    """Raise a ValueError naming the first invalid field, its value and what is allowed."""
    found = problems(config)
    if found:
        name, value, allowed = found[0]
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


# Fields that change neither the weights a run computes nor how they are computed, only where and how fast it
# runs and what it writes besides them.
NOT_DEFINING = (
    "root", "device", "compile", "compile_mode", "workers", "out", "checkpoint_every", "log_every", "sample_every",
    "sample_steps", "time_budget",
)  # fmt: skip


def defining(config):
    """The fields that define the weights a run computes, as JSON values (class_dropout only when conditional)."""
    values = json.loads(json.dumps(dataclasses.asdict(config)))
    if not config.conditional:
        values.pop("class_dropout")
    return {name: value for name, value in values.items() if name not in NOT_DEFINING}


def differences(saved, config, ignore=()):
    """The defining fields whose values differ between two configs, as "name: saved -> now" strings."""
    before, now = defining(saved), defining(config)
    names = sorted(set(before) | set(now))
    return [f"{name}: {before.get(name)!r} -> {now.get(name)!r}" for name in names
            if before.get(name) != now.get(name) and name not in ignore]  # fmt: skip


def run_folder(config):
    """The run folder: config.out, else runs/<data set>-<8 hex digits of the defining settings>.

    The length of training (steps or epochs) is left out of the hash, so that training a finished run
    longer continues in the same folder.
    """
    if config.out is not None:
        return Path(config.out)
    settings = {k: v for k, v in defining(config).items() if k not in ("steps", "epochs")}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_]+", "-", config.dataset).strip("-")  # folder:/data/my faces -> folder-data-my-faces
    return Path("runs") / f"{name}-{digest}"
