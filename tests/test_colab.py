"""Each chapter's Colab install cell, run the way Colab runs it, against a local copy of the repository.

The chapters share a few install cells, word for word. Each distinct one runs once, in a
fresh kernel in an empty working directory that stands for Colab's /content, with a stand-in
``google.colab`` module imported first (Colab imports the real one at start-up, which is what
the install cell tests for). The install cell runs unchanged except for one thing: an absolute
/content path in it is moved to that working directory. Its network is replaced by local files:

* GitHub: a temporary git configuration (GIT_CONFIG_GLOBAL) rewrites the repository's URL
  (from _config.yml) to a local git repository holding the working tree's library and
  artifacts, so pip's ``git+`` install and ``git clone`` fetch from it;
* ``%pip install`` installs into a temporary target directory on PYTHONPATH, without
  dependencies (PIP_TARGET, PIP_NO_DEPS), so the virtual environment is not touched; the
  packages it names (the library, myst-nb) come from that local repository and PyPI.

Then, for every chapter notebook (book/NN_*.ipynb), a fresh kernel with what its install
cell left behind (the installed packages, the cloned artifacts, DIFFUSION_ARTIFACTS) runs the
chapter's first code cell (its imports and set-up); the library must import from the freshly
installed copy, not from this checkout, and every artifact the chapter loads must load from
the folder the install cell points DIFFUSION_ARTIFACTS at. Executing the whole chapter is the
book build's job.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
URL = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
# What `pip install git+URL` and `git clone URL` need: the package and its metadata, and the artifacts.
REPOSITORY_FILES = ("pyproject.toml", "README.md", "LICENSE", "diffusion_lib", "artifacts")
ARTIFACT_LOAD = re.compile(r"artifacts\.load\(\s*[\"']([\w.-]+)[\"']")


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """A local git repository standing in for GitHub's: this checkout's library and artifacts, committed."""
    repository = tmp_path_factory.mktemp("remote")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "run", "*.egg-info")
    for name in REPOSITORY_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repository / name, ignore=ignore)
        else:
            shutil.copy2(source, repository / name)
    git = ["git", "-C", str(repository), "-c", "user.name=book", "-c", "user.email=book@localhost"]
    subprocess.run([*git, "init", "--quiet", "--initial-branch=main"], check=True)
    subprocess.run([*git, "add", "--all"], check=True)
    subprocess.run([*git, "commit", "--quiet", "--message=snapshot"], check=True)
    return repository


def colab_environment(tmp_path: Path, remote: Path) -> dict:
    fake = tmp_path / "fake-colab"
    (fake / "google" / "colab").mkdir(parents=True)  # `google` stays a namespace package
    (fake / "google" / "colab" / "__init__.py").write_text('"""Stands in for Colab\'s module in tests."""\n')
    gitconfig = tmp_path / "gitconfig"
    subprocess.run(
        ["git", "config", "--file", str(gitconfig), f"url.{remote.as_uri()}.insteadOf", URL],
        check=True,
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "GIT_", "DIFFUSION_"))}
    env.update(
        GIT_CONFIG_GLOBAL=str(gitconfig),
        GIT_CONFIG_NOSYSTEM="1",
        PIP_TARGET=str(tmp_path / "site-packages"),
        PIP_NO_DEPS="1",
        PIP_NO_BUILD_ISOLATION="0",  # pip reads this "no-" option inverted: 0 turns build isolation off
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PYTHONPATH=os.pathsep.join([str(tmp_path / "site-packages"), str(fake)]),
        MPLBACKEND="agg",
    )
    return env


def first_cells(chapter: Path) -> tuple[str, str, list[str]]:
    """The install cell, the first cell after it, and the artifacts the chapter loads."""
    code = [cell.source for cell in nbformat.read(chapter, as_version=4).cells if cell.cell_type == "code"]
    return code[0], code[1], sorted(set(ARTIFACT_LOAD.findall("\n".join(code))))


def execute(cells, cwd, env):
    """Run the cells in a fresh kernel; fail with the first error a cell raised."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    client = NotebookClient(notebook, kernel_name="python3", timeout=300, allow_errors=True)
    client.execute(cwd=str(cwd), env=env)
    for cell in notebook.cells:
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{cell.source[:300]}\n" + "\n".join(
            f"{e.ename}: {e.evalue}\n" + "\n".join(e.traceback[-3:]) for e in errors
        )
    return notebook


@pytest.fixture(scope="module")
def installed(remote, tmp_path_factory):
    """Each distinct install cell of the chapters, run once as Colab runs it: {cell: (site-packages, /content,
    the DIFFUSION_ARTIFACTS it set or None)}. The chapters share a few install cells, word for word."""
    found = {}
    for install in sorted({first_cells(chapter)[0] for chapter in CHAPTERS}):
        assert URL in install, f"an install cell does not install from {URL}:\n{install}"
        tmp_path = tmp_path_factory.mktemp("colab")
        content, site = tmp_path / "content", tmp_path / "site-packages"
        content.mkdir()
        site.mkdir()  # present from the start, as Colab's site-packages is, so the kernel's import system watches it
        report = tmp_path / "artifacts-folder.txt"
        record = (
            f"import os, pathlib\npathlib.Path({str(report)!r}).write_text(os.environ.get('DIFFUSION_ARTIFACTS', ''))"
        )
        env = colab_environment(tmp_path, remote)
        execute(["import google.colab", install.replace("/content", str(content)), record], content, env)
        assert (site / "diffusion_lib").is_dir() and (site / "myst_nb").is_dir()
        found[install] = (site, content, env, report.read_text() or None)
    return found


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda path: path.stem)
def test_install_cell_works_in_colab(chapter, installed):
    install, setup, names = first_cells(chapter)
    site, content, env, folder = installed[install]
    env = dict(env)
    if folder:  # what the install cell set in its kernel, set here for the chapter's own kernel
        env["DIFFUSION_ARTIFACTS"] = folder
    check = f"""
import os, diffusion_lib
from diffusion_lib import artifacts
assert diffusion_lib.__file__.startswith({str(site)!r}), diffusion_lib.__file__
names = {names!r}
if names:
    folder = os.environ.get("DIFFUSION_ARTIFACTS", "")
    assert os.path.isdir(folder) and folder.startswith({str(content)!r}), folder
for name in names:
    artifacts.load(name)
"""
    execute(["import google.colab", setup, check], content, env)
