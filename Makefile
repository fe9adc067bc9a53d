# The README's two quick-start commands live here: `make serve` and `make test`.
# Both build the virtualenv they need on first use, so a fresh clone needs only python3.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Re-install when the dependency list changes.
SERVE_STAMP := $(VENV)/.serve-installed
TEST_STAMP  := $(VENV)/.test-installed

.PHONY: serve test check lint typecheck unit e2e spec system-deps node-deps clean

serve: $(SERVE_STAMP)
	$(BIN)/gate serve

test: $(TEST_STAMP) system-deps node-deps lint typecheck
	$(BIN)/pytest

# Fast loop while developing: no e2e processes.
unit: $(TEST_STAMP)
	$(BIN)/pytest -m "not e2e"

e2e: $(TEST_STAMP) system-deps node-deps
	$(BIN)/pytest -m e2e

lint: $(TEST_STAMP)
	$(BIN)/ruff check gate tests spec bench
	$(BIN)/ruff format --check gate tests spec bench

typecheck: $(TEST_STAMP)
	$(BIN)/mypy gate

# Regenerate spec/schema and spec/vectors after changing a wire message.
spec: $(TEST_STAMP)
	$(BIN)/python -m spec.generate

# System packages the e2e tests drive (engines, CAs, browsers) — installed when missing.
system-deps:
	@bash scripts/system-deps.sh

# The real Node clients the e2e tests drive (official SDKs, Claude Code, Codex CLI), at
# the versions package-lock.json pins: installed here, never while the tests run.
NODE_DIR   := tests/clients/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
node-deps: system-deps $(NODE_STAMP)

$(NODE_STAMP): $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# setuptools warns on every editable install of a project laid out at the top level
# ("folders in your working directory ... may take precedence"): the folders it means
# are this project's own, so a newcomer's first `make serve` shows no such wall of text.
PIP_INSTALL := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e .
	@touch $@

$(TEST_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP_INSTALL) -e '.[test]'
	@touch $@ $(SERVE_STAMP)

clean:
	rm -rf $(VENV) $(NODE_DIR)/node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
