"""Check a built site.

* every chapter executed without error output, and its launch links open its notebook;
* no raw TeX outside math: text that MathJax never sees (anything but the ``math`` elements,
  code and cell outputs) holds no TeX command, TeX delimiter, sub/superscript brace or stray
  dollar sign, which is what a formula that Markdown broke apart leaves behind;
* MathJax is the site's own copy (no CDN), the favicon exists;
* every citation in the text reads as the label of the bibliography entry it links to.

Usage: python tools/check_site.py book/_build/html
"""

import re
import sys
from pathlib import Path

import yaml
from bs4 import BeautifulSoup, NavigableString

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_LINK = re.compile(r'href="(https://(?:colab\.research\.google\.com|mybinder\.org)[^"]*)"')
ERROR_MARKERS = ("Traceback (most recent call last)", "output stderr", "output traceback")

# Elements whose text is not prose: MathJax's input, code, program output, and the page's machinery.
NOT_PROSE_TAGS = {"script", "style", "template", "textarea", "pre", "code", "kbd", "samp", "tt", "head"}
NOT_PROSE_CLASSES = {"math", "cell_output", "output", "highlight", "MathJax", "headerlink"}

# What a formula leaves in text when it escapes its math element. A dollar sign is left alone only
# where it reads as money: after a space or an opening bracket or quote (or first), before a digit.
TEX_COMMAND = re.compile(r"\\[A-Za-z]+")
TEX_DELIMITER = re.compile(r"\\[()\[\]{}]")
TEX_SCRIPT = re.compile(r"[_^]\{")
DOLLAR = re.compile(r"\$")
MONEY = re.compile(r"(?:^|(?<=[\s(\[\"'\u201c\u2018]))\$(?=\d)")


def chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"]] + [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]
    return [Path(entry).stem for entry in entries if (ROOT / "book" / entry).read_text().startswith("---\njupytext")]


def _is_prose(string: NavigableString) -> bool:
    for parent in string.parents:
        if parent.name in NOT_PROSE_TAGS or NOT_PROSE_CLASSES & set(parent.get("class") or ()):
            return False
    return True


def raw_tex(text: str) -> list[str]:
    """The pieces of ``text`` (prose, outside any math element) that are TeX, each with some context.

    Matches less than 40 characters apart are one piece: one broken formula is one report.
    """
    spans = [m.span() for pattern in (TEX_COMMAND, TEX_DELIMITER, TEX_SCRIPT) for m in pattern.finditer(text)]
    money = {m.start() for m in MONEY.finditer(text)}
    spans += [m.span() for m in DOLLAR.finditer(text) if m.start() not in money]
    pieces = []
    for start, end in sorted(spans):
        if pieces and start - pieces[-1][1] < 40:
            pieces[-1][1] = max(pieces[-1][1], end)
        else:
            pieces.append([start, end])
    found = []
    for start, end in pieces:
        piece = " ".join(text[max(0, start - 30) : end + 30].split())
        found.append(piece if len(piece) <= 200 else piece[:97] + " ... " + piece[-97:])
    return found


BLOCKS = {"p", "li", "dt", "dd", "td", "th", "caption", "figcaption", "blockquote", "div", "section", "aside"}
BLOCKS |= {"article", "nav", "header", "footer", "main", "body", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol"}


def _block_of(string: NavigableString):
    return next((parent for parent in string.parents if parent.name in BLOCKS), None)


def raw_tex_in_html(html: str) -> list[str]:
    """Raw TeX in the prose of a page, outside math, code and outputs."""
    body = BeautifulSoup(html, "html.parser").body
    if body is None:
        return []
    # Text is read in runs of adjacent prose strings of one block (a paragraph, a list item), so
    # that a formula split across inline tags reads as one piece and a dollar sign is judged by
    # its real neighbours.
    runs, current, block = [], [], None
    for string in body.find_all(string=True):
        prose = _is_prose(string)
        if not prose or _block_of(string) is not block:
            runs.append("".join(current))
            current, block = [], _block_of(string)
        if prose:
            current.append(str(string))
    runs.append("".join(current))
    return [piece for run in runs for piece in raw_tex(run)]


def _pages(html_dir: Path):
    """The site's pages, without the redirect that Jupyter Book writes as index.html."""
    return sorted(p for p in html_dir.glob("*.html") if 'http-equiv="Refresh"' not in p.read_text()[:2000])


def chapter_problems(html_dir: Path):
    for name in chapters():
        page = html_dir / f"{name}.html"
        if not page.exists():
            yield f"{page}: missing"
            continue
        html = page.read_text()
        if "cell_output" not in html:
            yield f"{page}: no executed cell output"
        for marker in ERROR_MARKERS:
            if marker in html:
                yield f"{page}: contains {marker!r}"
        links = LAUNCH_LINK.findall(html)
        if len(links) < 2:
            yield f"{page}: expected Colab and Binder launch links, found {links}"
        for link in links:
            if not link.endswith(f"{name}.ipynb"):
                yield f"{page}: launch link does not open {name}.ipynb: {link}"


def tex_problems(html_dir: Path):
    for page in _pages(html_dir):
        for piece in raw_tex_in_html(page.read_text()):
            yield f"{page}: raw TeX outside math: {piece!r}"


def asset_problems(html_dir: Path):
    for page in _pages(html_dir):
        soup = BeautifulSoup(page.read_text(), "html.parser")
        mathjax = [s["src"] for s in soup.find_all("script", src=True) if "mathjax" in s["src"].lower()]
        if soup.find(class_="math") and not mathjax:
            yield f"{page}: has math but loads no MathJax"
        for src in mathjax:
            local = html_dir / src.split("?")[0]
            if "://" in src or src.startswith("//") or not local.is_file():
                yield f"{page}: MathJax is not the site's own copy: {src}"
        icons = [link["href"] for link in soup.find_all("link", rel="icon")]
        if not icons or not all((html_dir / href).is_file() for href in icons):
            yield f"{page}: favicon missing: {icons}"


def citation_problems(html_dir: Path):
    references = html_dir / "references.html"
    if not references.exists():
        return
    labels = {}
    for entry in BeautifulSoup(references.read_text(), "html.parser").select("div.citation"):
        label = entry.select_one("span.label")
        labels[entry["id"]] = label.get_text().strip("[]") if label else None
    for page in _pages(html_dir):
        for citation in BeautifulSoup(page.read_text(), "html.parser").select("span.bibtex-citation"):
            for link in citation.select('a[href^="references.html#"]'):
                label = labels.get(link["href"].split("#", 1)[1])
                text = link.get_text()
                # {cite:p} links "Ho et al., 2020" (the whole label), {cite:t} links the year of "Ho et al. [2020]".
                if label is None or not (text == label or label.endswith(f", {text}")):
                    yield f"{page}: citation {text!r} links to an entry labelled {label!r}"


def problems(html_dir: Path):
    yield from chapter_problems(html_dir)
    yield from tex_problems(html_dir)
    yield from asset_problems(html_dir)
    yield from citation_problems(html_dir)


if __name__ == "__main__":
    found = list(problems(Path(sys.argv[1])))
    print("\n".join(found) or f"site OK: {len(chapters())} executed chapters, launch links open notebooks, no raw TeX")
    sys.exit(1 if found else 0)
