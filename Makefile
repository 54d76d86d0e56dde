# Everything runs from .venv, made with Python 3.13 on first use.
PYTHON ?= $(shell command -v python3.13 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test browser test-browser mongosh test-mongosh check-docker login-timing forgot-timing fuzz soak bench lint format clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || \
		{ echo "Python 3.13 is required (found $$($(PYTHON) --version 2>&1) at $(PYTHON)); set PYTHON=/path/to/python3.13" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per set of extras: reinstalled when pyproject.toml changes.
$(VENV)/.stamp-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[devstore]'
	@touch $@

$(VENV)/.stamp-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,devstore]'
	@touch $@

$(VENV)/.stamp-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench,devstore]'
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev,devstore]'
	@touch $@

run: $(VENV)/.stamp-run
	$(BIN)/social-api serve --host $(HOST) --port $(PORT)

test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Debian's chromium for the browser test, installed if missing (apt-get, as root).
browser:
	.ci/install-browser

# The API docs in headless Chromium; REQUIRE_BROWSER turns a missing browser into a failure.
test-browser: $(VENV)/.stamp-test browser
	REQUIRE_BROWSER=1 $(BIN)/python -m pytest tests/test_browser.py $(PYTEST_ARGS)

# The real MongoDB shell (from npm, into .tools/mongosh) for the Mongo-tools test.
mongosh:
	.ci/install-mongosh

# mongosh against the development store; REQUIRE_MONGOSH turns a missing mongosh into a failure.
test-mongosh: $(VENV)/.stamp-test mongosh
	REQUIRE_MONGOSH=1 $(BIN)/python -m pytest tests/test_mongosh.py $(PYTEST_ARGS)

# Dockerfile and compose file, checked statically: real Compose v2 binary, compose-spec schema,
# hadolint, and the rules the deployment relies on (see the script).
check-docker: $(VENV)/.stamp-dev
	VENV=$(VENV) .ci/check-docker

# Unknown email against wrong password: the medians of 20 failed logins each, bcrypt cost 12.
login-timing: $(VENV)/.stamp-test
	$(BIN)/python bench/login_timing.py

# Forgot-password for an existing and a missing account: the answers byte for byte, and the
# medians of 20 requests each (within 10%). A module, to reuse bench/login_timing.py's helpers.
forgot-timing: $(VENV)/.stamp-test
	$(BIN)/python -m bench.forgot_timing $(FORGOT_TIMING_ARGS)

# Schema fuzzing with many more examples per operation than the suite's (SCHEMA_EXAMPLES).
fuzz: $(VENV)/.stamp-test
	SCHEMA_EXAMPLES=$${SCHEMA_EXAMPLES:-500} $(BIN)/python -m pytest tests/test_schema.py $(PYTEST_ARGS)

# 60 s of mixed traffic against `social-api serve` on loopback, then a consistency check.
soak: $(VENV)/.stamp-test
	$(BIN)/python bench/soak.py $(SOAK_ARGS)

# Throughput, latency, database commands per request and event-loop lag against a seeded store
# (bench/run.py; options in BENCH_ARGS, see --help), written to BENCHMARKS.md and
# bench/results.json. Installs Debian's wrk if it is missing (apt-get, as root). BENCH_STARTED,
# taken when make starts, lets it print the whole time, the venv's creation included.
bench: BENCH_STARTED := $(shell date +%s.%N)
bench: $(VENV)/.stamp-bench
	bench/install-wrk
	BENCH_STARTED=$(BENCH_STARTED) $(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service devstore bench tests

format: $(VENV)/.stamp-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
