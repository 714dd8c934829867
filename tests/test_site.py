"""The site's build machinery, on small inputs: tools/check_site.py and the book's extensions in book/_ext/.

No book build is needed: the checker reads HTML snippets shaped like the built
pages, and the extensions' functions run on temporary folders.
"""

import json
import os
import sys
from pathlib import Path

import pybtex.database
import pytest
import yaml
from sphinx.errors import ExtensionError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import author_year_labels  # noqa: E402
import check_site  # noqa: E402
import execution_key  # noqa: E402
import local_mathjax  # noqa: E402
import unique_inline_scripts  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def page(body: str) -> str:
    return f"<html><head><title>\\(x\\) in a title</title></head><body><main>{body}</main></body></html>"


# --- raw TeX outside math ---------------------------------------------------------------------------------


def test_math_code_and_outputs_are_not_prose():
    html = page(
        '<p>The mean <span class="math notranslate nohighlight">\\(\\mathbf{x}_t\\)</span> costs $5.</p>'
        '<div class="math notranslate nohighlight" id="equation-a">\\[\\sum_{t=1}^T \\beta_t\\]</div>'
        "<p>Call <code>f(x)^{2}</code>.</p><pre>print('$x$ \\\\alpha')</pre>"
        '<div class="cell_output docutils container"><div class="output stream"><pre>$ 3.50 \\beta</pre></div>'
        '<div class="output text_html"><span>$10 \\(a\\)</span></div></div>'
        "<p>A price ($12) and a quote &quot;$3&quot;.</p>"
    )
    assert check_site.raw_tex_in_html(html) == []


def test_formula_broken_by_a_list_item_is_found():
    # "the sum $a\n+ b$ of two things": Markdown reads the wrapped "+ " line as a list item.
    html = page("<p>the sum $a</p><ul><li><p>b$ of two things</p></li></ul>")
    found = check_site.raw_tex_in_html(html)
    assert len(found) == 2 and "$a" in found[0] and "b$" in found[1]


def test_broken_formula_across_inline_tags_is_found():
    html = page(
        '<li><p>\\sigma\\epsilon<span class="math notranslate nohighlight">\\( this becomes \\)</span>M</p></li>'
    )
    assert any("\\sigma" in piece for piece in check_site.raw_tex_in_html(html))


@pytest.mark.parametrize(
    "text",
    ["a \\mathbf{x} here", "opens \\( without math", "x_{t-1} leaked", "e^{2} leaked", "$$ leaked", "it$ ends", "$x$"],
)
def test_each_kind_of_leftover_tex_is_found(text):
    assert check_site.raw_tex_in_html(page(f"<p>{text}</p>")), text


@pytest.mark.parametrize("text", ["costs $5", "($12)", "a price of $3.50 or so", "no dollars \u2013 at all"])
def test_prose_without_tex_passes(text):
    assert check_site.raw_tex_in_html(page(f"<p>{text}</p>")) == []


def test_money_is_judged_within_its_paragraph():
    assert check_site.raw_tex_in_html(page("<p>Total</p><p>$5</p>")) == []


# --- assets and citations ---------------------------------------------------------------------------------


def _site(tmp_path, pages):
    for name, html in pages.items():
        (tmp_path / name).write_text(html)
    return tmp_path


def test_mathjax_from_a_cdn_is_a_problem(tmp_path):
    head = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
    html = f'<html><head>{head}</head><body><span class="math">\\(x\\)</span></body></html>'
    found = list(check_site.asset_problems(_site(tmp_path, {"a.html": html})))
    assert any("not the site's own copy" in p for p in found) and any("favicon" in p for p in found)


def test_local_mathjax_and_favicon_pass(tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-mml-chtml.js").write_text("")
    (tmp_path / "_static" / "favicon.svg").write_text("<svg/>")
    head = '<script src="_static/mathjax/tex-mml-chtml.js?v=1"></script><link rel="icon" href="_static/favicon.svg"/>'
    html = f'<html><head>{head}</head><body><span class="math">\\(x\\)</span></body></html>'
    assert list(check_site.asset_problems(_site(tmp_path, {"a.html": html}))) == []


def test_citations_must_read_as_their_labels(tmp_path):
    references = page(
        '<div class="citation" id="id1"><span class="label">[Ho et al., 2020]</span></div>'
        '<div class="citation" id="id2"><span class="label">[HJA20]</span></div>'
    )
    chapter = page(
        '<span class="bibtex-citation">[<a href="references.html#id1">Ho <em>et al.</em>, 2020</a>]</span>'
        '<span class="bibtex-citation">Ho <em>et al.</em> [<a href="references.html#id1">2020</a>]</span>'
        '<span class="bibtex-citation">[<a href="references.html#id2">Ho <em>et al.</em>, 2020</a>]</span>'
    )
    found = list(check_site.citation_problems(_site(tmp_path, {"references.html": references, "c.html": chapter})))
    assert len(found) == 1 and "HJA20" in found[0]


# --- author-year labels -----------------------------------------------------------------------------------


def test_bibliography_labels_are_author_year_and_unique():
    entries = pybtex.database.parse_file(ROOT / "book" / "references.bib").entries
    labels = {e.key: e.label for e in author_year_labels.AuthorYearLabelsStyle().format_entries(entries.values())}
    assert labels["ho2020denoising"] == "Ho et al., 2020"
    assert labels["kynkaanniemi2019improved"] == "Kynk\u00e4\u00e4nniemi et al., 2019"
    assert labels["goyal2017accurate"] == "Goyal et al., 2017"
    assert labels["bishop2006pattern"] == "Bishop, 2006"
    assert labels["salimans2022progressive"] == "Salimans and Ho, 2022"
    assert len(set(labels.values())) == len(labels), "two entries share a label"


def test_same_authors_and_year_get_letters():
    bib = pybtex.database.parse_string(
        "@article{b, author={Song, Yang and Ermon, Stefano and Kingma, D.}, title={B}, journal={J}, year={2021}}\n"
        "@article{a, author={Song, Yang and Meng, C. and Ermon, Stefano}, title={A}, journal={J}, year={2021}}\n",
        "bibtex",
    )
    style = author_year_labels.AuthorYearLabelsStyle()
    assert sorted(e.label for e in style.format_entries(bib.entries.values())) == [
        "Song et al., 2021a",
        "Song et al., 2021b",
    ]


def test_config_uses_the_author_year_labels():
    config = CONFIG["sphinx"]["config"]
    assert config["bibtex_default_style"] == author_year_labels.STYLE_NAME
    assert config["bibtex_reference_style"] == author_year_labels.STYLE_NAME
    assert set(CONFIG["sphinx"]["local_extensions"]) == {
        "local_mathjax",
        "author_year_labels",
        "unique_inline_scripts",
        "execution_key",
    }


# --- inline scripts written once --------------------------------------------------------------------------


def test_repeated_inline_scripts_are_dropped():
    from sphinx.builders.html._assets import _JavaScript

    body = 'const THEBE_JS_URL = "x"'
    scripts = [
        _JavaScript("doctools.js"),
        _JavaScript(None, body=body),
        _JavaScript("", body=body),
        _JavaScript("a.js"),
    ]
    unique = unique_inline_scripts.unique_scripts(scripts)
    assert [s.filename for s in unique] == ["doctools.js", None, "a.js"]


# --- MathJax served by the site ---------------------------------------------------------------------------


def test_mathjax_path_must_be_the_sites_copy():
    assert local_mathjax.component_of(CONFIG["sphinx"]["config"]["mathjax_path"]) == "tex-mml-chtml.js"
    for bad in ("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js", "tex-mml-chtml.js", "mathjax/es5/x.js"):
        with pytest.raises(ExtensionError, match="mathjax_path"):
            local_mathjax.component_of(bad)


def test_mathjax_is_pinned_exactly_in_package_json():
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    version = package["dependencies"]["mathjax"]
    assert version[0].isdigit() and version.count(".") == 2, f"pin MathJax exactly, not {version!r}"
    assert lock["packages"]["node_modules/mathjax"]["version"] == version


def _fake_mathjax(root: Path, version="3.2.2") -> Path:
    (root / "package.json").write_text(json.dumps({"dependencies": {"mathjax": "3.2.2"}}))
    mathjax = root / "node_modules" / "mathjax"
    (mathjax / "es5").mkdir(parents=True)
    (mathjax / "package.json").write_text(json.dumps({"version": version}))
    (mathjax / "LICENSE").write_text("license")
    (mathjax / "es5" / "tex-mml-chtml.js").write_text("// mathjax")
    (mathjax / "es5" / "tex-svg.js").write_text("// not needed")
    for folder in local_mathjax.RUNTIME_FOLDERS:
        (mathjax / "es5" / folder).mkdir()
        (mathjax / "es5" / folder / "part.js").write_text("// part")
    return mathjax


def test_mathjax_is_found_and_copied(tmp_path):
    mathjax = _fake_mathjax(tmp_path)
    (tmp_path / "book").mkdir()
    assert local_mathjax.find_mathjax(tmp_path / "book") == mathjax
    assert local_mathjax.check_version(mathjax) == "3.2.2"
    script = local_mathjax.copy_mathjax(mathjax, tmp_path / "out" / "_static", "tex-mml-chtml.js")
    assert script == tmp_path / "out" / "_static" / "mathjax" / "tex-mml-chtml.js" and script.is_file()
    assert (script.parent / "output" / "part.js").is_file() and not (script.parent / "tex-svg.js").exists()


def test_missing_or_drifted_mathjax_is_an_error(tmp_path):
    (tmp_path / "package.json").write_text("{}")
    with pytest.raises(ExtensionError, match="npm ci"):
        local_mathjax.find_mathjax(tmp_path)
    mathjax = _fake_mathjax(tmp_path, version="3.1.0")
    with pytest.raises(ExtensionError, match="npm ci"):
        local_mathjax.check_version(mathjax)


# --- re-execution when what a chapter ran on changes ---------------------------------------------------------


def _repository(root: Path) -> Path:
    """A repository with a library of three modules, one artifact (with training progress) and two chapters."""
    library = root / "diffusion_lib"
    (library / "__pycache__").mkdir(parents=True)
    for module in ("__init__", "schedules", "guidance"):
        (library / f"{module}.py").write_text(f"NAME = {module!r}\n")
    (library / "__pycache__" / "schedules.cpython-311.pyc").write_bytes(b"\0")
    (root / "artifacts" / "model" / "run").mkdir(parents=True)
    (root / "artifacts" / "model" / "weights.safetensors").write_bytes(b"weights")
    (root / "artifacts" / "model" / "run" / "checkpoint.safetensors").write_bytes(b"progress")
    (root / "artifacts" / "other").mkdir()
    (root / "artifacts" / "other" / "weights.safetensors").write_bytes(b"other")
    (root / "requirements.txt").write_text("torch==2.14.1\n")
    (root / "book").mkdir()
    for name, load in (("01_chapter", 'artifacts.load("model")'), ("02_chapter", "")):
        (root / "book" / f"{name}.md").write_text(f"# Chapter\n\n```{{code-cell}} ipython3\n{load}\n```\n")
    return root


KEY_INPUTS = (["diffusion_lib", "diffusion_lib.schedules"], ["model"])


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("diffusion_lib/schedules.py", "BETA = 0.2\n"),
        ("diffusion_lib/__init__.py", "from . import schedules\n"),
        ("artifacts/model/weights.safetensors", b"retrained"),
        ("artifacts/model/metrics.json", "{}"),
        ("requirements.txt", "torch==2.14.2\n"),
    ],
)
def test_key_changes_with_the_modules_artifacts_and_requirements_a_chapter_ran_on(tmp_path, path, content):
    root = _repository(tmp_path)
    before = execution_key.chapter_key(root, *KEY_INPUTS)
    target = root / path
    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    assert execution_key.chapter_key(root, *KEY_INPUTS) != before


@pytest.mark.parametrize(
    "path",
    [
        "diffusion_lib/guidance.py",  # not imported by this chapter
        "diffusion_lib/new_module.py",
        "diffusion_lib/__pycache__/schedules.cpython-311.pyc",
        "artifacts/model/run/checkpoint.safetensors",  # training progress, never loaded
        "artifacts/other/weights.safetensors",  # not loaded by this chapter
        "book/01_chapter.md",  # the chapter's own code: jupyter-cache's business
    ],
)
def test_key_ignores_what_the_chapter_did_not_run_on(tmp_path, path):
    root = _repository(tmp_path)
    before = execution_key.chapter_key(root, *KEY_INPUTS)
    (root / path).write_bytes(b"changed")
    assert execution_key.chapter_key(root, *KEY_INPUTS) == before


def test_loaded_artifacts_are_read_from_the_code():
    code = "a = artifacts.load(\"mnist-ddpm\")\nb = artifacts.load( 'mnist-classifier' ).model\n"
    code += 'artifacts.load("mnist-ddpm")'
    assert execution_key.loaded_artifacts(code) == ["mnist-classifier", "mnist-ddpm"]
    assert execution_key.module_file(Path("/r"), "diffusion_lib.models.unet") == Path("/r/diffusion_lib/models/unet.py")


def test_every_chapter_loads_artifacts_by_literal_name():
    """The key finds a chapter's artifacts in its text, so a chapter must name each one it loads."""
    for chapter in sorted((ROOT / "book").glob("[0-9][0-9]_*.md")):
        calls = chapter.read_text().count("artifacts.load(")
        assert calls == len(execution_key.ARTIFACT_LOAD.findall(chapter.read_text())), chapter.name


def test_the_recorder_writes_the_library_modules_a_kernel_imported_and_leaves_no_name(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    imports = tmp_path / "imports" / "01_chapter.json"
    monkeypatch.setenv("IPYTHONDIR", str(execution_key.install_recorder(tmp_path / "_build")))
    monkeypatch.setenv(execution_key.IMPORTS_VARIABLE, str(imports))
    cells = ["import diffusion_lib.schedules", 'assert not {"json", "Path", "_install_import_recorder"} & set(dir())']
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    NotebookClient(notebook, kernel_name="python3", timeout=120).execute(cwd=str(tmp_path))
    modules = json.loads(imports.read_text())["modules"]
    assert {"diffusion_lib", "diffusion_lib.schedules"} <= set(modules) and "diffusion_lib.artifacts" not in modules


class _Env:
    def __init__(self, root: Path):
        self.root, self.found_docs, self.docname = root, {"01_chapter", "02_chapter", "references"}, None

    def doc2path(self, docname):
        return str(self.root / "book" / f"{docname}.md")


class _App:
    """The few attributes of a Sphinx application that the extension reads."""

    class builder:
        name = "html"

    def __init__(self, root: Path):
        self.srcdir = root / "book"
        self.outdir = root / "book" / "_build" / "html"
        self.config = {"nb_execution_cache_path": ""}
        self.env = _Env(root)


def _cache_chapters(app):
    """Put an execution of each chapter into the build's jupyter-cache, as myst-nb does; returns the cache."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(Path(app.outdir).parent / ".jupyter_cache"))
    for docname in ("01_chapter", "02_chapter"):
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {docname!r}")])
        cache.cache_notebook_bundle(
            CacheBundleIn(notebook, app.env.doc2path(docname)), check_validity=False, overwrite=True
        )
    return cache


def _read(app, docname, modules):
    """What a build does while reading a chapter: the kernel records its imports, the chapter's key is recorded."""
    execution_key.before_reading(app, docname, [""])
    path = Path(os.environ[execution_key.IMPORTS_VARIABLE])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"modules": modules}))
    app.env.docname = docname
    execution_key.after_reading(app, None)


def test_only_the_chapters_whose_key_changed_execute_again(tmp_path, monkeypatch):
    monkeypatch.delenv(execution_key.IMPORTS_VARIABLE, raising=False)
    monkeypatch.delenv("IPYTHONDIR", raising=False)
    root = _repository(tmp_path)
    (root / "book" / "references.md").write_text("# References\n")
    app = _App(root)
    cache = _cache_chapters(app)
    execution_key.check_keys(app)  # a fresh build: no key recorded, both chapters execute
    assert execution_key.outdated_docs(app, app.env, set(), set(), set()) == sorted(app.env.found_docs)
    assert cache.list_cache_records() == []
    cache = _cache_chapters(app)
    _read(app, "01_chapter", ["diffusion_lib", "diffusion_lib.schedules"])
    _read(app, "02_chapter", ["diffusion_lib", "diffusion_lib.guidance"])
    app._warncount = 0
    execution_key.record_clean(app, None)

    execution_key.check_keys(app)  # nothing changed since a clean build
    assert execution_key.outdated_docs(app, app.env, set(), set(), set()) == []
    execution_key.record_clean(app, None)
    (root / "diffusion_lib" / "guidance.py").write_text("SCALE = 3\n")
    execution_key.check_keys(app)
    assert execution_key.outdated_docs(app, app.env, set(), set(), set()) == ["02_chapter"]
    assert [Path(r.uri).stem for r in cache.list_cache_records()] == ["01_chapter"]
    _cache_chapters(app)
    _read(app, "02_chapter", ["diffusion_lib", "diffusion_lib.guidance"])
    (root / "artifacts" / "model" / "weights.safetensors").write_bytes(b"retrained")  # loaded by 01 only
    app._warncount = 2  # and the last build warned: read every chapter again, execute only the changed one
    execution_key.record_clean(app, None)
    execution_key.check_keys(app)
    assert execution_key.outdated_docs(app, app.env, set(), set(), set()) == sorted(app.env.found_docs)
    assert [Path(r.uri).stem for r in cache.list_cache_records()] == ["02_chapter"]


def test_execution_is_cached_and_strict():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache" and execute["raise_on_error"] is True
    assert "rm -rf book/_build" not in (ROOT / "Makefile").read_text().split("\nclean:")[0]
