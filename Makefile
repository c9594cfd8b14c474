# Tidal — the two commands are `make demo` and `make test`; both set up what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp is rebuilt (pip runs again) only when a requirements file changes: set-up is idempotent and fast.
STAMP := $(VENV)/.installed
# pyproject.toml too: the project itself is installed editable (`import plugins.tidal…` from any directory).
REQS := requirements.txt requirements-dev.txt pyproject.toml
# The web client is served as-is (ES modules); its one library, uPlot, comes from npm with a committed lockfile.
CLIENT := dashboard/client
NODE_STAMP := $(CLIENT)/node_modules/.installed
# Browser tests drive Debian's Chromium; set-up installs it with apt when it is missing and we are root.
CHROMIUM ?= /usr/bin/chromium
# Keep large allocations in the heap instead of mmap/munmap per tensor (ADR 0012): the training entry points set
# this themselves; exporting it here speeds up the tests that train in-process too.
export MALLOC_MMAP_THRESHOLD_ := 4294967296
export MALLOC_TRIM_THRESHOLD_ := 17179869184

.PHONY: setup chromium test test-fast lint demo dashboard bench clean help

help:
	@echo "make demo       set up, then train the LM and the RL controller on the built-in corpus"
	@echo "make test       set up, then run every test suite"
	@echo "make lint       ruff and mypy (make test runs them first)"
	@echo "make test-fast  set up, then run the suites without the slow tests (@slow: subprocesses, servers, browser)"
	@echo "make dashboard  start the dashboard server (API + web client) on http://127.0.0.1:4400"
	@echo "make bench      run every benchmark and regenerate the README table"

setup: $(STAMP) $(NODE_STAMP) chromium

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	@# the project itself, editable (pyproject.toml); PYTHONWARNINGS quiets setuptools' generic flat-layout banner
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e . --no-deps
	@touch $(STAMP)

$(NODE_STAMP): $(CLIENT)/package-lock.json
	cd $(CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	     (apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null)) && \
	    echo "installed Chromium for the browser tests"; \
	  else echo "note: $(CHROMIUM) is missing and we are not root: the browser tests will be skipped"; fi; \
	fi

# TIDAL_FAST is cleared for `make test` (an exported TIDAL_FAST=1 must not make it skip anything).
test: setup lint
	env -u TIDAL_FAST OMP_NUM_THREADS=1 $(PY) scripts/run_tests.py

# Lint (ruff) and types (mypy), configured in pyproject.toml; `make test` runs them first, so CI fails on a finding.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The inner loop: every test but those marked @slow (core/testing.py), in well under a minute on 2 cores.
test-fast: setup
	TIDAL_FAST=1 OMP_NUM_THREADS=1 $(PY) scripts/run_tests.py

demo: setup
	$(PY) scripts/demo.py

dashboard: setup
	$(PY) -m dashboard --demo

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(CLIENT)/node_modules plugins/tidal/data_cache *.egg-info
