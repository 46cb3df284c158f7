# `make demo` and `make test` are the README's quickstart: each sets up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test
setup: $(VENV)/.installed

$(VENV)/.installed: requirements-ci.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(PY) cli.py demo

test: setup
	$(PY) -m pytest -q
