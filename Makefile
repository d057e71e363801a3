# Two commands do all the set-up: `make run` (the arena) and `make test` (the test suite).
# Both create/refresh .venv with Python 3.11 and install requirements.txt plus the embedded model.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: run test test-slow test-all venv bench train-reward train-ppo eval clean help

help:
	@echo "make run        start the arena on http://127.0.0.1:7860 (ARGS='--port 8000 ...')"
	@echo "make test       the fast test suite (what CI runs)"
	@echo "make test-slow  the long tests (-m slow)"
	@echo "make bench      benchmark scripts; tables land in bench/RESULTS.md"

venv: $(STAMP)

$(STAMP): requirements.txt scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	@touch $(STAMP)

run: venv
	$(PY) app.py $(ARGS)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: venv
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) bench/generation.py

clean:
	rm -rf $(VENV) .pytest_cache
