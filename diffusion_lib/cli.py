"""What the command lines share: their arguments' types, each refusing a bad value in one line that names it."""

import argparse

from .inference import unavailable_device


def usable_device(text):
    """A --device argument: cpu, or cuda / cuda:N where this machine has that GPU."""
    problem = unavailable_device(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
