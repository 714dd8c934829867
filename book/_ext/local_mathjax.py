"""Serve MathJax from the built site itself, so the book reads offline.

MathJax comes from npm (``package.json`` pins it; ``npm ci`` installs it into
``node_modules/``). At the start of an HTML build this extension copies the
parts of its ``es5`` folder that the page script loads (the combined component
named by ``mathjax_path``, plus the fonts and the extensions it fetches on
demand) into ``_static/mathjax/`` of the output. ``mathjax_path`` must be a
path inside that folder, so that no page asks a CDN for MathJax.
"""

import json
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

STATIC_FOLDER = "mathjax"
# Folders of the es5 distribution that the combined component loads from at run time:
# TeX extensions (autoload), fonts (output), the menu's renderers and accessibility tools.
RUNTIME_FOLDERS = ("input", "output", "a11y", "sre", "ui", "adaptors")


def find_mathjax(start: Path) -> Path:
    """The ``node_modules/mathjax`` folder of the repository holding ``start`` (searched upwards)."""
    for folder in (start, *start.parents):
        candidate = folder / "node_modules" / "mathjax"
        if (candidate / "package.json").is_file():
            return candidate
        if (folder / "package.json").is_file():
            break
    raise ExtensionError(f"MathJax is not installed: run `npm ci` in the repository root (searched from {start})")


def pinned_version(package_json: Path) -> str:
    return json.loads(package_json.read_text())["dependencies"]["mathjax"]


def check_version(mathjax: Path) -> str:
    """The installed version, which must be the one pinned in the repository's package.json."""
    installed = json.loads((mathjax / "package.json").read_text())["version"]
    pinned = pinned_version(mathjax.parent.parent / "package.json")
    if installed != pinned:
        raise ExtensionError(f"node_modules holds MathJax {installed}, package.json pins {pinned}: run `npm ci`")
    return installed


def copy_mathjax(mathjax: Path, static_dir: Path, component: str) -> Path:
    """Copy ``component`` (e.g. ``tex-mml-chtml.js``) and the folders it loads from into ``static_dir/mathjax``."""
    es5 = mathjax / "es5"
    if not (es5 / component).is_file():
        raise ExtensionError(f"mathjax_path names {component!r}, which MathJax's es5 folder does not have")
    target = static_dir / STATIC_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / component, target / component)
    for folder in RUNTIME_FOLDERS:
        shutil.copytree(es5 / folder, target / folder, dirs_exist_ok=True)
    shutil.copy2(mathjax / "LICENSE", target / "LICENSE")
    return target / component


def component_of(mathjax_path: str) -> str:
    """The file name inside ``_static/mathjax/`` that ``mathjax_path`` names; an error for anything else."""
    prefix = f"{STATIC_FOLDER}/"
    if "://" in mathjax_path or not mathjax_path.startswith(prefix) or "/" in mathjax_path[len(prefix) :]:
        raise ExtensionError(
            f"mathjax_path must name a file in the site's own _static/{STATIC_FOLDER}/ "
            f"(e.g. {STATIC_FOLDER}/tex-mml-chtml.js), not {mathjax_path!r}"
        )
    return mathjax_path[len(prefix) :]


def install(app: Sphinx) -> None:
    if app.builder.format != "html":
        return
    component = component_of(app.config.mathjax_path)
    mathjax = find_mathjax(Path(app.srcdir).resolve())
    check_version(mathjax)
    copy_mathjax(mathjax, Path(app.outdir) / "_static", component)


def setup(app: Sphinx) -> dict:
    app.connect("builder-inited", install)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
