"""Point the book at another GitHub repository: one command rewrites every place that names it.

The one source is ``repository: url:`` in _config.yml; Jupyter Book makes the repository
button and the Colab and Binder launch buttons from it. Derived from it, and rewritten here:

* the Colab install cell of each chapter (book/NN_*.md and its .ipynb pair): pip's
  ``git+URL`` and, in chapters that load stored results, the ``git clone`` of the repository;
* README.md: the links to the repository, its GitHub Pages site (https://OWNER.github.io/NAME/,
  with the PDF beside it), and Binder and Colab.

Usage: python tools/set_repository.py https://github.com/OWNER/NAME   (or: make repository URL=...)
       python tools/set_repository.py --check   exit 1 when a place disagrees with _config.yml
"""

import argparse
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = re.compile(r"https://github\.com/([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)/([A-Za-z0-9._-]+)")
CONFIG_URL = re.compile(r"(?m)^(repository:\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+url:[ \t]*)(\S+)[ \t]*$")
# Where a README link to a repository other than the book's would go, so the check leaves it alone.
OTHER_REPOSITORIES: tuple[str, ...] = ()
# What may follow an address: a path, a quote (escaped in .ipynb), a bracket, punctuation, a full stop.
END = r"(?=[/\\\s\"'`)>\],;:]|\.(?:\s|$)|$)"
# The README's instructions for forks name the repository as OWNER/NAME: not an address to check.
PLACEHOLDER = re.compile(r"OWNER(?:\.github\.io)?/NAME")


def parse(url: str) -> tuple[str, str]:
    """(owner, name) of a GitHub repository URL, e.g. https://github.com/OWNER/NAME."""
    url = url.strip().removesuffix("/").removesuffix(".git")
    match = REPOSITORY.fullmatch(url)
    if not match or match.group(2) in (".", ".."):
        raise ValueError(f"expected a GitHub repository URL such as https://github.com/OWNER/NAME, got {url!r}")
    return match.group(1), match.group(2)


def forms(owner: str, name: str) -> dict[str, str]:
    """Every form of the repository's address that the book writes, by kind."""
    return {
        "repository": f"https://github.com/{owner}/{name}",
        "pages": f"https://{owner.lower()}.github.io/{name}/",
        "binder": f"https://mybinder.org/v2/gh/{owner}/{name}/",
        "colab": f"https://colab.research.google.com/github/{owner}/{name}/",
    }


# The same forms for any repository, to find what a file says now.
FOUND = {
    "repository": re.compile(r"https://github\.com/[\w.-]+/[\w.-]+?(?:\.git)?" + END),
    "pages": re.compile(r"https://[\w-]+\.github\.io/[\w.-]+/"),
    "binder": re.compile(r"https://mybinder\.org/v2/gh/[\w.-]+/[\w.-]+/"),
    "colab": re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/"),
}


def configured(root: Path = ROOT) -> tuple[str, str]:
    return parse(yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"])


def places(root: Path = ROOT) -> list[Path]:
    """The files that name the repository besides _config.yml."""
    chapters = sorted((root / "book").glob("[0-9][0-9]_*.md")) + sorted((root / "book").glob("[0-9][0-9]_*.ipynb"))
    return [root / "README.md", *chapters]


def mentions(path: Path) -> list[tuple[str, str]]:
    """(kind, address) of every mention of a repository in ``path``.

    In chapters only the install cell's lines count (pip's ``git+`` and ``git clone``), so
    that prose may link other projects; in README.md every GitHub, Pages, Binder and Colab
    address counts, except those of OTHER_REPOSITORIES.
    """
    text = path.read_text()
    if path.name != "README.md":
        lines = [line for line in text.splitlines() if "git+https://" in line or "git clone" in line]
        return [("repository", m.group(0)) for line in lines for m in FOUND["repository"].finditer(line)]
    found = [(kind, m.group(0)) for kind, pattern in FOUND.items() for m in pattern.finditer(text)]
    return [
        (kind, address)
        for kind, address in found
        if not PLACEHOLDER.search(address) and not address.startswith(OTHER_REPOSITORIES or ("\0",))
    ]


def disagreements(root: Path = ROOT) -> list[str]:
    """Each mention, in any place, of a repository other than the one _config.yml names."""
    expected = forms(*configured(root))
    problems = []
    for path in places(root):
        for kind, address in mentions(path):
            if address.removesuffix(".git") != expected[kind]:
                problems.append(f"{path.relative_to(root)}: {address} (expected {expected[kind]})")
    return problems


def set_repository(url: str, root: Path = ROOT) -> list[Path]:
    """Rewrite _config.yml and every derived place to name ``url``; the files changed."""
    old, new = forms(*configured(root)), forms(*parse(url))
    config = root / "_config.yml"
    text = config.read_text()
    rewritten, count = CONFIG_URL.subn(lambda m: m.group(1) + new["repository"], text)
    if count != 1:
        raise ValueError("_config.yml: found no `repository: url:` to rewrite")
    changed = []
    if rewritten != text:
        config.write_text(rewritten)
        changed.append(config)
    for path in places(root):
        text = path.read_text()
        for kind in ("pages", "binder", "colab", "repository"):
            text = re.sub(re.escape(old[kind]) + (END if kind == "repository" else ""), new[kind], text)
        if text != path.read_text():
            path.write_text(text)
            changed.append(path)
    return changed


def main(argv: list[str], root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="https://github.com/OWNER/NAME")
    parser.add_argument("--check", action="store_true", help="only report places that disagree with _config.yml")
    args = parser.parse_args(argv)
    if args.check == bool(args.url):
        parser.error("give either a repository URL or --check")
    if args.url:
        try:
            changed = set_repository(args.url, root)
        except ValueError as error:
            parser.error(str(error))
        print("\n".join(f"rewrote {path.relative_to(root)}" for path in changed) or "nothing to change")
    problems = disagreements(root)
    print("\n".join(problems) or f"every place names {forms(*configured(root))['repository']}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
