"""Binder gets the book's exact pins with CPU-only PyTorch, derived from requirements.txt so the two cannot drift."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import binder_requirements  # noqa: E402

BINDER = ROOT / "binder"


def test_binder_requirements_are_generated_from_requirements_txt():
    expected = binder_requirements.binder_requirements((ROOT / "requirements.txt").read_text())
    assert (BINDER / "requirements.txt").read_text() == expected, "binder/requirements.txt is stale: run `make binder`"


def test_binder_takes_cpu_wheels_and_no_cuda_packages():
    text = (BINDER / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == f"--extra-index-url {binder_requirements.CPU_INDEX}"
    pins = dict(binder_requirements.pins("\n".join(lines[1:])))
    assert not [name for name in pins if binder_requirements.CUDA_ONLY.match(name)]
    assert "-r " not in text, "Binder must not pull requirements.txt (the CUDA build of torch)"
    book = dict(binder_requirements.pins((ROOT / "requirements.txt").read_text()))
    assert pins["torch"] == f"{book['torch']}+cpu" and pins["torchvision"] == f"{book['torchvision']}+cpu"
    for name, version in book.items():
        if not binder_requirements.CUDA_ONLY.match(name) and name not in ("torch", "torchvision"):
            assert pins[name] == version, f"{name}: Binder pins {pins.get(name)}, requirements.txt {version}"
    assert "jupytext" in pins and "jupyterlab" in pins


def test_binder_runs_python_311_and_installs_the_library():
    assert (BINDER / "runtime.txt").read_text().strip() == "python-3.11"
    assert "pip install --no-deps -e ." in (BINDER / "postBuild").read_text()


def test_requirements_hold_exact_pins_only():
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-lint.txt"):
        lines = [line for line in (ROOT / name).read_text().splitlines() if not line.startswith("-r ")]
        binder_requirements.pins("\n".join(lines))
    with pytest.raises(ValueError, match="exact pins"):
        binder_requirements.pins("torch>=2.1\n")


def test_the_packages_only_the_cuda_build_needs_are_for_linux_only():
    """pip skips a line whose marker is false, so macOS and Windows install the rest (torch's own wheels there need
    none of these); every other pin installs everywhere."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("==")[0]
        marked = line.endswith('; platform_system == "Linux"')
        assert marked == bool(binder_requirements.CUDA_ONLY.match(name)), line
