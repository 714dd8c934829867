# make book: create .venv and node_modules, install everything, build the site into book/_build/html (strict).
# make test: the test suite (and the lint), in the same environment.
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PYTHON ?= python3
NPM ?= npm
HTML := book/_build/html

.PHONY: venv test lint book browser-test pdf notebooks binder repository clean

venv: $(VENV)/.installed node_modules/.package-lock.json

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# MathJax, which the site serves itself (package.json pins it).
node_modules/.package-lock.json: package.json package-lock.json
	$(NPM) ci --no-audit --no-fund
	touch $@

# Two workers on the two cores, each with one thread; then the tests that need both cores, alone.
test: venv lint
	$(BIN)/python -m pytest -n 2 -m "not alone and not browser"
	$(BIN)/python -m pytest -m alone

lint: venv
	$(BIN)/ruff check diffusion_lib tests tools benchmarks book/_ext
	$(BIN)/ruff format --check diffusion_lib tests tools benchmarks book/_ext

# Incremental: a chapter executes again when its code changes, or a library module, an artifact or
# a pinned requirement it ran on (book/_ext/execution_key.py); benchmarks/book_execution.py then
# prints each chapter's execution time against the budget.
book: venv
	TQDM_DISABLE=1 $(BIN)/jupyter-book build book -W --keep-going
	$(BIN)/python tools/check_site.py $(HTML)

# Headless Chromium over the built site (tools/install_browser.sh installs the browser);
# full-page screenshots land in book/_build/screenshots/.
browser-test: venv
	BOOK_BROWSER_TEST=required $(BIN)/python -m pytest tests/test_browser.py

# The whole book as one PDF through LaTeX (tools/install_tex.sh installs TeX), also copied
# beside the HTML as book.pdf when the site has been built.
pdf: venv
	TQDM_DISABLE=1 $(BIN)/jupyter-book build book --builder pdflatex
	if [ -d $(HTML) ]; then cp book/_build/latex/book.pdf $(HTML)/book.pdf; fi

notebooks: venv
	$(BIN)/jupytext --to ipynb book/[0-9][0-9]_*.md

# Binder's CPU-only requirements, derived from requirements.txt.
binder: venv
	$(BIN)/python tools/binder_requirements.py

# Point every link and install cell at another repository: make repository URL=https://github.com/OWNER/NAME
repository: venv
	$(BIN)/python tools/set_repository.py $(URL)

clean:
	rm -rf book/_build $(VENV) node_modules

# Mutation testing of the core and engine modules ([tool.mutmut] in pyproject.toml), one worker: slow (hours on two
# cores). It works in mutants/; afterwards `mutmut results` lists the survivors and `mutmut show NAME` shows one.
.PHONY: mutation
mutation: venv
	TQDM_DISABLE=1 $(BIN)/mutmut run --max-children 1
	$(BIN)/mutmut results
