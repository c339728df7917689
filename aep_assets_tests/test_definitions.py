"""The code location as Dagster's own tooling sees it: `dg check defs` passes, and `dg list defs` shows the
asset graph the project promises. A renamed asset, a moved group, a lost check or a changed dependency shows
up as a diff against aep_assets_tests/snapshots/definitions.json; after an intended change, refresh it with
`AEP_ASSETS_UPDATE_SNAPSHOT=1 uv run --frozen pytest aep_assets_tests/test_definitions.py`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(__file__).with_name("snapshots") / "definitions.json"
DG = Path(sys.executable).with_name("dg")


def run_dg(*args: str, home: Path) -> str:
    env = {**os.environ, "AEP_ASSETS_HOME": str(home), "VIRTUAL_ENV": sys.prefix}
    done = subprocess.run([str(DG), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"dg {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def shape(listed: dict) -> dict:
    """What a rename or a regrouping changes; descriptions and resource types are left out."""
    return {
        "assets": {a["asset_key"]: {"group": a["group_name"], "kinds": sorted(a["kinds"]),
                                    "owners": a["owners"], "deps": sorted(a["dependency_keys"])}
                   for a in listed["assets"]},
        "asset_checks": sorted(c["key"] for c in listed["asset_checks"]),
        "jobs": sorted(j["name"] for j in listed["jobs"]),
        "sensors": sorted(s["name"] for s in listed["sensors"]),
        "schedules": {s["name"]: s["cron_schedule"] for s in listed["schedules"]},
        "resources": sorted(r["name"] for r in listed["resources"]),
    }


def test_dg_checks_the_definitions(tmp_path):
    assert "All definitions loaded successfully" in run_dg("check", "defs", home=tmp_path)


def test_the_definitions_match_their_snapshot(tmp_path, monkeypatch):
    for variable in ("AEP_ASSETS_RETRAIN_CRON", "AEP_ASSETS_RESCORE_CRON", "AEP_ASSETS_ENV", "AEP_ASSETS_EXECUTOR"):
        monkeypatch.delenv(variable, raising=False)
    current = shape(json.loads(run_dg("list", "defs", "--json", home=tmp_path)))
    if os.environ.get("AEP_ASSETS_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"snapshot rewritten: {SNAPSHOT}")
    assert current == json.loads(SNAPSHOT.read_text())


# Imported by a step that needs them, never with the code location: every run process, the UI and the
# daemon import it, and a sensor-launched rescore of a 10k batch has about 4 s in all (docs/performance.md).
NOT_IMPORTED_WITH_THE_CODE_LOCATION = ("mlflow", "skops", "sklearn", "scipy.stats", "matplotlib", "boto3", "botocore",
                                       "dagster_aws", "faker", "dagster_k8s", "aepp", "aep_assets.resources.aep")


def test_importing_the_code_location_leaves_the_heavy_libraries_to_the_steps(tmp_path):
    env = {name: value for name, value in os.environ.items()
           if name not in ("AEP_ASSETS_ENV", "AEP_ASSETS_S3_BUCKET", "AEP_ASSETS_EXECUTOR")}
    probe = ("import json, sys; import aep_assets.definitions; "
             f"print(json.dumps([m for m in {list(NOT_IMPORTED_WITH_THE_CODE_LOCATION)!r} if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", probe], env={**env, "AEP_ASSETS_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
