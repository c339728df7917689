"""Landing to scores with the real daemon: how long a new profile batch waits before its scores are in the platform.

Business purpose: operators rely on new_profile_batch_sensor to score new customers without anyone
clicking; this measures the whole unattended path on this machine, as a customer batch would take it:
the batch lands (its catalog completion time), the daemon's sensor notices it, the run launcher starts
a fresh run process, the rescore runs, and the scores batch lands back in the platform.

What it does: a throwaway home (as bench/run.py) with `make run`'s state at --profiles, then a real
`dagster-daemon` (code location from workspace.yaml, loaded once by the daemon's code server), then
--landings profile batches of --batch-profiles, one after the other at irregular, seeded pauses (each
lands once the previous one is scored, so the figure is latency, not queueing). Per landing: from the
profile batch's completion in the catalog to the rescore run's creation (the sensor), to its start (the
launcher: a new process), to the materialization of aep_propensity_scores (scores in the platform).

    python bench/landing_latency.py --profiles 100000 --landings 20 [--output bench/results/latency.txt]

Prints one line per landing, a summary (p50, p95, max of each part) and, as the last line, the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from run import REPO, fresh_home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch-profiles", type=int, default=10_000)
    parser.add_argument("--landings", type=int, default=20)
    parser.add_argument("--output", type=str)
    args = parser.parse_args(argv)
    home = fresh_home()
    os.environ.update({"AEP_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
                       "AEP_ASSETS_PROFILES": str(args.profiles)})
    for variable in ("AEP_ASSETS_ENV", "AEP_ASSETS_S3_BUCKET", "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_LOCATION"):
        os.environ.pop(variable, None)
    daemon = None
    try:
        import dagster as dg

        from aep_assets.definitions import build_definitions
        from aep_assets.main import run_all

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            run_all(defs, instance)
            daemon = subprocess.Popen([shutil.which("dagster-daemon", path=os.path.dirname(sys.executable)),
                                       "run", "-w", "workspace.yaml"], cwd=REPO, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for_first_tick(instance)
            pauses = random.Random(42)
            landings = []
            for _ in range(args.landings):
                time.sleep(pauses.uniform(0.5, 4.0))  # irregular, so landings fall anywhere in the sensor's interval
                landings.append(land_and_wait(defs, instance, args.batch_profiles))
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        from aep_assets.resources.embedded_postgres import EmbeddedPostgres

        EmbeddedPostgres(home / "postgres").remove()
        shutil.rmtree(home, ignore_errors=True)
    result = {"profiles": args.profiles, "batch_profiles": args.batch_profiles, "landings": landings,
              "summary": summary(landings), "cpus": os.cpu_count(), "home": str(home)}
    text = "\n".join([*(line(i, entry) for i, entry in enumerate(landings, 1)), summary_text(result["summary"]),
                      json.dumps(result)])
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text + "\n")
    print(text)
    return 0


def wait_for_first_tick(instance, timeout: float = 180.0) -> None:
    """Until the daemon has evaluated the new-batch sensor once (its code location is loaded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ticks = [t for state in instance.all_instigator_state() if state.instigator_name == "new_profile_batch_sensor"
                 for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)]
        if ticks:
            return
        time.sleep(0.5)
    raise TimeoutError("the daemon evaluated no sensor tick")


def land_and_wait(defs, instance, profiles: int, timeout: float = 300.0) -> dict:
    """One batch landed as an outside source would, then its rescore run followed to the scores in the platform."""
    import dagster as dg

    from aep_assets.lib.datasets import PROFILES

    defs.resolve_job_def("simulate_profile_batch_job").execute_in_process(
        instance=instance, run_config={"ops": {"land_profile_batch": {"config": {"profiles": profiles}}}},
        raise_on_error=True)
    platform = defs.resources["platform"]
    batch = platform.completed_batches(platform.find_dataset_or_fail(PROFILES.name))[-1]
    landed = batch.completed_ms / 1000
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(job_name="rescore_profile_batch_job",
                                                         tags={"dagster/partition": batch.id}))
        if records and records[0].dagster_run.is_finished:
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"batch {batch.id} was not scored within {timeout} s")
    record = records[0]
    scored = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("aep_propensity_scores"), asset_partitions=[batch.id]),
        limit=1).records
    if record.dagster_run.status != dg.DagsterRunStatus.SUCCESS or not scored:
        raise RuntimeError(f"the rescore run of batch {batch.id} ended {record.dagster_run.status}")
    return {"batch": batch.id, "runs": len(records), "sensor_s": record.create_timestamp.timestamp() - landed,
            "run_start_s": record.start_time - record.create_timestamp.timestamp(),
            "scores_in_platform_s": scored[0].timestamp - landed, "run_s": record.end_time - record.start_time}


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: with 20 landings, p95 is the 19th fastest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summary(landings: list[dict]) -> dict:
    parts = ("sensor_s", "run_start_s", "run_s", "scores_in_platform_s")
    return {part: {"p50": percentile([e[part] for e in landings], 0.5),
                   "p95": percentile([e[part] for e in landings], 0.95),
                   "max": max(e[part] for e in landings)} for part in parts}


def line(index: int, entry: dict) -> str:
    return (f"landing {index:2d} {entry['batch']}: sensor {entry['sensor_s']:.1f} s, run start "
            f"{entry['run_start_s']:.1f} s, run {entry['run_s']:.1f} s, scores in the platform after "
            f"{entry['scores_in_platform_s']:.1f} s")


def summary_text(figures: dict) -> str:
    return "\n".join(f"{part:22s} p50 {f['p50']:5.1f} s  p95 {f['p95']:5.1f} s  max {f['max']:5.1f} s"
                     for part, f in figures.items())


if __name__ == "__main__":
    sys.exit(main())
