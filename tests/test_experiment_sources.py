"""Each stored experiment names, among its sources, everything of the library that its builder's module uses, so
that a change to any of it turns the artifact stale: a function named in its sources, or its whole module."""

import ast
from pathlib import Path

import pytest

import diffusion_lib
from diffusion_lib.experiments import EXPERIMENTS

LIBRARY = Path(diffusion_lib.__file__).parent

# Writing files defines no computation: what they wrote is checked by the SHA-256 of every stored file
# (store.damaged_files), so a change to these shows as a damaged artifact, not a stale one.
WRITERS = {("store.py", name) for name in ("save_weights", "save_tensors", "save_grid", "save_json")}


def library_names_used(module):
    """The (module file, name) pairs that the library module at ``module`` (a path inside the library) uses from
    other library modules: ``from ..m import f`` gives (m.py, f), and ``from .. import m`` then ``m.f`` gives (m.py,
    f)."""
    tree = ast.parse((LIBRARY / module).read_text())
    package, modules, used = Path(module).parent, {}, set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        base = package.parents[node.level - 2] if node.level > 1 else package
        parts = node.module.split(".") if node.module else []
        for alias in node.names:
            as_module = base.joinpath(*parts, alias.name).with_suffix(".py")
            if (LIBRARY / as_module).exists():
                modules[alias.asname or alias.name] = as_module.as_posix()
            else:
                used.add((base.joinpath(*parts).with_suffix(".py").as_posix(), alias.name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            used.add((modules[node.value.id], node.attr))
    return used


def builder_module(experiment):
    return experiment.build.__module__.removeprefix("diffusion_lib.").replace(".", "/") + ".py"


def test_the_reader_of_imports_finds_both_forms():
    used = library_names_used("experiments/conditional.py")
    assert {("store.py", "forget_other_runs"), ("pipeline.py", "Pipeline"), ("engine.py", "train")} <= used
    assert not any(module.endswith("torch.py") for module, _ in used)  # outside the library: not a source


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_an_experiment_names_what_its_builder_uses(name):
    experiment = EXPERIMENTS[name]
    listed = set(experiment.sources)
    module = builder_module(experiment)
    builder = f"{module}:{experiment.build.__qualname__}"
    assert module in listed or builder in listed, f"{name}: its builder {builder} is not among its sources"
    missing = sorted(
        f"{used}:{function}"
        for used, function in library_names_used(module) - WRITERS
        if used != "experiments/__init__.py" and used not in listed and f"{used}:{function}" not in listed
    )
    assert not missing, f"{name}: {module} uses {', '.join(missing)}, which its sources do not name"
