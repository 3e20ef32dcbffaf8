# Set-up and entry points. `make test` and `make demo` create or reuse .venv and install what they need.
PYTHON ?= python3
# OpenMP busy-waiting makes small torch ops ~8 ms each on 2-core machines.
export OMP_WAIT_POLICY ?= PASSIVE
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo demo-generation clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: 2.13.0 is the CPU wheel on these machines; a plain `torch` would pull a multi-GB CUDA build.
$(STAMP): $(PY) setup.py
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks README.md docs

test: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/peft-mpn demo --output runs/demo

# The same comparison on counterfactual capital edits of Gemma 3 270M (the llm extra, which [dev] includes).
demo-generation: $(STAMP)
	$(VENV)/bin/peft-mpn demo --task generation --output runs/demo-generation

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
