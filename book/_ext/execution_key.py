"""Execute a chapter again exactly when something it runs on has changed.

The book executes its chapters through jupyter-cache (``execute_notebooks:
cache``), which executes a chapter again when its code cells change, and
Sphinx reads again only the chapters whose source changed. Neither notices a
change to the library, to a stored artifact or to the pinned requirements,
all of which change what a cell prints.

So each chapter has a key: a hash of what it ran on when it last executed,

* the library modules its kernel had imported (recorded after every cell by
  ``record_imports.py``, which the build installs as an IPython start-up
  file of the kernels it starts),
* the files of every artifact its code loads (``artifacts.load("name")``),
* ``requirements.txt``.

When a chapter's key differs from the one recorded when it was last read,
its cached execution is deleted and the chapter is read, and so executed,
again; the other chapters keep theirs. A chapter with no recorded key (a
fresh clone) executes. A change to ``guidance.py`` thus executes the
chapters that imported it, and a change to one artifact the chapters that
load it.

A build that warned (and so failed under ``-W``) leaves no ``.clean-<builder>``
mark, and the next build with that builder reads every chapter again (from the
execution cache, without executing them), so that a warning fails every build
until it is fixed instead of hiding behind Sphinx's incremental reading.
"""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

LOGGER = logging.getLogger(__name__)
KEYS_FILE = ".execution-keys.json"
IMPORTS_FOLDER = ".execution-imports"
CLEAN_MARK = ".clean-{builder}"
PACKAGE = "diffusion_lib"
# The pinned build (the test tools of requirements-dev.txt and pyproject's ranges do not change what a cell prints).
REQUIREMENTS = "requirements.txt"
# The kernels' IPython start-up file, and the variable that tells it where to write (one file per chapter).
RECORDER = Path(__file__).with_name("record_imports.py")
IMPORTS_VARIABLE = "BOOK_IMPORTS_FILE"
ARTIFACT_LOAD = re.compile(r"""artifacts\.load\(\s*["']([\w.-]+)["']""")


def loaded_artifacts(source: str) -> list[str]:
    """The names of the artifacts a chapter's text loads with ``artifacts.load("name")``, sorted."""
    return sorted(set(ARTIFACT_LOAD.findall(source)))


def module_file(root: Path, module: str) -> Path:
    """The source file of a library module: ``a.b`` is ``a/b.py``, or ``a/b/__init__.py`` for a package."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def artifact_files(root: Path, name: str) -> list[Path]:
    """The files of a stored artifact, sorted; its in-progress training folder run/ is never loaded, so not included."""
    folder = root / "artifacts" / name
    if not folder.is_dir():
        return []
    files = (p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != "run")
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def chapter_key(root: Path, modules: list[str], artifacts: list[str]) -> str:
    """A hash of the requirements, the library ``modules`` and the ``artifacts``, each by path and content."""
    digest = hashlib.sha256()
    files = [root / REQUIREMENTS] + [module_file(root, m) for m in sorted(modules) if m.split(".")[0] == PACKAGE]
    files += [path for name in artifacts for path in artifact_files(root, name)]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"missing")
    for name in artifacts:  # an artifact that is missing altogether still counts, by name
        digest.update(f"artifact {name}\0".encode())
    return digest.hexdigest()


def recorded_imports(build_dir: Path, docname: str) -> list[str] | None:
    """The library modules the chapter's kernel had imported when it last executed, or None when unknown."""
    path = build_dir / IMPORTS_FOLDER / f"{docname}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["modules"]
    except (ValueError, KeyError):
        return None


def current_key(root: Path, build_dir: Path, docname: str, source: str) -> str | None:
    """The chapter's key from the files as they are now; None when its imports were never recorded."""
    modules = recorded_imports(build_dir, docname)
    return None if modules is None else chapter_key(root, modules, loaded_artifacts(source))


def recorded_keys(build_dir: Path) -> dict:
    path = build_dir / KEYS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def record_key(build_dir: Path, docname: str, key: str | None) -> None:
    keys = recorded_keys(build_dir)
    keys[docname] = key
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / KEYS_FILE).write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")


def forget_execution(cache_dir: Path, source_path: Path) -> int:
    """Delete the cached executions of the notebook at source_path; returns how many there were."""
    if not cache_dir.is_dir():
        return 0
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_dir))
    stale = [r.pk for r in cache.list_cache_records() if Path(r.uri).resolve() == source_path.resolve()]
    for pk in stale:
        cache.remove_cache(pk)
    return len(stale)


def is_notebook(source: str) -> bool:
    return "```{code-cell}" in source


def repository_root(srcdir: Path) -> Path:
    """The folder above the book that holds the library (the book's source folder is ``book/``)."""
    for folder in (srcdir, *srcdir.parents):
        if (folder / PACKAGE).is_dir():
            return folder
    return srcdir.parent


def _build_dir(app: Sphinx) -> Path:
    return Path(app.outdir).resolve().parent


def _cache_dir(app: Sphinx) -> Path:
    configured = app.config["nb_execution_cache_path"]
    return Path(configured).resolve() if configured else _build_dir(app) / ".jupyter_cache"


def install_recorder(build_dir: Path) -> Path:
    """An IPython folder whose default profile runs record_imports.py at start-up; returns the folder."""
    ipython_dir = build_dir / ".ipython"
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RECORDER, startup / RECORDER.name)
    return ipython_dir


def check_keys(app: Sphinx) -> None:
    build_dir = _build_dir(app)
    app.repository_root = repository_root(Path(app.srcdir).resolve())
    os.environ["IPYTHONDIR"] = str(install_recorder(build_dir))
    mark = build_dir / CLEAN_MARK.format(builder=app.builder.name)
    app.last_build_clean = mark.is_file()
    mark.unlink(missing_ok=True)
    if not app.last_build_clean:
        LOGGER.info("the last build warned or failed: reading every chapter again")


def changed_chapters(app: Sphinx, docnames) -> list[str]:
    """The chapters whose key differs from the recorded one; their cached executions are deleted."""
    build_dir, keys, changed = _build_dir(app), recorded_keys(_build_dir(app)), []
    for docname in sorted(docnames):
        path = Path(app.env.doc2path(docname))
        source = path.read_text() if path.is_file() else ""
        if not is_notebook(source):
            continue
        key = current_key(app.repository_root, build_dir, docname, source)
        if key is None or keys.get(docname) != key:
            forget_execution(_cache_dir(app), path)
            changed.append(docname)
    return changed


def outdated_docs(app: Sphinx, env, added, changed, removed) -> list[str]:
    rerun = changed_chapters(app, env.found_docs)
    if rerun:
        LOGGER.info(f"library, artifacts or requirements changed for: {', '.join(rerun)}")
    return sorted(env.found_docs) if not app.last_build_clean else rerun


def before_reading(app: Sphinx, docname: str, source: list) -> None:
    """Tell the kernel that may execute this chapter where to record its imports."""
    os.environ[IMPORTS_VARIABLE] = str(_build_dir(app) / IMPORTS_FOLDER / f"{docname}.json")


def after_reading(app: Sphinx, doctree) -> None:
    """Record the key of a chapter read without error (executed, or taken from the cache)."""
    docname = app.env.docname
    path = Path(app.env.doc2path(docname))
    source = path.read_text() if path.is_file() else ""
    if is_notebook(source):
        build_dir = _build_dir(app)
        record_key(build_dir, docname, current_key(app.repository_root, build_dir, docname, source))


def record_clean(app: Sphinx, exception) -> None:
    if exception is None and getattr(app, "_warncount", 1) == 0:
        (_build_dir(app) / CLEAN_MARK.format(builder=app.builder.name)).touch()


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", check_keys)
    app.connect("env-get-outdated", outdated_docs)
    app.connect("source-read", before_reading)
    app.connect("doctree-read", after_reading)
    app.connect("build-finished", record_clean)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
