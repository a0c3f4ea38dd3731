# Two commands set up a fresh machine: `make demo` (install + run the main job on the bundled
# samples) and `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: install install-test demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(BIN)/mixer run pipelines/spt-proofpile.toml --out demo-out

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check mixer tests benchmarks pipelines
	$(BIN)/ruff format --check mixer tests benchmarks pipelines

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/bench_tokenize.py
	$(BIN)/python benchmarks/bench_sampler.py

clean:
	rm -rf demo-out .pytest_cache
