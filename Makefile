# tfprod: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9
# Python 3.10: python3.10 on PATH, else pyenv's. Each candidate must really run as 3.10
# (a pyenv shim can be on PATH without 3.10 being selected).
PYTHON310 ?= $(shell for candidate in "$$(command -v python3.10)" \
    $$(ls -1d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python 2>/dev/null | sort -rV); do \
  [ -n "$$candidate" ] && "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' \
    >/dev/null 2>&1 && { echo "$$candidate"; break; }; done)

export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONWARNINGS := ignore::FutureWarning

.PHONY: help setup demo test test-unit test-e2e bench constraints clean task-library-venv

help:
	@echo "make demo   - set up .venv (Python 3.10) and run the main job (MNIST CNN pipeline)"
	@echo "make test   - set up .venv and run the whole test suite (unit + e2e)"
	@echo "make bench  - run the benchmarks in bench/ (slow; writes docs/benchmarks/)"

$(VENV_PYTHON):
	@if [ -z "$(PYTHON310)" ]; then \
	  echo "error: Python 3.10 not found. Put python3.10 on PATH or install it with pyenv" \
	       "(pyenv install 3.10.13); TFX 1.16 needs Python 3.10." >&2; exit 1; fi
	"$(PYTHON310)" -m venv $(VENV)

# uv installs the pinned set in a minute or two where pip takes many; both honour
# constraints.txt, so the result is the same environment.
$(STAMP): $(VENV_PYTHON) setup.py constraints.txt
	$(VENV_PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --quiet --python $(VENV_PYTHON) --constraint constraints.txt \
	  --editable ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# The TFLite Task Library (tflite-support 0.4.4) in its own virtualenv: it cannot be imported
# beside TensorFlow. tests/test_task_library.py runs its ImageClassifier on our .tflite files.
TASKLIB_VENV := .venv-tasklib
TASKLIB_STAMP := $(TASKLIB_VENV)/.installed-stamp

$(TASKLIB_STAMP): tasklib-requirements.txt $(STAMP)
	@if [ -z "$(PYTHON310)" ]; then echo "error: Python 3.10 not found (see setup)" >&2; exit 1; fi
	@if ! /sbin/ldconfig -p 2>/dev/null | grep -q libusb-1.0; then \
	  echo "warning: libusb-1.0-0 not found; tflite-support needs it" \
	       "(apt-get install libusb-1.0-0; .ci/run installs it)" >&2; fi
	[ -x $(TASKLIB_VENV)/bin/python ] || "$(PYTHON310)" -m venv $(TASKLIB_VENV)
	$(VENV)/bin/uv pip install --quiet --python $(TASKLIB_VENV)/bin/python \
	  --requirement tasklib-requirements.txt
	touch $(TASKLIB_STAMP)

task-library-venv: $(TASKLIB_STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfprod run --config configs/mnist_cnn.yaml

# Two pytest-xdist workers, one test file at a time each (tests/conftest.py's scheduler);
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
XDIST_ARGS = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --no-loadscope-reorder)

test: $(STAMP) $(TASKLIB_STAMP)
	$(VENV)/bin/pytest $(XDIST_ARGS)

test-unit: $(STAMP)
	$(VENV)/bin/pytest $(XDIST_ARGS) -m "not e2e"

test-e2e: $(STAMP) $(TASKLIB_STAMP)
	$(VENV)/bin/pytest $(XDIST_ARGS) -m e2e

bench: $(STAMP)
	$(VENV_PYTHON) -m bench.pipeline_bench

# Re-resolve and re-freeze constraints.txt from setup.py (needs network).
constraints: $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(VENV)/bin/uv pip install --quiet --python $(VENV_PYTHON) --editable ".[test]"
	$(VENV)/bin/uv pip freeze --python $(VENV_PYTHON) --exclude-editable > constraints.txt

clean:
	rm -rf outputs .pytest_cache
