# One command sets up .venv and runs the default experiment; another runs the tests.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup run test lock

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# precompiled bytecode: every Ray worker would otherwise recompile torch on this machine
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/python -m fedspeech.main

test: setup
	RAY_USAGE_STATS_ENABLED=0 FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m pytest -q tests

lock:
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header -o requirements.lock
