"""Where the project keeps what it writes at run time, and which platform it talks to."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"


def assets_home() -> Path:
    """`$AEP_ASSETS_HOME`, default `.aep_assets/` in the repo root: server, storage, MLflow, Dagster."""
    return Path(os.environ.get("AEP_ASSETS_HOME") or REPO_ROOT / ".aep_assets").resolve()


def platform_env() -> str:
    """`local` (embedded PostgreSQL, the default) or `aep` (a real Experience Platform sandbox)."""
    env = os.environ.get("AEP_ASSETS_ENV", "local").strip().lower() or "local"
    if env not in ("local", "aep"):
        raise ValueError(f"AEP_ASSETS_ENV must be 'local' or 'aep', got {env!r}")
    return env


def default_profiles() -> int:
    """Synthetic profiles `make run` generates (`AEP_ASSETS_PROFILES`, the reference's 100k)."""
    raw = os.environ.get("AEP_ASSETS_PROFILES", "100000")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"AEP_ASSETS_PROFILES must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"AEP_ASSETS_PROFILES must be a positive integer, got {raw!r}")
    return value
