"""Binder's requirements, derived from requirements.txt: the same exact pins, with CPU-only PyTorch.

Binder has no GPU, and the CUDA build of torch pulls about 4 GB of nvidia-*, cuda-* and triton
wheels. binder/requirements.txt therefore installs PyTorch's CPU wheels (``torch==X+cpu`` from
PyTorch's CPU index) and leaves out the packages that only the CUDA build needs; every other
pin is copied unchanged, so the two files cannot drift (tests/test_binder.py checks it).

Usage: python tools/binder_requirements.py           write binder/requirements.txt
       python tools/binder_requirements.py --check   exit 1 when it is not what this writes
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "requirements.txt"
TARGET = ROOT / "binder" / "requirements.txt"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$", re.IGNORECASE)
CPU_BUILDS = {"torch", "torchvision"}
# Binder's interface; jupytext (in requirements.txt) lets it open the .md chapters as notebooks.
BINDER_ONLY = ["jupyterlab==4.6.6"]
# name==version, and for the packages only the CUDA build needs, the environment marker that keeps them off other
# systems (PyTorch's own: platform_system == "Linux")
PIN = re.compile(r'^([A-Za-z0-9_.-]+)==([^\s;]+)(?:\s*;\s*platform_system == "Linux")?$')


def pins(text: str) -> list[tuple[str, str]]:
    """The ``name==version`` lines of a requirements file (a Linux-only marker allowed), in order; anything else is
    an error."""
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise ValueError(f"requirements.txt must hold exact pins only (name==version[; marker]), not {line!r}")
        found.append((match.group(1), match.group(2)))
    return found


def binder_requirements(text: str) -> str:
    lines = [
        "# Generated from ../requirements.txt by tools/binder_requirements.py (make binder); do not edit.",
        "# The same pins with PyTorch's CPU wheels: no nvidia-*, cuda-* or triton packages.",
        f"--extra-index-url {CPU_INDEX}",
    ]
    for name, version in pins(text):
        if CUDA_ONLY.match(name):
            continue
        if name.lower() in CPU_BUILDS:
            version = f"{version.split('+')[0]}+cpu"
        lines.append(f"{name}=={version}")
    return "\n".join(lines + BINDER_ONLY) + "\n"


def main(argv: list[str]) -> int:
    expected = binder_requirements(SOURCE.read_text())
    if argv == ["--check"]:
        if TARGET.read_text() != expected:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run `make binder`")
            return 1
        return 0
    if argv:
        print(__doc__)
        return 2
    TARGET.write_text(expected)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
