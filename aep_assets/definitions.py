"""The aep_assets code location: the CMLE workflow as one lineage graph of software-defined assets."""

from __future__ import annotations

import gc
import os

import dagster as dg

from aep_assets.defs import (
    activation,
    export,
    features,
    jobs,
    platform,
    schedules,
    scoring,
    sensors,
    synthetic,
    training,
)
from aep_assets.resources.environment import build_resources
from aep_assets.settings import REPO_ROOT, platform_env

ASSETS = [
    synthetic.synthetic_data,
    platform.aep_profiles,
    platform.aep_experience_events,
    features.training_features,
    features.eda_summary,
    export.training_export,
    training.propensity_model,
    scoring.scoring_features,
    scoring.propensity_scores,
    scoring.aep_propensity_scores,
    activation.propensity_audiences,
    activation.audience_activations,
]


def production_executor():
    """AEP_ASSETS_EXECUTOR=k8s: each step in its own Kubernetes Job (deploy/k8s_executor.yaml), for every
    job that does not set its own executor (rescore_profile_batch_job runs in process)."""
    if os.environ.get("AEP_ASSETS_EXECUTOR", "").strip().lower() != "k8s":
        return None
    import yaml
    from dagster_k8s import k8s_job_executor  # the optional 'k8s' extra of the production image

    config = yaml.safe_load((REPO_ROOT / "deploy" / "k8s_executor.yaml").read_text())["execution"]["config"]
    return k8s_job_executor.configured(config)


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """Everything Dagster loads; tests pass their own resources."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=jobs.JOBS,
        sensors=sensors.SENSORS,
        schedules=schedules.configured_schedules(),
        resources=resources if resources is not None else build_resources(platform_env()),
        executor=production_executor(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()


# Dagster, the libraries and this code, all imported by now, live as long as the process: frozen, the
# collector no longer walks them at every full collection and once more at exit. About 1 s of CPU less
# for a fresh run process rescoring one batch (docs/performance.md); cycles created later are collected.
gc.freeze()
