# The two Quick start commands are `make demo` and `make test`; both create .venv on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lookalike demo

lint: $(STAMP)
	$(BIN)/ruff format --check --quiet . && $(BIN)/ruff check --quiet .

# pytest-xdist, one worker per core: the suite waits on subprocesses, servers, Ray and a browser much of the time, so
# two workers on two cores take far less wall time than one (a third only adds contention); a module runs in one
# worker (its module fixtures built once), and tests/conftest.py builds each session fixture once per run
WORKERS ?= auto
test: lint
	bash scripts/install-browser.sh
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadscope --durations=15

# the inner loop: everything but the tests marked slow (end-to-end runs of the CLI, Ray, the browser); CI runs all
test-fast: lint
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist loadscope -m "not slow and not browser" --durations=10

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs
