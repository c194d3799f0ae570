# Sluice: local commands. See docs/DESIGN.md, "Interfaces (contract)".
#
#   make install   venv + Python dependencies + Debian packages (postgresql, redis-server); fast when present
#   make up        start the local stack (PostgreSQL, Redis, S3, Ray head, Serve); writes .sluice/env
#   make status    which parts of the local stack answer
#   make down      stop the local stack, keep its data
#   make test      run the whole test suite (tests start their own servers)
#   make demo      up, then ingest examples/ (or CORPUS=folder) and print answers to a few queries
#   make clean     stop the stack, remove its data (.sluice) and build caches; keeps .venv

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of this version lies in pip's find-links folder; a bare `torch` would pull a multi-GB CUDA build.
TORCH_SPEC := torch==2.13.0
APT_PACKAGES := postgresql redis-server
PYTEST_ARGS ?=
CORPUS ?=

# Commands started from here (ray start, serve deploy, ray job submit) use the venv's interpreter.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export DEBIAN_FRONTEND := noninteractive

.PHONY: help install system-packages up down status test demo clean

help:
	@sed -n '3,9s/^# \{0,1\}//p' $(firstword $(MAKEFILE_LIST))

install: $(STAMP) system-packages

$(STAMP): pyproject.toml
	@test -x $(PY) || { echo "creating $(VENV) with $(PYTHON_SYS)"; $(PYTHON_SYS) -m venv $(VENV); }
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install '$(TORCH_SPEC)'
	$(PY) -m pip install -e '.[test]'
	@touch $@

# initdb and redis-server come from Debian; install them as root, otherwise say what is missing and fail.
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null || test -x /usr/bin/redis-server || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update && apt-get install -y --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "install them with: sudo apt-get update && sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

up: install
	$(PY) -m cluster.local.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m cluster.local.stack down; else $(PYTHON_SYS) -m cluster.local.stack down; fi

status:
	@if [ -x $(PY) ]; then $(PY) -m cluster.local.stack status; else $(PYTHON_SYS) -m cluster.local.stack status; fi

test: install
	$(PY) -X faulthandler -m pytest $(PYTEST_ARGS)

demo: up
	source .sluice/env && CORPUS='$(CORPUS)' $(PY) -m cluster.local.demo

clean:
	@if [ -f .sluice/state.json ]; then \
	  if [ -x $(PY) ]; then $(PY) -m cluster.local.stack down --purge; else $(PYTHON_SYS) -m cluster.local.stack down --purge; fi; \
	else rm -rf .sluice; fi
	rm -rf .pytest_cache build *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
