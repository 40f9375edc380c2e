# tickvault: the two commands a newcomer needs are `make run` and `make test`.
# Each does its own set-up on a fresh Debian/Ubuntu machine: a virtualenv in .venv, the project,
# the local TimescaleDB (built once into ~/.cache/tickvault), the schema.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install db run test bench deploy clean-venv

# The C source is a dependency too: `pip install -e .` rebuilds tickvault._columnar from it.
$(STAMP): pyproject.toml setup.py src/tickvault/_columnar.c
	@if ! $(PYTHON) -m venv $(VENV) 2>/dev/null; then \
	  echo "python venv is missing; installing python3-venv with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

db: install
	$(BIN)/tickvault db up

run: db
	$(BIN)/tickvault run

test: db
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: db
	$(BIN)/python -m bench

deploy: install
	$(BIN)/tickvault deploy

clean-venv:
	rm -rf $(VENV)
