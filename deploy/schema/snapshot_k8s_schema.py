"""Writes the config schemas of dagster-k8s's K8sRunLauncher and k8s_job_executor as Dagster config
schema snapshots (Dagster's own serialization), so aep_assets_tests/test_deploy.py can validate
deploy/dagster.yaml and deploy/k8s_executor.yaml with Dagster's config validator even where
dagster-k8s is not installed.

Run it in an environment with the dagster-k8s release that matches the project's dagster pin, then
commit the JSON it writes (regenerate whenever the dagster pins move):

    uv venv /tmp/k8s && VIRTUAL_ENV=/tmp/k8s uv pip install dagster==1.13.27 dagster-k8s==0.29.27
    /tmp/k8s/bin/python deploy/schema/snapshot_k8s_schema.py
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster
import dagster_k8s
from dagster._config import resolve_to_config_type
from dagster._serdes import serialize_value
from dagster_k8s import K8sRunLauncher, k8s_job_executor


def snapshot(config_schema) -> dict:
    config_type = resolve_to_config_type(config_schema)
    return {"root_key": config_type.key, "snapshot": json.loads(serialize_value(config_type.schema_snapshot))}


def main() -> None:
    out = Path(__file__).with_name(f"dagster-k8s-{dagster_k8s.__version__}.json")
    document = {
        "generated_by": "deploy/schema/snapshot_k8s_schema.py",
        "dagster": dagster.__version__,
        "dagster_k8s": dagster_k8s.__version__,
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher",
                         **snapshot(K8sRunLauncher.config_type())},
        "executor": {"name": k8s_job_executor.name, **snapshot(k8s_job_executor.config_schema.config_type)},
    }
    out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
