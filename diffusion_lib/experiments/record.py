"""What a record of the registry is: an experiment's name, config, builder, sources and the artifacts it needs; and
the builder referred to by name, so that reading the registry imports no builder."""

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field


def later(module, function):
    """experiments/<module>.py's function, imported at its first call: loading one artifact imports only the
    modules that define it (and the book's chapters depend on no other; book/_ext/execution_key.py)."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)(*args, **kwargs)

    call.__module__, call.__qualname__ = f"{__package__}.{module}", function
    return call


def opened_as_is(experiment, network, meta):
    """A loaded artifact whose network is used as it is (a classifier: images -> logits)."""
    return {"model": network}


@dataclass(frozen=True)
class Experiment:
    """A named, stored result: its config, how it is built and loaded, and what defines it.

    build(experiment, folder, device, time_budget, needed) writes the artifact's files and returns its meta
    (None when the time budget ran out first); make_model(experiment, meta) returns the stored network (None for
    an experiment that stores results but no network);
    open(experiment, network, meta) returns what the loaded artifact offers (its model, and for a diffusion
    model its :class:`~diffusion_lib.pipeline.Pipeline`).
    """

    name: str
    description: str
    config: dict
    build: Callable
    make_model: Callable | None
    sources: tuple
    open: Callable = opened_as_is
    needs: tuple = field(default=())
