# The two commands of the README:
#   make repro   install, then run the whole pipeline (dvc repro) on the embedded phantom data
#   make test    install, then lint and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install repro test lint bench

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,demo]'
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

lint: install
	ruff check .
	ruff format --check cxr_core stages benchmarks tests

test: lint
	pytest -q

bench: install
	python -m benchmarks all --quick
