# make book: create .venv, install everything, build the site into book/_build/html (strict).
# make test: the test suite (and the lint), in the same environment.
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PYTHON ?= python3

.PHONY: venv test lint book notebooks clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: venv lint
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check diffusion_lib tests tools benchmarks
	$(BIN)/ruff format --check diffusion_lib tests tools benchmarks

book: venv
	rm -rf book/_build
	TQDM_DISABLE=1 $(BIN)/jupyter-book build book -W --keep-going
	$(BIN)/python tools/check_site.py book/_build/html

notebooks: venv
	$(BIN)/jupytext --to ipynb book/[0-9][0-9]_*.md

clean:
	rm -rf book/_build $(VENV)
