"""Re-execute every chapter when the code or data the chapters run on changes.

The book executes its chapters through jupyter-cache (``execute_notebooks:
cache``), which re-executes a chapter only when that chapter's code cells
change, and Sphinx re-reads only the chapters whose source changed. Neither
notices a change to the library, to the stored artifacts or to the pinned
requirements, all of which change what a cell prints.

So the build keeps, beside its outputs, a key: a hash of the files in
``KEY_SOURCES``. When the key differs from the one recorded by the last
successful build (or none was recorded, as in a fresh clone), the execution
cache is deleted and every chapter is read, and so executed, again. The new key
is recorded when the build finishes without an exception.

A build that warned (and so failed under ``-W``) leaves no ``.clean-<builder>``
mark, and the next build with that builder reads every chapter again (from the
execution cache, without executing them), so that a warning fails every build
until it is fixed instead of hiding behind Sphinx's incremental reading.
"""

import hashlib
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
KEY_FILE = ".execution-key"
CLEAN_MARK = ".clean-{builder}"
# What every chapter's output depends on, relative to the repository root: the pinned build
# (requirements.txt; the test tools of requirements-dev.txt and pyproject's loose ranges do not
# change what a cell prints), the library and the stored artifacts.
KEY_SOURCES = ("requirements.txt", "diffusion_lib", "artifacts")
# Never part of the key: byte-code, and an artifact's in-progress training folder (git-ignored, never loaded).
IGNORED_PARTS = ("__pycache__", ".ipynb_checkpoints")


def _ignored(relative: Path) -> bool:
    if any(part in IGNORED_PARTS for part in relative.parts) or relative.suffix == ".pyc":
        return True
    return len(relative.parts) >= 3 and relative.parts[0] == "artifacts" and relative.parts[2] == "run"


def key_files(root: Path) -> list[Path]:
    """The files the key covers, sorted by their path relative to ``root``."""
    found = []
    for source in KEY_SOURCES:
        path = root / source
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        found += [p for p in candidates if not _ignored(p.relative_to(root))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def execution_key(root: Path) -> str:
    """A hash of the names and contents of ``key_files(root)``."""
    digest = hashlib.sha256()
    for path in key_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def recorded_key(build_dir: Path) -> str | None:
    path = build_dir / KEY_FILE
    return path.read_text().strip() if path.is_file() else None


def clear_if_changed(build_dir: Path, cache_dir: Path, key: str) -> bool:
    """Delete ``cache_dir`` when ``key`` is not the key recorded in ``build_dir``; True when it was not."""
    if recorded_key(build_dir) == key:
        return False
    shutil.rmtree(cache_dir, ignore_errors=True)
    return True


def record_key(build_dir: Path, key: str) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / KEY_FILE).write_text(key + "\n")


def repository_root(srcdir: Path) -> Path:
    """The folder above the book that holds the library (the book's source folder is ``book/``)."""
    for folder in (srcdir, *srcdir.parents):
        if (folder / "diffusion_lib").is_dir():
            return folder
    return srcdir.parent


def _build_dir(app: Sphinx) -> Path:
    return Path(app.outdir).resolve().parent


def _cache_dir(app: Sphinx) -> Path:
    configured = app.config["nb_execution_cache_path"]
    return Path(configured).resolve() if configured else _build_dir(app) / ".jupyter_cache"


def check_key(app: Sphinx) -> None:
    build_dir = _build_dir(app)
    app.execution_key = execution_key(repository_root(Path(app.srcdir).resolve()))
    app.execution_key_changed = clear_if_changed(build_dir, _cache_dir(app), app.execution_key)
    mark = build_dir / CLEAN_MARK.format(builder=app.builder.name)
    app.last_build_clean = mark.is_file()
    mark.unlink(missing_ok=True)
    if app.execution_key_changed:
        LOGGER.info("library, artifacts or requirements changed (or no key recorded): executing every chapter")
    elif not app.last_build_clean:
        LOGGER.info("the last build warned or failed: reading every chapter again")


def outdated_docs(app: Sphinx, env, added, changed, removed) -> list[str]:
    return sorted(env.found_docs) if app.execution_key_changed or not app.last_build_clean else []


def record(app: Sphinx, exception) -> None:
    if exception is None:
        record_key(_build_dir(app), app.execution_key)
        if getattr(app, "_warncount", 1) == 0:
            (_build_dir(app) / CLEAN_MARK.format(builder=app.builder.name)).touch()


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_key)
    app.connect("env-get-outdated", outdated_docs)
    app.connect("build-finished", record)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
