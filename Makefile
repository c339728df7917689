# aep_assets: `make run` (whole graph on the embedded platform) and `make test` on a fresh machine.
# Paths may contain spaces: every one is quoted in the recipes and none is a make target.
SHELL := /bin/bash
export AEP_ASSETS_HOME ?= $(CURDIR)/.aep_assets
export DAGSTER_HOME ?= $(AEP_ASSETS_HOME)/dagster
export UV_COMPILE_BYTECODE := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := "$(UV)" run --frozen --no-sync
PROFILES ?= 100000

.PHONY: run test ui stop bench setup instance clean aep-check

setup: .venv/.synced instance

.venv/.synced: pyproject.toml uv.lock
	@scripts/bootstrap
	"$(UV)" sync --frozen --all-extras
	@touch $@

# The Dagster instance of the home: the project's dagster.yaml, refreshed when the repo's copy is newer.
instance:
	@mkdir -p "$$DAGSTER_HOME"
	@if [ dagster.yaml -nt "$$DAGSTER_HOME/dagster.yaml" ]; then cp dagster.yaml "$$DAGSTER_HOME/dagster.yaml"; fi

run: setup
	$(RUN) python -m aep_assets.main

test: setup
	@scripts/install_chromium
	$(RUN) pytest

ui: setup
	$(RUN) dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

stop:
	@$(RUN) python -m aep_assets.resources.embedded_postgres stop 2>/dev/null || true

# Read-only calls to a real sandbox (AEP_* variables set): does every service the project uses answer?
aep-check: setup
	$(RUN) python -m aep_assets.aep_check

bench: setup
	$(RUN) python bench/run.py --profiles $(PROFILES)

# The server's files go too, wherever they are (a home the server user cannot reach keeps them under /var/tmp).
clean:
	@if [ -d "$$AEP_ASSETS_HOME/postgres" ]; then $(RUN) python -m aep_assets.resources.embedded_postgres remove; fi
	rm -rf -- "$$AEP_ASSETS_HOME"
