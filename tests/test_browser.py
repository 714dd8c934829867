"""The built site in a real browser: headless Chromium driven by Selenium.

Serves book/_build/html on 127.0.0.1 and opens every page. Each page must load
with no severe console message and no failed request, load every image, take
every resource (MathJax included) from the site itself, have every formula
typeset by MathJax (no raw TeX left, no TeX error), keep wide display equations
scrollable instead of cut off, keep code inside the text column and figures
within a tenth of their own size, link equation references to equations that
exist, show one search field, and open a solution dropdown when its title is
clicked. A full-page screenshot of each chapter is saved in
book/_build/screenshots/ for review.

The test skips when no site has been built. With BOOK_BROWSER_TEST=required
(`make browser-test`, .ci/run) a missing site fails too. A missing browser or
driver always fails: tools/install_browser.sh installs Debian's `chromium` and
`chromium-driver`.
"""

import base64
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "book" / "_build" / "html"
SCREENSHOTS = ROOT / "book" / "_build" / "screenshots"
REQUIRED = os.environ.get("BOOK_BROWSER_TEST") == "required"
WIDTH, HEIGHT = 1280, 1000

sys.path.insert(0, str(ROOT / "tools"))
import check_site  # noqa: E402

# Text of the page outside typeset math, code and outputs, one string per block (as check_site reads it).
PROSE_RUNS_JS = """
const skip = 'mjx-container, pre, code, kbd, samp, script, style, template, textarea,'
  + ' .cell_output, .output, .highlight';
const blocks = 'p, li, dt, dd, td, th, caption, figcaption, blockquote, div, section, aside, article, nav, header,'
  + ' footer, main, body, h1, h2, h3, h4, h5, h6, ul, ol';
const runs = new Map();
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const parent = node.parentElement;
  if (!parent || parent.closest(skip)) continue;
  const block = parent.closest(blocks);
  runs.set(block, (runs.get(block) || '') + node.textContent);
}
return [...runs.values()];
"""

PAGE_FACTS_JS = """
const origin = location.origin;
const maths = [...document.querySelectorAll('span.math, div.math')];
const display = [...document.querySelectorAll('div.math mjx-container[display="true"]')];
const visible = el => el.offsetParent !== null && el.getClientRects().length > 0;
return {
  brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
  images: document.images.length,
  mathjaxScripts: [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s)),
  mathjaxVersion: window.MathJax && MathJax.version ? MathJax.version : null,
  foreignResources: performance.getEntriesByType('resource').map(e => e.name)
    .filter(n => !n.startsWith(origin) && !n.startsWith('data:') && !n.startsWith('blob:')),
  mathElements: maths.length,
  untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
  texErrors: [...document.querySelectorAll('mjx-merror, [data-mjx-error]')]
    .map(e => e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80)),
  clippedEquations: display.filter(c => {
    const overflowing = c.scrollWidth > c.clientWidth + 1;
    const scrolls = ['auto', 'scroll'].includes(getComputedStyle(c).overflowX);
    const box = c.getBoundingClientRect(), frame = c.closest('div.math').getBoundingClientRect();
    return (overflowing && !scrolls) || box.right > frame.right + 1;
  }).map(c => c.closest('div.math').id || c.textContent.slice(0, 60)),
  scrollableEquations: display.filter(c => c.scrollWidth > c.clientWidth + 1).length,
  equationIds: [...document.querySelectorAll('[id^="equation-"]')].map(e => e.id),
  equationLinks: [...document.querySelectorAll('a[href*="#equation-"]:not(.headerlink)')]
    .map(a => ({href: a.href, text: a.textContent.trim()})),
  searchFields: [...document.querySelectorAll('.search-button-field')].filter(visible).length,
  sidewaysCode: [...document.querySelectorAll('div.cell_input pre')].filter(visible)
    .filter(p => p.scrollWidth > p.clientWidth + 1).map(p => p.textContent.slice(0, 60)),
  shrunkFigures: [...document.querySelectorAll('div.cell_output img')].filter(visible)
    .filter(i => i.naturalWidth > 0 && i.clientWidth < 0.9 * i.naturalWidth)
    .map(i => `${i.naturalWidth} px shown at ${i.clientWidth} px`),
};
"""

OPEN_DROPDOWN_JS = """
const item = document.querySelector('.admonition.dropdown');
if (!item) return null;
const content = [...item.children].find(c => !c.classList.contains('admonition-title'));
const shown = () => content !== undefined && content.offsetHeight > 0 && !item.classList.contains('toggle-hidden');
const before = shown();
item.querySelector('.admonition-title').click();
return {before: before, id: item.id};
"""

DROPDOWN_SHOWN_JS = """
const item = document.getElementById(arguments[0]);
const content = [...item.children].find(c => !c.classList.contains('admonition-title'));
return content.offsetHeight > 0 && !item.classList.contains('toggle-hidden');
"""

MATHJAX_READY_JS = """
const done = arguments[arguments.length - 1];
if (!window.MathJax || !MathJax.startup || !MathJax.startup.promise) { done('no MathJax'); return; }
MathJax.startup.promise.then(() => done('ok'), error => done('error: ' + error));
"""

IMAGES_READY_JS = """
const done = arguments[arguments.length - 1];
Promise.all([...document.images].map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })))
  .then(() => done(true));
"""


def _fail_or_skip(message):
    if REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


def pages():
    """Every page of the site, without the redirect that stands in for index.html."""
    return [p.name for p in check_site._pages(HTML)]


class _Handler(http.server.SimpleHTTPRequestHandler):
    failed: list

    def log_message(self, format, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        self.failed.append(f"{code} {self.path}")
        super().send_error(code, message, explain)


@pytest.fixture(scope="module")
def site():
    if not (HTML / "index.html").exists():
        _fail_or_skip(f"no built site in {HTML}: run `make book` first")
    failed = []
    handler = type("Handler", (_Handler,), {"failed": failed})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(HTML)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", failed
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("headless Chromium is missing (chromium and chromedriver): run tools/install_browser.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


def save_full_page(driver, path: Path):
    """A PNG of the whole page, not only the window."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def check_page(driver, base, name):
    """Problems of one page, and the facts the cross-page checks need."""
    problems = []
    driver.get(f"{base}/{name}")
    ready = driver.execute_async_script(MATHJAX_READY_JS)
    driver.execute_async_script(IMAGES_READY_JS)
    facts = driver.execute_script(PAGE_FACTS_JS)
    if facts["mathElements"]:
        if ready != "ok":
            problems.append(f"MathJax did not typeset the page: {ready}")
        if not facts["mathjaxScripts"] or not all(
            s.startswith(f"{base}/_static/mathjax/") for s in facts["mathjaxScripts"]
        ):
            problems.append(f"MathJax is not loaded from the site: {facts['mathjaxScripts']}")
    for key, what in (
        ("brokenImages", "images that did not load"),
        ("foreignResources", "resources from outside the site"),
        ("untypeset", "math elements MathJax left untypeset"),
        ("texErrors", "TeX errors"),
        ("clippedEquations", "display equations cut off"),
        ("sidewaysCode", "code cells that scroll sideways"),
        ("shrunkFigures", "figures wider than the column, shown shrunk by more than a tenth"),
    ):
        if facts[key]:
            problems.append(f"{what}: {facts[key]}")
    left = [piece for run in driver.execute_script(PROSE_RUNS_JS) for piece in check_site.raw_tex(run)]
    if left:
        problems.append(f"raw TeX outside typeset math: {left}")
    if facts["searchFields"] != 1:
        problems.append(f"{facts['searchFields']} visible search fields, expected one")
    if Path(name).stem in check_site.chapters():
        save_full_page(driver, SCREENSHOTS / f"{Path(name).stem}.png")
    dropdown = driver.execute_script(OPEN_DROPDOWN_JS)
    if dropdown is not None:
        facts["dropdowns"] = 1
        if dropdown["before"]:
            problems.append("a solution dropdown is open before it is clicked")
        elif not driver.execute_script(DROPDOWN_SHOWN_JS, dropdown["id"]):
            problems.append(f"the dropdown #{dropdown['id']} did not open when its title was clicked")
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    if severe:
        problems.append(f"console errors: {severe}")
    return problems, facts


@pytest.mark.browser
def test_every_page_in_chromium(site, browser):
    base, failed_requests = site
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems, ids, links = {}, {}, []
    totals = {"pages": 0, "images": 0, "mathElements": 0, "scrollableEquations": 0, "dropdowns": 0}
    for name in pages():
        found, facts = check_page(browser, base, name)
        if found:
            problems[name] = found
        ids[name] = set(facts["equationIds"])
        links += [(name, link) for link in facts["equationLinks"]]
        totals["pages"] += 1
        for key in ("images", "mathElements", "scrollableEquations", "dropdowns"):
            totals[key] += facts.get(key, 0)
    for name, link in links:
        url = urlsplit(link["href"])
        target = Path(url.path).name or "index.html"
        if url.fragment not in ids.get(target, ()):
            problems.setdefault(name, []).append(f"equation link {link['text']} points to a missing #{url.fragment}")
        elif not re.fullmatch(r"\(\d+(\.\d+)*\)", link["text"]):
            problems.setdefault(name, []).append(f"equation link to #{url.fragment} reads {link['text']!r}")
    if failed_requests:
        problems["server"] = [f"failed requests: {sorted(set(failed_requests))}"]
    assert totals["mathElements"] and totals["dropdowns"] and links, f"nothing to check in {HTML}: {totals}"
    report = "\n".join(f"{name}:\n  " + "\n  ".join(found) for name, found in problems.items())
    assert not problems, f"problems in the built site ({totals}):\n{report}"
    print(f"browser check: {totals}, {len(links)} equation links; screenshots in {SCREENSHOTS}")
