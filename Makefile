# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow test-all bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/headstart demo

export OMP_WAIT_POLICY ?= PASSIVE

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q -m slow

bench: $(BIN)/.installed-test
	$(BIN)/python benchmarks/extract_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
