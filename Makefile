# aep_assets: `make run` (whole graph on the embedded platform) and `make test` on a fresh machine.
SHELL := /bin/bash
export AEP_ASSETS_HOME ?= $(CURDIR)/.aep_assets
export DAGSTER_HOME ?= $(AEP_ASSETS_HOME)/dagster
export UV_COMPILE_BYTECODE := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
PY := $(UV) run --frozen --no-sync python
PROFILES ?= 100000

.PHONY: run test ui stop bench setup clean

setup: .venv/.synced $(DAGSTER_HOME)/dagster.yaml

.venv/.synced: pyproject.toml uv.lock
	@scripts/bootstrap
	$(UV) sync --frozen --all-extras
	@touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	@cp dagster.yaml $@

run: setup
	$(PY) -m aep_assets.main

test: setup
	@scripts/install_chromium
	$(UV) run --frozen --no-sync pytest

ui: setup
	$(UV) run --frozen --no-sync dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

stop:
	@$(PY) -m aep_assets.resources.embedded_postgres stop 2>/dev/null || true

bench: setup
	$(PY) bench/run.py --profiles $(PROFILES)

clean: stop
	rm -rf $(AEP_ASSETS_HOME)
