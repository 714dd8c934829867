"""Draw images from a stored diffusion model or a training run, and write them as a PNG grid and a tensor file.

diffusion-sample mnist-ddpm --n 64 --sampler ddim --steps 50 --seed 0 --out samples/
python -m diffusion_lib.generate runs/digits-1a2b3c4d --n 16 --sampler ddpm --device cpu --out samples/
"""

import argparse
import errno
import json
import math
import os
from pathlib import Path

import torch

from . import artifacts, store
from .cli import usable_device
from .experiments import EXPERIMENTS
from .sampling import SAMPLERS
from .train import program_name

# The stored artifacts that hold a trained diffusion model (those whose config has a training part).
DIFFUSION_MODELS = [name for name, experiment in EXPERIMENTS.items() if "train" in experiment.config]


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return value


def add_sampler_options(group):
    """One flag for each option that some sampler of the registry declares, its help naming the samplers that take
    it; each defaults to None, which leaves the sampler's own default. Returns the options' names."""
    takers = {}
    for row in SAMPLERS.values():
        for option in row.options:
            takers.setdefault(option.name, (option, []))[1].append(row.name)
    for name, (option, samplers) in takers.items():
        flag, where = "--" + name.replace("_", "-"), f"(sampler {', '.join(samplers)})"
        if option.kind is bool:
            group.add_argument(flag, action="store_true", default=None, help=f"{option.help} {where}")
        elif option.kind is float:
            group.add_argument(flag, type=float, default=None, metavar="X",
                               help=f"{option.help}, {option.allowed()} {where} [{option.default}]")  # fmt: skip
        else:
            group.add_argument(flag, choices=option.choices, default=None,
                               help=f"{option.help} {where} [{option.default}]")  # fmt: skip
    return list(takers)


def build_parser():
    parser = argparse.ArgumentParser(
        prog=program_name("diffusion_lib.generate", "diffusion-sample"),
        description=__doc__.split("\n\n")[0],
        epilog="Defaults are shown in brackets. The same options and seed give the same images.",
    )
    source = parser.add_argument_group("model")
    source.add_argument("source", metavar="NAME_OR_RUN_FOLDER",
                        help=f"a stored model ({', '.join(DIFFUSION_MODELS)}) or a training run folder")  # fmt: skip
    source.add_argument("--label", type=int, default=None, help="class label for a conditional model [none]")
    source.add_argument("--guidance-scale", type=finite_float, default=None, metavar="W",
                        help="classifier-free guidance with --label: w = 1 is the conditional model, w > 1 "
                             "strengthens the class, 0 < w < 1 weakens it, w = 0 ignores the label (the unconditional "
                             "model) and w < 0 steers away from the class [none]")  # fmt: skip
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--n", type=positive_int, default=64, help="number of images [64]")
    samplers = "; ".join(f"{row.name}: {row.help}" for row in SAMPLERS.values())
    sampling.add_argument("--sampler", choices=list(SAMPLERS), default="ddpm", help=f"{samplers} [ddpm]")
    sampling.add_argument("--steps", type=positive_int, default=None, help="sampling steps [all T of the model]")
    sampling.add_argument("--seed", type=int, default=0, help="seed of the noises [0]")
    parser.set_defaults(sampler_options=add_sampler_options(sampling))
    hardware = parser.add_argument_group("hardware and output")
    hardware.add_argument("--device", type=usable_device, default="cuda" if torch.cuda.is_available() else "cpu",
                          help="cpu, cuda or cuda:N [cuda if available]")  # fmt: skip
    hardware.add_argument("--out", type=Path, default=Path("samples"), help="folder to write into [samples]")
    return parser


def open_source(source):
    """The artifact of that name, or the training run in that folder."""
    if source in DIFFUSION_MODELS:
        return artifacts.load(source)
    if Path(source).is_dir():
        return artifacts.load_run(source)
    raise ValueError(f"{source!r} is neither a stored diffusion model ({', '.join(DIFFUSION_MODELS)}) nor a run folder")


OUTPUTS = ("samples.png", "samples.safetensors", "settings.json")


def unwritable(out):
    """Why this command may not write into ``out``, or None: it never writes into a stored artifact's folder, nor
    into one that holds files it did not write, nor where a file stands in the way."""
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a folder"
    if (out / "meta.json").exists():
        return f"{out} holds a stored artifact (meta.json); choose another folder"
    others = sorted(path.name for path in out.iterdir() if path.name not in OUTPUTS) if out.is_dir() else []
    if others:
        return f"{out} holds files this command did not write ({', '.join(others[:3])}); choose a new or empty folder"
    return None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {name: getattr(args, name) for name in args.sampler_options if getattr(args, name) is not None}
    try:
        options = SAMPLERS[args.sampler].checked(given)
    except ValueError as error:
        parser.error(f"argument --sampler {args.sampler}: {error}")
    if args.guidance_scale is not None and args.label is None:
        parser.error("argument --guidance-scale: needs --label, the class to steer towards")
    if unwritable(args.out):
        parser.error(f"argument --out: {unwritable(args.out)}")
    try:
        model = open_source(args.source)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if args.steps is not None and model.schedule is not None and args.steps > model.schedule.T:
        parser.error(f"argument --steps: must be at most the model's T = {model.schedule.T}, got {args.steps}")
    try:  # before sampling, so that a folder that cannot be written fails now
        args.out.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as error:
        parser.error(f"argument --out: cannot write to {args.out}: {error.strerror}")
    labels = None if args.label is None else torch.full((args.n,), args.label)
    try:
        images = model.sample(args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, device=args.device,
                              labels=labels, progress=True, guidance_scale=args.guidance_scale, **options)  # fmt: skip
    except ValueError as error:
        parser.error(str(error))
    unsaved = ("out", "sampler_options", *args.sampler_options)
    chosen = {key: value for key, value in vars(args).items() if key not in unsaved}
    settings = {**chosen, **options}  # the options the sampler took, defaults filled in
    store.save_grid(args.out, "samples.png", images, nrow=math.ceil(math.sqrt(args.n)))
    store.save_tensors(args.out, "samples.safetensors", {"images": images})
    store.save_json(args.out, "settings.json", settings)
    print(json.dumps({"images": args.n, "out": str(args.out), "grid": str(args.out / "samples.png")}))


if __name__ == "__main__":
    main()
