# Developer entry points. `make run` and `make test` need nothing but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# One stamp per dependency set: `make run` installs the runtime packages only, test/bench/lint
# add the dev extras, flower its own extra. Each set comes from its lock (requirements/<set>.txt:
# the whole tree pinned, with hashes), so every install gets the versions the tests passed with.
LOCK := requirements
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
FLOWER_STAMP := $(VENV)/.installed-flower
# Written by `make run` while the stack is up (DATABASE_URL, REDIS_URL, ...; mode 600).
STACK_ENV ?= var/stack.env
FLOWER_PORT ?= 5555
# Load the running stack's environment into a recipe: stack.env holds no secret, so the token
# comes from var/api_token and passwords from the caller's environment (scripts/with_stack_env.sh).
WITH_STACK_ENV = test -f $(STACK_ENV) || { echo "no $(STACK_ENV): start the stack first (make run, in another terminal)" >&2; exit 1; }; \
	stack_env="$(abspath $(STACK_ENV))"; . "$(CURDIR)/scripts/with_stack_env.sh";

.DEFAULT_GOAL := help
.PHONY: help install install-dev run test demo bench lint migrate clean shell flower inspect etl lock

help:
	@echo "make run      start PostgreSQL/Redis (embedded if needed), migrate, API + worker + beat"
	@echo "make test     run the whole test suite (embedded PostgreSQL/Redis if none found)"
	@echo "make demo     like run, against a local replay of recorded upstream payloads"
	@echo "make bench    benchmarks: jobs through the worker vs COPY, /data under load, sources"
	@echo "make lint     flake8, then mypy --strict over api, shared and worker"
	@echo "make migrate  flask --app api db upgrade (needs DATABASE_URL)"
	@echo "make clean    remove var/ (embedded data, logs, API token)"
	@echo "make lock     rewrite requirements/*.txt from setup.cfg (UPGRADE=1: newest allowed)"
	@echo "With a stack running (make run in another terminal; they read $(STACK_ENV)):"
	@echo "make shell    a shell with the stack's environment (flask, celery, psql URLs, API_TOKEN)"
	@echo "make etl ARGS='run --source csv'   flask --app api etl ... on the stack"
	@echo "make inspect  celery -A worker inspect ping, active, reserved"
	@echo "make flower   the Celery dashboard on http://127.0.0.1:$(FLOWER_PORT)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the lock or the package metadata changed since the last install: the
# locked tree first, then the project itself (its dependencies are all in the lock).
$(RUN_STAMP): $(LOCK)/run.txt setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --require-hashes -r $(LOCK)/run.txt
	$(PY) -m pip install --no-deps -e .
	touch $(RUN_STAMP)

# The dev lock holds the runtime packages at the same versions, so a dev install also
# satisfies `make run`.
$(DEV_STAMP): $(LOCK)/dev.txt setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --require-hashes -r $(LOCK)/dev.txt
	$(PY) -m pip install --no-deps -e .
	touch $(DEV_STAMP) $(RUN_STAMP)

$(FLOWER_STAMP): $(LOCK)/flower.txt $(RUN_STAMP)
	$(PY) -m pip install --require-hashes -r $(LOCK)/flower.txt
	touch $(FLOWER_STAMP)

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

run: $(RUN_STAMP)
	$(PY) -m scripts.stack run

test: $(DEV_STAMP)
	$(PY) -m scripts.stack test $(PYTEST_ARGS)

# CoinPaprika's tickers coherent with the recorded CoinGecko page (tests/upstream/coherent.py),
# as two real aggregators are: BTC agrees across the API sources (docs/quality.md).
demo:
	REPLAY_UPSTREAM=1 UPSTREAM_COINPAPRIKA_COHERENT=1 $(MAKE) run

# Its own databases on the services `make test` uses; table in var/bench-results.md. Cases and
# options in docs/benchmarks.md, e.g. BENCH_ARGS="--cases ingest --baseline-ref <git ref>".
bench: $(DEV_STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# mypy reads its scope (api, shared, worker) and strictness from setup.cfg [mypy].
lint: $(DEV_STAMP)
	$(PY) -m flake8 api worker shared scripts tests migrations bench
	$(PY) -m mypy

migrate: $(RUN_STAMP)
	$(VENV)/bin/flask --app api db upgrade

# bash reads ~/.bashrc first (which may reset PATH), then the stack's environment again; the
# secrets it loaded are in bash's environment by then, so loading again keeps them.
shell: $(RUN_STAMP)
	@$(WITH_STACK_ENV) rc=$$(mktemp); \
	{ echo '[ -f ~/.bashrc ] && . ~/.bashrc'; \
	  echo 'stack_env="$(abspath $(STACK_ENV))" kasparro_quiet=1; . "$(CURDIR)/scripts/with_stack_env.sh"'; \
	  echo 'export PATH="$(abspath $(VENV))/bin:$$PATH"'; \
	  echo 'PS1="(kasparro) $${PS1:-$$ }"'; echo "rm -f $$rc"; } > $$rc; \
	echo "stack environment loaded from $(STACK_ENV) ($$API_URL); exit to leave" >&2; \
	exec bash --rcfile $$rc -i

etl: $(RUN_STAMP)
	@$(WITH_STACK_ENV) exec $(VENV)/bin/flask --app api etl $(ARGS)

inspect: $(RUN_STAMP)
	@$(WITH_STACK_ENV) for what in ping active reserved; do \
		echo "== celery -A worker inspect $$what" >&2; \
		$(VENV)/bin/celery -A worker inspect $$what --timeout 3 || exit $$?; \
	done

flower: $(FLOWER_STAMP)
	@$(WITH_STACK_ENV) exec $(VENV)/bin/celery -A worker flower --address=127.0.0.1 --port=$(FLOWER_PORT)

clean:
	rm -rf var

# The locks, resolved from setup.cfg's ranges for Python 3.11 on Linux; pins already in a lock
# are kept unless UPGRADE=1. dev first: the other sets are held to its versions, so a dev
# install satisfies them all. embedded is what the launcher installs when it needs its own
# PostgreSQL/Redis (scripts/stackenv.py).
UV_COMPILE = $(VENV)/bin/uv pip compile setup.cfg --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command 'make lock'
lock: $(DEV_STAMP)
	$(UV_COMPILE) --extra dev $(if $(UPGRADE),--upgrade) -o $(LOCK)/dev.txt
	$(UV_COMPILE) -c $(LOCK)/dev.txt -o $(LOCK)/run.txt
	$(UV_COMPILE) --extra flower -c $(LOCK)/dev.txt -o $(LOCK)/flower.txt
	$(UV_COMPILE) --extra embedded -c $(LOCK)/dev.txt -o $(LOCK)/embedded.txt
