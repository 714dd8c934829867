"""Train a diffusion U-Net on images; stop and continue at will. Options are the fields of TrainConfig.

python -m diffusion_lib.train --dataset mnist --steps 20000
diffusion-train --dataset digits --steps 2000 --channels 32 --channel-mults 1,2 --attention-resolutions 4
"""

import argparse
import dataclasses
import json
import os
import sys

from .engine import train
from .train_config import TrainConfig, problems

GROUPS = {
    "data": "data",
    "model": "model",
    "diffusion": "the diffusion process",
    "optimisation": "optimisation",
    "hardware": "hardware",
    "output": "output and stopping",
}


def program_name(module, script):
    """The program as it was invoked: the console script's name, or python -m and the module."""
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"


def option_names(name):
    """The option's spelling with dashes, shown in the help, and with underscores, as the field is named (accepted,
    so that commands written either way work)."""
    return f"--{name.replace('_', '-')}", f"--{name}"


def _int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


def _parser_type(spec):
    """The argparse type of a field: converts the text and checks the value with the field's check."""
    annotation = str(spec.type)
    convert = int if "int" in annotation else float if "float" in annotation else str
    check_value = spec.metadata["check"]

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {convert.__name__}, got {text!r}") from None
        allowed = check_value(value) if check_value else None
        if allowed:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


def build_parser():
    parser = argparse.ArgumentParser(
        prog=program_name("diffusion_lib.train", "diffusion-train"),
        description=__doc__.split("\n\n")[0],
        epilog="Defaults are shown in brackets. Run the same command again to continue a stopped run.",
    )
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    for spec in dataclasses.fields(TrainConfig):
        group, (dashed, underscored) = groups[spec.metadata["group"]], option_names(spec.name)
        default = ",".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
        shown = {"help": spec.metadata["help"] + ("" if default is None else f" [{default}]")}
        if "bool" in str(spec.type):
            kind = {"action": argparse.BooleanOptionalAction}
        elif "tuple" in str(spec.type):
            kind = {"type": _int_tuple, "metavar": "N,N,..."}
        else:
            kind = {"type": _parser_type(spec), "metavar": spec.name.upper()}
        group.add_argument(dashed, dest=spec.name, default=spec.default, **kind, **shown)
        if underscored != dashed:
            group.add_argument(underscored, dest=spec.name, default=spec.default, **kind, help=argparse.SUPPRESS)
    return parser


def parse_config(argv=None):
    """A checked TrainConfig from command-line options (--batch-size 256, --channel-mults 1,2,2); a bad value
    exits with a one-line error that names the option, the value and what is allowed."""
    parser = build_parser()
    config = TrainConfig(**vars(parser.parse_args(argv)))
    found = problems(config)
    if found:
        name, value, allowed = found[0]
        typed = ",".join(map(str, value)) if isinstance(value, tuple | list) else repr(value)  # as it was given
        parser.error(f"argument {option_names(name)[0]}: must be {allowed}, got {typed}")
    return config


def main(argv=None):
    config = parse_config(argv)
    try:
        summary = train(config)
    except (ValueError, FileNotFoundError) as error:
        build_parser().error(str(error))
    if int(os.environ.get("RANK", "0")) == 0:  # one summary per run, not one per process
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
