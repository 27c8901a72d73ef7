# Loa: developer entry points. Needs only python3 (3.11 or newer) to start with:
# `make test` and `make demo` build the virtual environment first.
#
#   make venv    .venv with Loa installed editable, with the controller, test and dev extras
#   make demo    the demo: embedded broker, simulated clusters, one bulletin, one urgent;
#                installs only what it needs (Loa with the controller extra)
#   make test    the test suite (installs the test and dev extras first)
#   make lint    ruff and mypy --strict; either failing fails the build
#   make bench   scripts/bench.py, which writes docs/benchmarks.md
#   make clean   remove the virtual environment and caches

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Re-install only when the package metadata changes: the controller alone (what the
# demo needs), then the test and dev tools on top (what `make test` and `make lint` need).
BASE_STAMP := $(VENV)/.installed-controller
STAMP := $(VENV)/.installed
# What Debian and Ubuntu split out of python3: venv (with ensurepip) and pip.
APT_PACKAGES := python3-venv python3-pip

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(BASE_STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "Loa needs Python 3.11 or newer; '$(PYTHON)' is: $$($(PYTHON) -V 2>&1)." >&2; \
	  echo "Install a newer python3 and run: make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; \
	  exit 1; }
	@if ! $(BIN)/python -m pip --version >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  echo "== creating $(VENV)"; \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "== $(PYTHON) -m venv failed; installing $(APT_PACKAGES) with apt-get"; \
	      DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null && \
	      $(PYTHON) -m venv $(VENV) || { \
	        echo "$(PYTHON) -m venv still fails; on Debian/Ubuntu also try:" >&2; \
	        echo "    apt-get install $$($(PYTHON) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')" >&2; \
	        rm -rf $(VENV); exit 1; }; \
	    else \
	      echo "" >&2; \
	      echo "$(PYTHON) -m venv failed: ensurepip is missing. Install it, then run make again:" >&2; \
	      echo "    sudo apt-get install $(APT_PACKAGES)" >&2; \
	      exit 1; \
	    fi; \
	  fi; \
	fi
	@echo "== installing Loa and its controller dependencies into $(VENV)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[controller]'
	@touch $@

$(STAMP): $(BASE_STAMP)
	@echo "== installing the test and dev dependencies into $(VENV)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[controller,test,dev]'
	@touch $@

demo: $(BASE_STAMP)
	$(BIN)/loa-controller demo

# Two workers: most tests wait on real processes (brokers, agents, ffmpeg, Chromium), so
# two at a time halve the run on a 2-core machine. PYTEST_WORKERS=0 runs them in one.
PYTEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

# mypy reads the files to check from setup.cfg's [mypy] section.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy --strict

bench: venv
	@test -f scripts/bench.py || { echo "scripts/bench.py does not exist yet" >&2; exit 1; }
	$(BIN)/python scripts/bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
