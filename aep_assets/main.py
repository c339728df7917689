"""`make run`: the whole graph on the configured platform, then a summary of what it produced.

Runs the same jobs a user would launch in the UI, in this process, against the Dagster instance
in $DAGSTER_HOME, so the UI shows every run and materialization afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from aep_assets.definitions import build_definitions
from aep_assets.defs.partitions import profile_batches
from aep_assets.defs.synthetic import SyntheticDataConfig
from aep_assets.lib.datasets import PROFILES
from aep_assets.lib.source_files import check_same_population, population_of, source_folder
from aep_assets.metadata import ROW_COUNT, partition_range_tags, table_lines
from aep_assets.settings import REPO_ROOT, SettingError, assets_home, platform_env

QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_all(defs: dg.Definitions, instance: dg.DagsterInstance, run_config: dict | None = None) -> dict:
    """Load, train, register one partition per profile batch, score them all in one run."""
    timings = {}
    for job_name in ("load_synthetic_data_job", "train_propensity_model_job"):
        started = time.monotonic()
        result = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, run_config={**QUIET, **(run_config or {}).get(job_name, {})}, raise_on_error=True)
        timings[job_name] = time.monotonic() - started
        if not result.success:
            raise RuntimeError(f"{job_name} failed")
    platform = defs.resources["platform"]
    dataset = platform.find_dataset_or_fail(PROFILES.name)
    keys = [b.id for b in platform.completed_batches(dataset) if b.status == "success"]
    instance.add_dynamic_partitions(profile_batches.name, keys)
    started = time.monotonic()
    result = defs.resolve_job_def("rescore_profile_batch_job").execute_in_process(
        instance=instance, run_config=QUIET, tags=partition_range_tags(keys[0], keys[-1]), raise_on_error=True)
    timings["rescore_profile_batch_job"] = time.monotonic() - started
    return timings


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    record = instance.get_latest_materialization_event(dg.AssetKey(key))
    if record is None:
        return {}
    return {name: value.value for name, value in record.asset_materialization.metadata.items()}


def summary(instance: dg.DagsterInstance, timings: dict) -> str:
    model = latest_metadata(instance, "propensity_model")
    export = latest_metadata(instance, "training_export")
    events = latest_metadata(instance, "synthetic_experience_events")
    profiles = latest_metadata(instance, "synthetic_profiles")
    audiences = latest_metadata(instance, "propensity_audiences")
    activations = latest_metadata(instance, "audience_activations")
    lines = [
        "",
        "aep_assets: the CMLE workflow ran end to end",
        f"  profiles {profiles.get(ROW_COUNT)}, events {events.get(ROW_COUNT)} "
        f"(conversion rate {events.get('conversion_rate')})",
        f"  model AUC {model.get('model_auc')}  vs  oracle AUC {model.get('oracle_auc')}  "
        f"(PR AUC {model.get('pr_auc')}, version {model.get('registered_version')}, "
        f"champion: {'yes' if model.get('gate_passed') else 'no, gate failed'})",
        f"  training export  {export.get('path')}",
        f"  MLflow run       {model.get('mlflow_run')}",
        "  audiences (profiles per interval):",
        *["    " + line for line in (table_lines(audiences["reach"]) if "reach" in audiences else [])],
        f"  activation files {activations.get('destination')}",
        "  timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()),
        "  look closer: `make ui`, then http://127.0.0.1:3000 (assets, checks, runs, plots)",
    ]
    return "\n".join(lines)


def prepare_dagster_home() -> None:
    """$DAGSTER_HOME (default $AEP_ASSETS_HOME/dagster) with the project's dagster.yaml, as `make` prepares it."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(assets_home() / "dagster")))
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", config)


def check_settings() -> None:
    """Every setting `make run` depends on, before any run starts: a wrong one is one line, not a failed run."""
    platform_env()
    generator_config = SyntheticDataConfig().generator_config()
    check_same_population(source_folder(), population_of(generator_config))


def main() -> int:
    try:
        check_settings()
        defs = build_definitions()
    except SettingError as error:
        print(f"aep_assets: {error}", file=sys.stderr)
        return 2
    prepare_dagster_home()
    instance = dg.DagsterInstance.get()
    timings = run_all(defs, instance)
    print(summary(instance, timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
