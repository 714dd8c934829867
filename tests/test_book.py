"""The book is consistent with itself and with the library.

Chapters are paired with notebooks, start with the Colab install cell, define
every equation the library's docstrings cite, cite only known references, glue
every number they quote, and close with hidden-solution exercises.
"""

import ast
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from diffusion_lib import viz

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.md"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def chapter_ids(path):
    return path.stem


def code_sources(path):
    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "code"]


def test_config_and_toc_are_linked_into_book():
    for name in ("_config.yml", "_toc.yml"):
        link = BOOK / name
        assert link.is_symlink(), f"book/{name} must be a symlink"
        assert not Path(link.readlink()).is_absolute(), f"book/{name} must be a relative link"
        assert link.resolve() == (ROOT / name).resolve()


def test_toc_lists_every_chapter_once():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = [toc["root"]] + [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    assert sorted(p for p in listed if re.match(r"\d\d_", p)) == [p.name for p in CHAPTERS]
    assert all((BOOK / p).exists() for p in listed)


def test_repository_is_configured_for_launch_buttons():
    assert CONFIG["repository"]["url"].startswith("https://github.com/")
    assert CONFIG["repository"]["branch"] == "main"
    assert CONFIG["repository"]["path_to_book"] == "book"
    assert {"colab_url", "binderhub_url"} <= set(CONFIG["launch_buttons"])
    assert "*.ipynb" in CONFIG["exclude_patterns"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_notebook_pair_is_in_sync_and_has_no_outputs(chapter):
    paired = chapter.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `make notebooks`"
    text = jupytext.read(chapter)
    notebook = nbformat.read(paired, as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in text.cells], (
        f"{paired.name} is out of sync with {chapter.name}: run `make notebooks`"
    )
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{paired.name} holds outputs"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_first_cell_installs_the_library_in_colab_and_is_hidden(chapter):
    first = jupytext.read(chapter).cells[0]
    assert first.cell_type == "code"
    assert "remove-cell" in first.metadata.get("tags", [])
    assert '"google.colab" in sys.modules' in first.source
    assert f"git+{CONFIG['repository']['url']}" in first.source
    if "DIFFUSION_ARTIFACTS" in first.source:  # chapters that load stored results clone them from the repository
        assert f"git clone --quiet --depth 1 {CONFIG['repository']['url']} " in first.source


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_code_cells_import_the_library_and_seed(chapter):
    code = "\n".join(code_sources(chapter)[1:])
    assert "diffusion_lib" in code
    assert "manual_seed" in code


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_figures_are_drawn_for_the_text_column(chapter):
    """Each chapter with figures uses the book's style, and no figure is wider than the column (viz.py)."""
    code = "\n".join(code_sources(chapter))
    if "plt." in code or "viz." in code:
        assert "viz.use_book_style()" in code
    widths = [float(width) for width in re.findall(r"figsize=\(([0-9.]+),", code)]
    assert all(width <= viz.COLUMN_WIDTH for width in widths), f"figure widths {widths} exceed the column"


def _docstring_equation_labels():
    labels = {}
    for module in (ROOT / "diffusion_lib").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node):
                for label in re.findall(r"eqs?\. `([\w-]+)`(?: and `([\w-]+)`)?", ast.get_docstring(node)):
                    for name in filter(None, label):
                        labels.setdefault(name, f"{module.relative_to(ROOT)}:{node.name}")
    return labels


def _defined_equation_labels():
    defined = {}
    for chapter in CHAPTERS:
        for label in re.findall(r"\$\$\s*\(([\w-]+)\)", chapter.read_text()):
            assert label not in defined, f"equation label {label} defined in {defined.get(label)} and {chapter.name}"
            defined[label] = chapter.name
    return defined


def test_every_equation_the_library_cites_is_in_the_book():
    defined = _defined_equation_labels()
    cited = _docstring_equation_labels()
    assert cited, "no docstring cites an equation"
    missing = {label: where for label, where in cited.items() if label not in defined}
    assert not missing, f"docstrings cite equations no chapter defines: {missing}"


def test_citations_exist_in_the_bibliography():
    keys = set(re.findall(r"@\w+\{([^,]+),", (BOOK / "references.bib").read_text()))
    for chapter in CHAPTERS:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", chapter.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{chapter.name} cites unknown key {key.strip()!r}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_every_glued_number_is_computed_in_the_chapter(chapter):
    used = set(re.findall(r"\{glue(?::\w+)?\}`([\w.-]+?)(?::[^`]*)?`", chapter.read_text()))
    code = "\n".join(code_sources(chapter))
    glued = re.findall(r"glue\(\s*f?[\"']([\w.{}-]+)[\"']", code)
    patterns = [re.compile(re.sub(r"\\\{\w+\\\}", r"[\\w.-]+", re.escape(key))) for key in glued]
    missing = sorted(key for key in used if not any(pattern.fullmatch(key) for pattern in patterns))
    assert not missing, f"{chapter.name} quotes glue keys no cell computes: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=chapter_ids)
def test_exercises_have_hidden_solutions(chapter):
    text = chapter.read_text()
    exercises = re.findall(r"```\{exercise\}\s*\n:label: ([\w-]+)", text)
    solutions = re.findall(r"```\{solution\} ([\w-]+)\s*\n:class: dropdown", text)
    assert len(exercises) >= 3, f"{chapter.name} has {len(exercises)} exercises, at least 3 expected"
    assert sorted(exercises) == sorted(solutions), f"{chapter.name}: every exercise needs a dropdown solution"


def test_binder_installs_the_pinned_build_and_the_library():
    assert "Generated from ../requirements.txt" in (ROOT / "binder" / "requirements.txt").read_text()
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()
    assert "jupytext" in (ROOT / "requirements.txt").read_text()
