# ferkit: one virtual environment, one Jupyter kernel, one runner.
#
#   make venv         create (or reuse) .venv, install ferkit + dev tools, register kernel "ferkit"
#   make demo         run the whole pipeline on the synthetic data set (outputs/demo/)
#   make noisy        stage 05, the noisy-label benchmark, on the synthetic data set (outputs/noisy/)
#   make test         ruff check, then the full test suite     make test-fast   the same, skipping slow tests
#   make lint         ruff check + format check         make notebooks   regenerate notebooks/ from the stage functions
#   make lab          JupyterLab on the notebooks/
#   make clean-outputs  delete run artifacts under outputs/ (keeps outputs/README.md)
#
# Dependencies are declared in pyproject.toml only; the exact torch/torchvision pair below is
# installed first so pip never has to pick one (tests/test_environment.py checks that the pair
# satisfies pyproject.toml's ranges).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
STAMP = $(VENV)/.ferkit-installed

TORCH_VERSION = 2.14.1
TORCHVISION_VERSION = 0.29.1
KERNEL_NAME = ferkit

export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: help venv demo noisy test test-fast lint notebooks lab clean-outputs

help:
	@echo "make venv          create/reuse $(VENV), install ferkit[dev], register Jupyter kernel '$(KERNEL_NAME)'"
	@echo "make demo          pipeline on synthetic data -> outputs/demo/"
	@echo "make noisy         noisy-label benchmark (stage 05) on synthetic data -> outputs/noisy/"
	@echo "make test          ruff check, then the test suite ($(PY) -m pytest -q)"
	@echo "make test-fast     ruff check, then the tests not marked slow"
	@echo "make lint          ruff check + ruff format --check"
	@echo "make notebooks     regenerate notebooks/*.ipynb from the stage functions' signatures"
	@echo "make lab           start JupyterLab"
	@echo "make clean-outputs remove run artifacts under outputs/"

venv: $(STAMP)

# Re-run when pyproject.toml changes. An existing venv is reused: pip only installs what is missing.
$(STAMP): pyproject.toml
	@if [ ! -x "$(PY)" ]; then \
		echo "+ $(PYTHON) -m venv $(VENV)"; \
		$(PYTHON) -m venv "$(VENV)"; \
	fi
	$(PIP) install "torch==$(TORCH_VERSION)" "torchvision==$(TORCHVISION_VERSION)"
	$(PIP) install -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL_NAME) --display-name "Python (ferkit)"
	@touch "$@"

# The demo: the whole pipeline on the synthetic set with --quick (ferlib/engines.py: smallface at
# 32 px, 6 epochs, one short cycle, two-epoch contrast, t-SNE; every detector of the default list,
# pseudo_oe included). The notebooks' own defaults (no --quick) are the recommended engine.
demo: venv
	$(PY) -m ferlib.run pipeline --dataset synthetic --run demo --quick

# Stage 05 (standalone: `pipeline` runs it only when named) with CPU-sized settings: every method
# and the synthetic set's default noise settings (clean, symmetric 10/20/30%, pair 20%), one seed,
# 3 epochs at 32 px with the fast recipe (label smoothing off for every method) = 30 runs. Measured
# on 2 busy cores on 2026-11-25: one ce run 1.6 min (test accuracy .54 clean, .43 at 30% symmetric
# noise), an ensemble about twice that: about an hour in all. A finished run is skipped on re-run.
NOISY_PARAMS = -p "seeds=[0]" -p epochs=3 -p input_size=32 -p recipe=fast

noisy: venv
	$(PY) -m ferlib.run stage 05 --dataset synthetic --run noisy $(NOISY_PARAMS)

# ruff first: a lint finding fails in seconds, before the slow tests start
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# The parameters cell and the stage call of each notebook come from its stage function.
notebooks: venv
	$(PY) tools/make_notebooks.py

lab: venv
	$(VENV)/bin/jupyter lab

clean-outputs:
	find outputs -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
