# Tuike: `make run` starts the whole suite; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test test-fast lint bench lock clean chaos

# Fresh machine: create the virtualenv and install the pinned lock, then the project itself.
$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tuike needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m deploy.local.run

# Tests run in TEST_WORKERS processes (pytest-xdist); each starts its own broker and stacks,
# and every test has its own database, ports and Redis key prefix.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench $(BENCH)

# The fault-injection harness (docs/reliability.md): the real stack on its own free ports and
# Redis key prefix, traffic through the gateway, process kills, broker restarts, database and
# Redis cuts, every event twice; then reconciliation. Last line: `reconciliation: N differences`
# (exit 1 unless N is 0). TUIKE_CHAOS_SECONDS (default 120), TUIKE_CHAOS_SEED,
# TUIKE_CHAOS_MYSQL_URL / TUIKE_CHAOS_REDIS_URL (or the TUIKE_TEST_* ones) for MariaDB + Redis.
chaos: install
	$(PY) -m chaos

# Re-pin after changing dependencies in pyproject.toml.
lock: install
	$(VENV)/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements.lock pyproject.toml

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# Load test through the gateway of any deployment (loadtest/locustfile.py), headless and
# bounded: make load HOST=https://tuike.example.com [USERS=20 SPAWN_RATE=5 DURATION=60s]
# Prints requests/s, failures and p50/p95/p99 per route; exits 1 if any request failed.
HOST       ?= http://127.0.0.1:8000
USERS      ?= 20
SPAWN_RATE ?= 5
DURATION   ?= 60s
LOCUST_VERSION ?= 2.47.0

.PHONY: load
load: install
	@test $(USERS) -le 1000 || { echo "USERS must be at most 1000" >&2; exit 2; }
	@$(PY) -c 'import locust' 2>/dev/null || $(PY) -m pip install --quiet "locust==$(LOCUST_VERSION)"
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless --host $(HOST) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(DURATION) \
		--stop-timeout 10 --only-summary
