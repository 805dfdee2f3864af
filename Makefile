# Two commands a newcomer needs (see README.md):
#   make demo   set up .venv and materialize every asset on the demo data (embedded defaults)
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A persistent Dagster instance, so CLI runs show up in `dagster dev`'s UI afterwards.
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: setup demo test dev lint demo-data

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

# `dg launch` is what Dagster now recommends (`dagster asset materialize -m rcmd_pipeline.definitions
# --select '*'` does the same and still works, with a "superseded" warning). VIRTUAL_ENV: dg warns
# when the project's .venv is not the active one.
demo: setup
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg launch --assets '*'

# one worker per core (pytest-xdist), each taking whole test modules (their module fixtures are built once),
# in conftest.py's order (the long modules first) rather than xdist's (the modules with most tests first)
test: setup
	$(BIN)/python -m pytest -ra -n auto --dist loadfile --no-loadscope-reorder

dev: setup
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/dg dev

lint: setup
	$(BIN)/ruff check rcmd_pipeline rcmd_pipeline_tests benchmarks

demo-data: setup
	$(BIN)/python -m rcmd_pipeline.demo.generate
