# The two commands a data engineer needs: `make run` (whole stack, embedded Postgres by default)
# and `make test` (lint + every test). Everything else is a convenience around them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help venv run stop status bench-production bench-celery db-clean test test-fast dag-test psql secrets-scan chaos lint format lock bench clean browser backfill clear-failed pause unpause import-errors silence new-sync catalog migrate

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# Make's own timestamps keep this idempotent: a second call installs nothing until a
# requirements or lock file changes.
$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	@touch $@

venv: $(INSTALLED) ## create .venv with the locked package set

# EXECUTOR=celery: CeleryExecutor with WORKERS (2) workers, each on every queue unless QUEUES hands them
# out ("source warehouse": worker1 source, worker2 warehouse); FLOWER=1 adds Flower on 127.0.0.1:5555.
run: $(INSTALLED) ## start the whole stack (Ctrl-C or `make stop` ends it); EXECUTOR=celery [WORKERS=2] [QUEUES=..] [FLOWER=1]
	$(BIN)/python -m tools.stack run $(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(WORKERS),--workers $(WORKERS)) \
		$(if $(QUEUES),--queues '$(QUEUES)') $(if $(FLOWER),--flower)

stop: $(INSTALLED) ## stop every process `make run` started
	$(BIN)/python -m tools.stack stop

status: $(INSTALLED) ## show each `make run` component (pid, uptime, restarts, last exit) and health; exit 1 if one is down
	$(BIN)/python -m tools.stack status

db-clean: $(INSTALLED) ## dry-run `airflow db clean` of metadata older than DAYS (30) as the metadata role; EXECUTE=1 deletes
	$(BIN)/python -m tools.stack db-clean $(if $(DAYS),--days $(DAYS)) $(EXECUTE_FLAG)

lint: $(INSTALLED) ## ruff (with Airflow AIR rules) and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every file git tracks or would add (deleted ones skipped); fails on a secret that is not reviewed in
# .secrets.baseline, and updates the baseline (exit 3) when a reviewed finding only moved: commit it.
# The hook exits 3 when the only change is that reviewed findings moved to other lines: that is not a new
# secret, so it passes, and it runs on a copy so CI never rewrites the committed baseline.
secrets-scan: $(INSTALLED) ## detect-secrets over the repo: fail on any secret not in the reviewed .secrets.baseline (SECURITY.md)
	@baseline=$$(mktemp) && cp .secrets.baseline $$baseline && \
	$(BIN)/detect-secrets-hook --baseline $$baseline \
		$$(git ls-files --cached --others --exclude-standard | grep -vx .secrets.baseline \
			| while read -r f; do [ -f "$$f" ] && echo "$$f"; done); \
	status=$$?; rm -f $$baseline; \
	if [ $$status -eq 3 ]; then echo "secrets-scan: no new secrets (reviewed findings moved; \`detect-secrets-hook --baseline .secrets.baseline <files>\` refreshes their lines)"; status=0; fi; \
	if [ $$status -eq 0 ]; then echo "secrets-scan: no secret outside the reviewed baseline"; fi; exit $$status

format: $(INSTALLED) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

browser: ## find Chrome/Chromium for the UI test; install Debian's where possible (root/sudo), else say what to install
	$(PYTHON) -m tools.browser ensure

test: lint secrets-scan browser ## lint, secret scan, then every test (unit, integration, end to end)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: no browser, no Airflow stack, nothing marked slow (> ~10 s each: multi-process and
# whole-week runs), spread over the cores. Unit and integration tests against real Postgres, Redis and
# HTTP, dag.test runs, DAG integrity. `make test` (CI) runs all of it, slow and e2e included.
test-fast: lint secrets-scan ## lint, secret scan, unit + integration tests on all cores (no e2e, no slow, no browser)
	$(BIN)/python -m pytest -m "not e2e and not slow" -n auto $(PYTEST_ARGS)

dag-test: $(INSTALLED) ## `airflow dags test` DAG=.. DATE=.. against make run's databases (syncs: make run for the demo API)
	$(BIN)/python -m tools.dag_test '$(DAG)' '$(DATE)'

migrate: $(INSTALLED) ## bring the warehouse's control tables (batch_meta) to this code's version (include/sql/migrations)
	$(BIN)/python -m tools.migrate

psql: $(INSTALLED) ## psql into make run's warehouse as warehouse_rw [SQL="select ..."]
	$(BIN)/python -m tools.psql $(if $(SQL),-c "$(SQL)")

# The chaos suite (tests/e2e/test_chaos.py, also part of `make test` in its short form) with more data,
# more kills and more backfill intervals; docs/reliability.md explains it. Summary: test-artifacts/chaos/.
CHAOS_RECORDS ?= 600000
CHAOS_KILLS ?= 10
CHAOS_BACKFILL_INTERVALS ?= 5
chaos: $(INSTALLED) ## chaos suite, long form: CHAOS_RECORDS=600000 CHAOS_KILLS=10 [CHAOS_SEED=n] (~9 min on 2 cores)
	CHAOS_RECORDS=$(CHAOS_RECORDS) CHAOS_KILLS=$(CHAOS_KILLS) CHAOS_BACKFILL_INTERVALS=$(CHAOS_BACKFILL_INTERVALS) \
		CHAOS_SEED=$(CHAOS_SEED) $(BIN)/python -m pytest tests/e2e/test_chaos.py -p no:cacheprovider --timeout=3600 $(PYTEST_ARGS)

bench-production: $(INSTALLED) ## latency-bound sources, the dlt peer (its own venv in /tmp/dlt-venv), 500-sync parse and dag-processor (~40 min)
	$(BIN)/python -m bench.latency --records 100000 --repeats 3
	$(BIN)/python -m bench.peer_dlt --records 100000 1000000 --repeats 3 --slow-records 100000 --slow-repeats 2
	$(BIN)/python -m bench.parse_many --syncs 500 --sample 30
	$(BIN)/python -m bench.dag_processor_many --syncs 500 --runs 1 --rounds 2

bench-celery: $(INSTALLED) ## Celery scale-out: a 20-interval backfill on 1 and 2 workers and the LocalExecutor, idle worker PSS (~15 min)
	$(BIN)/python -m bench.celery_scaleout

# Operator verbs over the REST API of a running stack. Each prints what it will do; the ones that change
# state are dry runs unless EXECUTE=1.
OPS := $(BIN)/python -m tools.ops
EXECUTE_FLAG = $(if $(filter 1,$(EXECUTE)),--execute)

backfill: $(INSTALLED) ## dry-run a backfill: DAG=.. FROM=.. TO=.. [REPROCESS=none|failed|completed] [MAX_ACTIVE_RUNS=n] [EXECUTE=1]
	$(OPS) backfill '$(DAG)' --from '$(FROM)' --to '$(TO)' $(if $(REPROCESS),--reprocess $(REPROCESS)) $(if $(MAX_ACTIVE_RUNS),--max-active-runs $(MAX_ACTIVE_RUNS)) $(EXECUTE_FLAG)

clear-failed: $(INSTALLED) ## list failed tasks (and downstream) to rerun: DAG=.. [RUN_ID=..] [EXECUTE=1]
	$(OPS) clear-failed '$(DAG)' $(if $(RUN_ID),--run-id '$(RUN_ID)') $(EXECUTE_FLAG)

pause: $(INSTALLED) ## pause DAG=..
	$(OPS) pause '$(DAG)'

unpause: $(INSTALLED) ## unpause DAG=..
	$(OPS) unpause '$(DAG)'

import-errors: $(INSTALLED) ## list DAG files that fail to import (exit 1 if any)
	$(OPS) import-errors

silence: $(INSTALLED) ## hold alerts: DAG=.. HOURS=.. REASON=".." [TASK=like-pattern]
	PYTHONPATH=plugins $(BIN)/python -m tools.silence '$(DAG)' --hours '$(HOURS)' --reason '$(REASON)' $(if $(TASK),--task '$(TASK)')

new-sync: $(INSTALLED) ## scaffold a YAML sync (and regenerate docs/dags.md): NAME=.. [DOMAIN=..] [OWNER=..] [RESOURCE=orders|customers]
	$(BIN)/python -m tools.new_sync '$(NAME)' $(if $(DOMAIN),--domain '$(DOMAIN)') $(if $(OWNER),--owner '$(OWNER)') $(if $(RESOURCE),--resource '$(RESOURCE)')

catalog: $(INSTALLED) ## regenerate docs/dags.md, the DAG catalog (CI fails while it is stale)
	$(BIN)/python -m tools.dag_catalog

lock: ## re-resolve requirements*.txt into constraints.txt in a throwaway venv
	$(PYTHON) -m tools.lock

bench: $(INSTALLED) ## run the benchmarks recorded in BENCHMARKS.md (~10 min; cold install: python3 -m bench.cold_install)
	$(BIN)/python -m bench.parse_time
	$(BIN)/python -m bench.stack_startup
	$(BIN)/python -m bench.load_path
	$(BIN)/python -m bench.contract_cost
	$(BIN)/python -m bench.extract_load
	$(BIN)/python -m bench.backfill_vs_noop

clean: ## remove the venv and local state (.local holds the embedded DB: data is lost)
	rm -rf $(VENV) .local .pytest_cache .ruff_cache
