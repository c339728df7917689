"""Where the project keeps what it writes at run time, and which platform it talks to."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SQL_DIR = REPO_ROOT / "sql"


# About 4% of the profiles convert inside the label window, and a quarter of them are held out: below this
# the held-out set has fewer than about 20 conversions, too few for the quality gate to tell a useful model
# from a useless one (an AUC's standard error passes 0.06), and too few to train on.
MIN_PROFILES = 2000


class SettingError(ValueError):
    """A setting (environment variable or run config) has a value the project cannot use; the message
    names the setting and what it accepts."""


def assets_home() -> Path:
    """`$AEP_ASSETS_HOME`, default `.aep_assets/` in the repo root: server, storage, MLflow, Dagster."""
    return Path(os.environ.get("AEP_ASSETS_HOME") or REPO_ROOT / ".aep_assets").resolve()


def platform_env() -> str:
    """`local` (embedded PostgreSQL, the default) or `aep` (a real Experience Platform sandbox)."""
    env = os.environ.get("AEP_ASSETS_ENV", "local").strip().lower() or "local"
    if env not in ("local", "aep"):
        raise SettingError(f"AEP_ASSETS_ENV must be 'local' or 'aep', got {env!r}")
    return env


def default_profiles() -> int:
    """Synthetic profiles `make run` generates (`AEP_ASSETS_PROFILES`, the reference's 100k)."""
    raw = os.environ.get("AEP_ASSETS_PROFILES", "100000")
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingError(f"AEP_ASSETS_PROFILES must be a whole number of at least {MIN_PROFILES}, "
                           f"got {raw!r}") from None
    return checked_profiles(value, "AEP_ASSETS_PROFILES")


def checked_profiles(value: int, setting: str) -> int:
    """A synthetic population size, refused before any work when it is too small to train on."""
    if value < MIN_PROFILES:
        raise SettingError(f"{setting} must be at least {MIN_PROFILES} (fewer profiles give too few conversions "
                           f"to train and evaluate a model on), got {value}")
    return value


def iso_datetime(value: str, setting: str) -> datetime:
    """An ISO date or time from a setting, UTC unless it says otherwise; a SettingError naming the setting."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingError(f"{setting} must be an ISO date such as 2026-12-01, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
