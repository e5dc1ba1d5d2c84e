# Everything starts from a bare Python 3.11+: each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One install stamp per set of packages: the demo needs the core dependencies only, the suite
# every extra and the tools (so `make test` after `make demo` still installs what it lacks).
CORE := $(VENV)/.installed-core
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint suite package docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CORE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(CORE)

demo: $(CORE)
	$(BIN)/python -m snakepit demo

test: lint package docs suite

# The committed settings (pyproject.toml) of the pinned checkers of the dev extra.
lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/basedpyright
	$(BIN)/python tools/verify_types.py

suite: $(DEV)
	$(BIN)/python -m pytest

# The wheel and the sdist as PyPI would take them: built, checked, complete, and the wheel
# installed into a fresh virtualenv and imported there.
package: $(DEV)
	rm -rf dist build/package-check
	$(BIN)/python -m build --no-isolation --outdir dist . > /dev/null
	$(BIN)/python -m twine check --strict dist/*
	$(BIN)/python tools/check_dist.py dist
	$(BIN)/python -m venv build/package-check
	build/package-check/bin/python -m pip install --quiet --disable-pip-version-check dist/*.whl
	cd build/package-check && bin/python -c "import snakepit, snakepit.executor; print('installed wheel imports: snakepit', snakepit.__version__)"
	build/package-check/bin/snakepit --version

# The documentation site, into site/: --strict makes a broken link, reference or docstring fail.
# (NO_MKDOCS_2_WARNING: MkDocs 1.6 announces its successor on every build; that is not ours.)
docs: $(DEV)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

bench: $(DEV)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
