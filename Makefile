# ferkit: one virtual environment, one Jupyter kernel, one runner.
#
#   make venv         create (or reuse) .venv, install ferkit + dev tools, register kernel "ferkit"
#   make demo         run the whole pipeline on the synthetic data set (outputs/demo/)
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

.PHONY: help venv demo test test-fast lint notebooks lab clean-outputs

help:
	@echo "make venv          create/reuse $(VENV), install ferkit[dev], register Jupyter kernel '$(KERNEL_NAME)'"
	@echo "make demo          pipeline on synthetic data -> outputs/demo/"
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

# CPU-sized demo settings (13.7 minutes on 2 cores on 2026-11-25, every detector through papermill:
# stage 01 160 s, 02 20 s, 03 595 s, 04 34 s); drop them for the notebooks' defaults.
# Every key is a parameter of a stage function (the runner refuses any other).
DEMO_PARAMS = -p epochs=6 -p "detector_params={'cycle': {'cycles': 2, 'epochs_per_cycle': 3}, 'contrast': {'epochs': 4}}"

demo: venv
	$(PY) -m ferlib.run pipeline --dataset synthetic --run demo $(DEMO_PARAMS)

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
