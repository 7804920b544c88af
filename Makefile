# specgate: `make demo` and `make test` work on a fresh clone with only python3 (3.11).
# Both create .venv if missing and (re)install the project when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test lint serve bench install clean

demo: $(STAMP)
	$(BIN)/specgate demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/specgate serve

bench: $(STAMP)
	$(BIN)/specgate bench gateway

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	touch $@

# Stops the embedded Postgres first, so no server keeps running on a deleted data dir.
clean:
	-[ -x $(BIN)/python ] && $(BIN)/python -c \
		'from pathlib import Path; import gateway.embedded as e; e.stop_embedded(Path(".specgate"))'
	rm -rf $(VENV) .specgate .pytest_cache .ruff_cache .mypy_cache *.egg-info
