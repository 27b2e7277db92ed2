# Developer entry points. `make run` and `make test` need nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test demo bench lint migrate clean

help:
	@echo "make run      start PostgreSQL/Redis (embedded if needed), migrate, API + worker + beat"
	@echo "make test     run the whole test suite (embedded PostgreSQL/Redis if none found)"
	@echo "make demo     like run, against a local replay of recorded upstream payloads"
	@echo "make bench    benchmarks: ingest vs COPY, re-runs, /data under load, sources"
	@echo "make lint     flake8"
	@echo "make migrate  flask --app api db upgrade (needs DATABASE_URL)"
	@echo "make clean    remove var/ (embedded data, logs, API token)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the package metadata changed since the last successful install.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m scripts.stack run

test: $(STAMP)
	$(PY) -m scripts.stack test $(PYTEST_ARGS)

demo:
	REPLAY_UPSTREAM=1 $(MAKE) run

# Its own database on the services `make test` uses; table in var/bench-results.md (~5 min).
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(PY) -m flake8 api worker shared scripts tests migrations

migrate: $(STAMP)
	$(VENV)/bin/flask --app api db upgrade

clean:
	rm -rf var
