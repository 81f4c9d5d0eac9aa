# Single entry point. `make test` and `make demo` each create the venv, install torch
# and the package, then run. Override: make TORCH_SPEC='torch==2.13.0' test
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.14.1
MAX_JOBS ?= 2
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dcae-ext-installed

export MAX_JOBS

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)
	$(PY) -m pip install -q "$(TORCH_SPEC)" setuptools wheel ninja
	$(PY) -m pip install -q -e ".[dev]" --no-build-isolation
	@touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/dcae-ext demo

bench: install
	$(VENV)/bin/dcae-ext bench

clean:
	rm -rf build dist *.egg-info $(VENV) dcae_ext/_C*.so
