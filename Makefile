# `make run`: set up and start the gateway on the built-in Moodle sandbox.
# `make test`: set up, run the linter and the type checker, then the whole test suite (on every core) with its
# coverage floor.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 6543
# One test worker more than cores: the tests that run processes or a browser spend much of their time waiting.
WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
# Byte code, pytest's rewritten test modules included, is written once into the virtualenv and reused by every test
# worker and every process the tests start, even where PYTHONDONTWRITEBYTECODE keeps it out of the tree: compiled
# afresh, each worker spent 11 s of CPU collecting the suite instead of 4.
PYCACHE := $(abspath $(VENV))/pycache

.PHONY: run test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python setup.py requirements.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/pserve development.ini http_port=$(PORT)

lint: install
	$(BIN)/ruff check lms_api moodle_sandbox tests scripts
	$(BIN)/ruff format --check lms_api moodle_sandbox tests scripts
	$(BIN)/mypy

test: lint
	PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(PYCACHE) \
		$(BIN)/pytest -n $(WORKERS) --dist worksteal --cov --cov-report=term:skip-covered

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache .coverage .hypothesis
