# pgmaint developer entry points. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.stamp
PORT   ?= 8080

.PHONY: help venv test lint demo airflow bench-maintenance devdb devdb-stop clean

help: ## list the targets
	@echo "pgmaint make targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv (Python 3.11) and install the pinned requirements.txt

# Re-installs only when requirements.txt changes.
$(STAMP): requirements.txt
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

test: venv lint ## lint, then run the tests (embedded PostgreSQL unless PGMAINT_TEST_DSN is set; extra args: PYTEST_ARGS=...)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

lint: venv ## ruff: lint and format check (pyproject.toml); fix with .venv/bin/ruff check --fix . && .venv/bin/ruff format .
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: venv ## run the demo (scripts/demo)
	scripts/demo

airflow: venv ## the whole Airflow here: UI + API on http://localhost:$(PORT), scheduler, DAG processor, triggerer (Ctrl-C stops)
	$(PY) scripts/airflow_local.py --port $(PORT)

bench-maintenance: venv ## maintenance benchmarks: the engine on 1,000 tables (scripts/bench_maintenance.py), then whole DAG runs for 1 / 100 / 1,000 tables and 1,000 over 5 targets (scripts/bench_dag.py)
	$(PY) scripts/bench_maintenance.py
	$(PY) scripts/bench_dag.py

.PHONY: bench-migration
bench-migration: venv ## migration benchmark vs pg_partman 4.7 on a throwaway PG15 (extra args: BENCH_ARGS="--quick")
	$(PY) scripts/bench_migration.py $(BENCH_ARGS)

.PHONY: replay
replay: venv ## the incident replayed and drawn: naive vs pgmaint under a simulated API -> replay/<time>/report.html (REPLAY_ARGS="--quick", "--dsn ...")
	$(PY) scripts/replay.py $(REPLAY_ARGS)

.PHONY: bench-overview
bench-overview: venv ## Partitions view benchmark: 1,000 tables x 60 partitions (scripts/bench_overview.py)
	$(PY) scripts/bench_overview.py $(BENCH_ARGS)

devdb: venv ## start the embedded dev PostgreSQL (.pgmaint/pgdata) and print its conninfo
	$(PY) scripts/devdb.py start

devdb-stop: ## stop the embedded dev PostgreSQL
	@if [ -x $(PY) ]; then $(PY) scripts/devdb.py stop; fi

clean: devdb-stop ## stop the dev DB; remove .airflow/, .pgmaint/, test homes and caches (keeps .venv)
	rm -rf .airflow .pgmaint .pytest-airflow .pytest_cache
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
