"""The repository's address lives in _config.yml; every other place agrees, and one command moves them all."""

import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import set_repository  # noqa: E402

FORK = "https://github.com/a-reader/my-diffusion-notes"


def test_every_place_names_the_configured_repository():
    assert set_repository.disagreements() == []
    chapters = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))
    for chapter in chapters:
        assert set_repository.mentions(chapter), f"{chapter.name}: its install cell names no repository"
    kinds = {kind for kind, _ in set_repository.mentions(ROOT / "README.md")}
    assert kinds == {"repository", "pages", "binder", "colab"}, f"README.md links to {kinds}"


def test_a_stray_address_is_reported(tmp_path):
    root = _copy(tmp_path)
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\nClone https://github.com/someone/else too.\n")
    assert [p for p in set_repository.disagreements(root) if "someone/else" in p]


def _copy(tmp_path: Path) -> Path:
    """_config.yml, README.md and the chapters with their notebooks, in a temporary repository."""
    (tmp_path / "book").mkdir()
    for name in ("_config.yml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for path in set_repository.places(ROOT)[1:]:
        shutil.copy(path, tmp_path / "book" / path.name)
    return tmp_path


def test_one_command_moves_every_place(tmp_path):
    root = _copy(tmp_path)
    before = {path.name: path.read_text() for path in [root / "_config.yml", *set_repository.places(root)]}
    assert set_repository.main([FORK], root) == 0
    config = yaml.safe_load((root / "_config.yml").read_text())
    assert config["repository"]["url"] == FORK
    assert set_repository.disagreements(root) == []
    old = set_repository.forms(*set_repository.configured(ROOT))
    for path in [root / "_config.yml", *set_repository.places(root)]:
        text = path.read_text()
        assert not any(address in text for address in old.values()), f"{path.name} still names the old repository"
        # Only the addresses changed: with the new ones put back, each file is what it was.
        for kind, address in set_repository.forms("a-reader", "my-diffusion-notes").items():
            text = text.replace(address, old[kind])
        assert text == before[path.name], f"{path.name}: more than the addresses changed"
    for chapter in sorted((root / "book").glob("[0-9][0-9]_*.md")):
        assert f"git+{FORK}" in jupytext.read(chapter).cells[0].source
        if not chapter.with_suffix(".ipynb").exists():
            continue  # a chapter being written, not yet paired (tests/test_book.py says so)
        notebook = nbformat.read(chapter.with_suffix(".ipynb"), as_version=4)
        assert [c.source for c in notebook.cells] == [c.source for c in jupytext.read(chapter).cells]
    readme = (root / "README.md").read_text()
    assert "https://a-reader.github.io/my-diffusion-notes/" in readme


@pytest.mark.parametrize(
    "url", ["https://gitlab.com/a/b", "github.com/a/b", "https://github.com/a", "https://github.com/a/b/tree/main"]
)
def test_not_a_repository_address_is_refused(url):
    with pytest.raises(ValueError, match="GitHub repository URL"):
        set_repository.parse(url)


def test_trailing_slash_and_git_suffix_are_accepted():
    assert set_repository.parse("https://github.com/Owner/name.git") == ("Owner", "name")
    assert set_repository.parse("https://github.com/Owner/name/") == ("Owner", "name")
    assert set_repository.forms("Owner", "name")["pages"] == "https://owner.github.io/name/"
