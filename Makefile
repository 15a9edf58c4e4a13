# CostControl — the two commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: run test install browser-deps migrate bench lint typecheck stop clean

# Install, migrate, seed the demo and start gateway + dashboard + worker + beat
# + ledger ingest + the simulated upstream, in the foreground. Ctrl-C stops all.
run: install migrate
	$(PY) manage.py runstack --host $(HOST) --port $(PORT) --workers $(WORKERS) $(RUN_ARGS)

test: install browser-deps
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install migrate
	$(PY) manage.py bench_gateway $(BENCH_ARGS)

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	npm ci --no-audit --no-fund
	touch $(STAMP)

# The browser tests drive the system Chromium; Playwright never downloads one.
browser-deps:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

migrate: install
	$(PY) manage.py migrate --noinput

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy apps costcontrol

# Stop the embedded Postgres / Redis that `make run` or `make test` started.
stop:
	-$(PY) -c "from costcontrol import embedded; embedded.stop_database()"
	-test -f var/redis/redis.pid && kill $$(cat var/redis/redis.pid)

clean: stop
	rm -rf var
