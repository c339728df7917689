"""`make run` as a user runs it, in a home whose path has a space: a second run changes nothing, and a
run killed with SIGKILL at any stage, then run again, ends in the state of a run that was never killed.
Each run is its own process (`make run`), so nothing here can pass thanks to state held in memory."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from aep_assets.resources.local_platform import LocalPlatform

REPO = Path(__file__).resolve().parent.parent
PROFILES = 2000


def make_run(home: Path, check: bool = True) -> subprocess.Popen:
    env = {**os.environ, "AEP_ASSETS_HOME": str(home), "AEP_ASSETS_PROFILES": str(PROFILES)}
    env.pop("DAGSTER_HOME", None)  # the Makefile's default: inside the home
    process = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if check:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-4000:]
    return process


def killed_when(home: Path, ready: Callable[[LocalPlatform], bool], what: str) -> None:
    """`make run`, killed with SIGKILL (the whole process group) as soon as `ready` says so; `ready` must
    stay true once it is (a test that waits for a passing moment depends on the machine's speed)."""
    process = make_run(home, check=False)
    platform = LocalPlatform(home=str(home))
    deadline = time.monotonic() + 300
    try:
        while process.poll() is None:
            assert time.monotonic() < deadline, f"never reached {what}"
            try:
                if ready(platform):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return
            except Exception:  # the server or the catalog not there yet
                pass
            time.sleep(0.05)
        pytest.fail(f"the run ended before {what}: {process.stdout.read()[-3000:]}")
    finally:
        process.stdout.close()


def successful_batches(platform: LocalPlatform, dataset: str) -> int:
    return platform.query("SELECT count(*) AS n FROM catalog.batches b JOIN catalog.datasets d ON d.id = "
                          f"b.dataset_id WHERE d.name = '{dataset}' AND b.status = 'success'")["n"][0].as_py()


def exported(home: Path) -> bool:
    return any((home / "storage" / "cmle" / "egress").glob("*/*/_manifest.json"))


def digests(folder: Path, pattern: str = "*") -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob(pattern) if p.is_file())


def contents(folder: Path) -> list[str]:
    """The rows of each parquet file under `folder`, without the platform's batch ids (each home has its
    own), as digests."""
    found = []
    for path in folder.rglob("*.parquet"):
        frame = pl.read_parquet(path).drop("profile_batch", strict=False)
        found.append(hashlib.sha256(frame.sort(frame.columns).write_csv().encode()).hexdigest())
    return sorted(found)


def state_of(home: Path) -> dict:
    """Everything a run leaves, by content: each dataset's rows and data batches (source files by their
    content keys), the audiences, the model versions, the synthetic files and the files in cloud storage."""
    platform = LocalPlatform(home=str(home))
    datasets = {}
    for row in platform.query("SELECT name, table_name FROM catalog.datasets ORDER BY name").to_pylist():
        name, table = row["name"], row["table_name"]
        keys = platform.query(f"SELECT b.idempotency_key AS k FROM catalog.batches b JOIN catalog.datasets d ON "
                              f"d.id = b.dataset_id WHERE d.name = '{name}' AND b.status = 'success' "
                              "AND b.idempotency_key IS NOT NULL ORDER BY 1")["k"].to_pylist()
        rows = platform.query(f'SELECT count(*) AS n FROM "{table}"')["n"][0].as_py()
        source = name in ("cmle_profiles", "cmle_experience_events")
        datasets[name] = {"rows": rows, "data_batches": keys if source else len(keys)}
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        versions = db.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    storage = home / "storage" / "cmle"
    return {"datasets": datasets, "model_versions": versions,
            "audiences": platform.query("SELECT name, expression FROM catalog.audiences ORDER BY name").to_pylist(),
            "synthetic": digests(home / "synthetic" / "current"),
            "storage": {area: contents(storage / area) for area in ("egress", "ingress", "activation")}}


def exact_state_of(home: Path) -> dict:
    """The same, plus every identifier: batch ids, audience ids and file paths."""
    platform = LocalPlatform(home=str(home))
    return {**state_of(home),
            "batches": platform.query("SELECT id, status FROM catalog.batches ORDER BY id").to_pylist(),
            "audience_ids": platform.query("SELECT id, updated_ms FROM catalog.audiences ORDER BY id").to_pylist(),
            "files": sorted(str(p.relative_to(home)) for p in (home / "storage").rglob("*") if p.is_file()),
            "manifests": digests(home / "storage", "_manifest.json")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_second_run_changes_nothing_and_a_killed_run_recovers(tmp_path):
    clean, killed = tmp_path / "a home" / "clean", tmp_path / "a home" / "killed"
    for home in (clean, killed):
        home.parent.mkdir(exist_ok=True)
        home.parent.chmod(0o755)  # the embedded server's user must reach the homes
    try:
        make_run(clean)
        first = exact_state_of(clean)
        make_run(clean)
        assert exact_state_of(clean) == first
        assert first["datasets"]["cmle_profiles"]["rows"] == PROFILES
        assert not (REPO / "a home").exists() and (clean / "dagster" / "dagster.yaml").exists()

        # Each condition stays true once reached, so the kill always happens, however fast the machine: at
        # its moment (the first event batch landed, the export complete, the first scores batch landed) or,
        # if an earlier kill came late, as soon as the next run starts.
        killed_when(killed, lambda p: successful_batches(p, "cmle_experience_events") > 0, "the events ingestion")
        killed_when(killed, lambda p: exported(killed), "the training")
        killed_when(killed, lambda p: successful_batches(p, "cmle_propensity_scores") > 0, "the scores ingestion")
        make_run(killed)
        assert state_of(killed) == state_of(clean)
        leftovers = [p for p in killed.rglob("*") if p.name.startswith((".staging-", ".retired-", "_writing"))]
        assert not leftovers
    finally:
        for home in (clean, killed):
            LocalPlatform(home=str(home)).server.remove()
