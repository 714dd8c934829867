"""Check a built site: every chapter executed without error output, launch links open notebooks.

Usage: python tools/check_site.py book/_build/html
"""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_LINK = re.compile(r'href="(https://(?:colab\.research\.google\.com|mybinder\.org)[^"]*)"')
ERROR_MARKERS = ("Traceback (most recent call last)", "output stderr", "output traceback")


def chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"]] + [chapter["file"] for part in toc["parts"] for chapter in part["chapters"]]
    return [Path(entry).stem for entry in entries if (ROOT / "book" / entry).read_text().startswith("---\njupytext")]


def problems(html_dir):
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


if __name__ == "__main__":
    found = list(problems(Path(sys.argv[1])))
    print("\n".join(found) or f"site OK: {len(chapters())} executed chapters, launch links open notebooks")
    sys.exit(1 if found else 0)
