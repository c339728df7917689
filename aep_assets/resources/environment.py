"""Resources by environment: `local` (embedded PostgreSQL, local folder, local MLflow) or `aep`."""

from __future__ import annotations

import os

import dagster as dg

from aep_assets.resources.local_platform import LocalPlatform
from aep_assets.resources.storage import LocalStorage, S3Storage
from aep_assets.resources.tracking import MlflowTracking
from aep_assets.settings import SettingError


def kept_writes() -> int:
    """AEP_ASSETS_KEEP_WRITES: complete exports or scores folders kept per folder for audit (default 3)."""
    raw = os.environ.get("AEP_ASSETS_KEEP_WRITES", "3")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise SettingError(f"AEP_ASSETS_KEEP_WRITES must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def storage_from_env() -> LocalStorage | S3Storage:
    """S3 when AEP_ASSETS_S3_BUCKET is set, else the local folder; credentials only as EnvVar."""
    if not os.environ.get("AEP_ASSETS_S3_BUCKET"):
        return LocalStorage(keep_complete_writes=kept_writes())
    optional = {name: dg.EnvVar(var) for name, var in (
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID"), ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"))
        if os.environ.get(var)}
    return S3Storage(bucket=dg.EnvVar("AEP_ASSETS_S3_BUCKET"), prefix=os.environ.get("AEP_ASSETS_S3_PREFIX", ""),
                     region_name=os.environ.get("AWS_REGION") or None,
                     endpoint_url=os.environ.get("AEP_ASSETS_S3_ENDPOINT_URL") or None,
                     keep_complete_writes=kept_writes(), **optional)


def build_resources(env: str) -> dict:
    tracking = MlflowTracking(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),
                              artifact_location=os.environ.get("MLFLOW_ARTIFACT_LOCATION", ""))
    if env == "aep":
        from aep_assets.resources.aep.platform import AEPPlatform

        return {"platform": AEPPlatform.from_env(), "storage": storage_from_env(), "mlflow_tracking": tracking}
    return {"platform": LocalPlatform(), "storage": storage_from_env(), "mlflow_tracking": tracking}
