# The two commands a data engineer needs: `make run` (whole stack, embedded Postgres by default)
# and `make test` (lint + every test). Everything else is a convenience around them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help venv run stop test lint format lock bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Make's own timestamps keep this idempotent: a second call installs nothing until a
# requirements or lock file changes.
$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

venv: $(INSTALLED) ## create .venv with the locked package set

run: $(INSTALLED) ## start the whole stack (Ctrl-C or `make stop` ends it)
	$(BIN)/python -m tools.stack run

stop: $(INSTALLED) ## stop every process `make run` started
	$(BIN)/python -m tools.stack stop

lint: $(INSTALLED) ## ruff (with Airflow AIR rules) and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint ## lint, then every test (unit, integration, end to end)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lock: ## re-resolve requirements*.txt into constraints.txt in a throwaway venv
	$(PYTHON) -m tools.lock

bench: $(INSTALLED) ## run the benchmarks recorded in BENCHMARKS.md
	$(BIN)/python -m bench.parse_time

clean: ## remove the venv and local state (.local holds the embedded DB: data is lost)
	rm -rf $(VENV) .local .pytest_cache .ruff_cache
