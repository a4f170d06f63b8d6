# Vigil: the two set-up commands are `make run` and `make test`. Both are idempotent and install what
# they need (system packages, the venv, pinned assets) on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is only for the `export` extra (Ultralytics reference + export). This pair imports together
# (torchvision's ops must match torch's build); a newer torch alone breaks torchvision's NMS import.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/default.yaml
PYTEST_ARGS ?=

.PHONY: run test lint bench assets venv clean distclean

run: $(VENV)/.runtime assets
	tools/run-with-broker.sh $(CONFIG)

test: $(VENV)/.test assets
	$(PY) -m pytest -ra $(PYTEST_ARGS)

lint: $(VENV)/.test
	$(VENV)/bin/ruff check app tests tools
	$(VENV)/bin/ruff format --check app tests tools
	@# mypy reads its targets (app/) and strictness from [tool.mypy] in pyproject.toml.
	$(VENV)/bin/mypy

bench: $(VENV)/.test assets
	$(VENV)/bin/vigil bench --markdown docs/BENCHMARKS.md

assets: $(VENV)/.runtime
	$(VENV)/bin/vigil assets fetch

venv: $(VENV)/.runtime

$(VENV)/bin/python:
	tools/ensure-system-deps.sh run
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	tools/ensure-system-deps.sh test
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[dev,export]'
	@# ultralytics pulls GUI opencv-python, whose cv2 needs libGL; keep the headless build's cv2 on top.
	$(PIP) install -q --force-reinstall --no-deps "opencv-python-headless==$$($(PY) -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	touch $@

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info test-artifacts

distclean: clean
	rm -rf $(VENV) .cache
