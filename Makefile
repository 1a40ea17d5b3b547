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

# Headless Chromium renders report.html in one test. Installed with apt-get when missing and possible
# (CI runs as root on a fresh clone); never fatal: without it that single test skips and says why.
$(BIN)/.chromium: | $(BIN)/.installed
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "note: could not install chromium; the report rendering test will skip"; \
	else echo "note: chromium not installed (apt-get install chromium chromium-driver); the report rendering test will skip"; fi
	@if command -v chromium >/dev/null 2>&1; then touch $@; fi

test: $(BIN)/.installed-test $(BIN)/.chromium
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q -m slow

bench: $(BIN)/.installed-test
	$(BIN)/python benchmarks/extract_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
