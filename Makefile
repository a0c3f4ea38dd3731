# Two commands set up a fresh machine: `make demo` (install + run the main job on the bundled
# samples) and `make test` (install + run the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: install install-test demo test lint bench peer-venvs bench-peers clean

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

# Peer tools for the comparison benchmarks, each in its own virtualenv under benchmarks/.venvs/NAME,
# made from benchmarks/peers/requirements-NAME.txt with torch pinned by benchmarks/peers/constraints.txt.
PEERS      := $(patsubst benchmarks/peers/requirements-%.txt,%,$(wildcard benchmarks/peers/requirements-*.txt))
PEER_VENVS := $(foreach p,$(PEERS),benchmarks/.venvs/$(p)/.installed)

benchmarks/.venvs/%/.installed: benchmarks/peers/requirements-%.txt benchmarks/peers/constraints.txt
	$(PYTHON) -m venv benchmarks/.venvs/$*
	benchmarks/.venvs/$*/bin/pip install -q --upgrade pip
	benchmarks/.venvs/$*/bin/pip install -q "$(TORCH)"
	benchmarks/.venvs/$*/bin/pip install -q -c benchmarks/peers/constraints.txt -r $<
	touch $@

peer-venvs: $(PEER_VENVS)

bench-peers: $(VENV)/.installed-test peer-venvs
	$(BIN)/python benchmarks/bench_tokenize_peers.py
	$(BIN)/python benchmarks/bench_mix_peers.py

clean:
	rm -rf demo-out .pytest_cache
