# mmrag: `make up` runs the local stack, `make test` runs every test. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The web app's tests drive Debian's Chromium (Playwright cannot download a browser here). A file target: the
# install runs only when the binary is missing. Elsewhere, point CHROMIUM at any Chromium ≥ the one Playwright wants.
CHROMIUM ?= /usr/lib/chromium/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
export MMRAG_CHROMIUM := $(CHROMIUM)

.PHONY: install up test test-unit test-integration lint format bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

install: $(STAMP) $(CHROMIUM)

up: $(STAMP)
	$(BIN)/mmrag up

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services
	$(BIN)/pytest -q

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: install
	$(BIN)/pytest -q tests/integration

# Refresh the README's screenshots of the web app (docs/screenshots/) from a run of its browser tests.
screenshots: install
	MMRAG_SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -q tests/integration/test_webapp.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/encode.py
	$(BIN)/python bench/panorama.py
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
