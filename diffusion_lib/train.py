"""The command line of the training engine: options named like the fields of :class:`TrainConfig`.

python -m diffusion_lib.train --dataset mnist --steps 20000 --out runs/mnist
"""

import argparse
import dataclasses
import json
import os

from .engine import TrainConfig, train


def parse_config(argv=None):
    """A TrainConfig from command-line options named like its fields (--batch_size 256, --channel_mults 1,2,2)."""
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib.train", description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(TrainConfig):
        if field.type in ("bool | None", bool | None):
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default)
        elif field.type in ("tuple[int, ...]", tuple[int, ...]):
            parser.add_argument(f"--{field.name}", type=_int_tuple, default=field.default, metavar="N,N,...")
        else:
            parser.add_argument(f"--{field.name}", type=_base_type(field.type), default=field.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def _int_tuple(text):
    return tuple(int(part) for part in text.split(",") if part)


def _base_type(annotation):
    return next(kind for kind in (int, float, str) if kind in getattr(annotation, "__args__", (annotation,)))


def main(argv=None):
    summary = train(parse_config(argv))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
