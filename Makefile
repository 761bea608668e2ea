# `make up` and `make test` are all a fresh machine needs; CI runs `make test` (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is pinned and installed before anything that depends on torch;
# a GPU host installs its CUDA build of the same version first and keeps it.
TORCH  ?= torch==2.13.0

.PHONY: install up test test-fast test-unit test-integration lint typecheck bench bench-scale clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

up: install
	$(BIN)/modelfarm up

# Every tier; the slowest tests are listed at the end, so a slow newcomer shows.
test: install
	$(BIN)/python -m pytest --durations=25

# The unit tier without the tests that load or train real models: no services, under two
# minutes on two cores. `make test` runs everything.
test-fast: install
	$(BIN)/python -m pytest tests/unit -m "not slow" --durations=10

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: install
	$(BIN)/python -m pytest tests/integration tests/e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/run_all.py

# One worker host, then two (network namespaces: needs root), each pinned to one core.
bench-scale: install
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
