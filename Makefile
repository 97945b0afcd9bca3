# Both targets set up .venv on first use (and again when pyproject.toml changes), then reuse it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
READY := $(VENV)/.installed

.PHONY: demo test ui

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(READY)

# A real digest of the sample photos into the group "sample", on the embedded defaults.
demo: $(READY)
	$(VENV)/bin/facepipe digest ../shared/faces/images --group sample

test: $(READY)
	$(VENV)/bin/pytest

# The Dagster UI and daemon on facepipe's instance, at http://127.0.0.1:3000
ui: $(READY)
	$(VENV)/bin/facepipe ui
