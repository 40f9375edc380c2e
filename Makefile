# tickvault: the two commands a newcomer needs are `make run` and `make test`.
# Each does its own set-up on a fresh Debian/Ubuntu machine: a virtualenv in .venv, the project,
# the local TimescaleDB (built once into ~/.cache/tickvault), the schema.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

CHROMIUM := /usr/bin/chromium

.PHONY: install chromium db run test bench deploy screenshots clean-venv

# The C sources are dependencies too: `pip install -e .` rebuilds the extensions from them.
$(STAMP): pyproject.toml setup.py src/tickvault/_columnar.c src/tickvault/_indicators.c
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  echo "python venv is missing; installing python3-venv with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	fi
	@# tickvault._columnar is C: without a compiler or Python's headers it would install without it (slower).
	@command -v cc >/dev/null 2>&1 || { echo "no C compiler; installing gcc with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev; }
	@$(BIN)/python -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || { echo "Python headers missing; installing python3-dev with apt-get"; \
	       apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dev; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# The browser tests (dashboard, Prefect UI) drive Debian's chromium through Playwright (Playwright's
# own browser download cannot run on these machines). Installed once, when missing, for `make test`
# only (`make run` does not need a browser); CI runs as root on a fresh Debian.
$(CHROMIUM):
	@echo "chromium is missing; installing Debian's chromium package with apt-get"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

chromium: $(CHROMIUM)

db: install
	$(BIN)/tickvault db up

run: db
	$(BIN)/tickvault run

test: db $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The README's Prefect UI screenshots (docs/img/prefect-*.png), from the browser test.
screenshots: db $(CHROMIUM)
	$(BIN)/python -m pytest tests/test_flows.py tests/test_ui_browser.py -k 'prefect_ui or ui_browser' --ui-screenshots docs/img

bench: db
	$(BIN)/python -m bench

deploy: install
	$(BIN)/tickvault deploy

clean-venv:
	rm -rf $(VENV)
