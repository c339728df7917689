"""`make bench`: how fast the CMLE propensity workflow runs, stage by stage, against what the machine allows.

Business purpose: Adobe's reference workflow makes a data scientist wait minutes per step and hours
end to end; the target here is the whole loop (synthetic customers -> platform -> features ->
export -> model -> scores -> audiences -> activation) in about a minute for a million profiles,
and a new 10k-profile batch rescored in seconds. This script measures how far from it each stage
is on this machine, and `bench/diagnose.py` why.

What it does, in one process, like `make run`:

1. creates a throwaway `AEP_ASSETS_HOME` under /tmp (mode 755: the embedded PostgreSQL runs as an
   unprivileged user that must traverse it) and `DAGSTER_HOME` inside it with the repo's dagster.yaml;
2. runs `aep_assets.main.run_all` (load, train, rescore every profile batch) with the real resources,
   while a thread samples the memory of the whole process tree (this process, its children and the
   PostgreSQL server processes, found through the data directory's postmaster.pid);
3. reads per-step wall times from Dagster's event log (STEP_START -> STEP_SUCCESS) and maps them to
   the stages of issue 8;
4. measures a physical-limit probe per stage on the same data, on the same warm server (raw numpy /
   Arrow / ADBC COPY / SQL / sklearn doing only what the stage must do), and reports each stage as a
   ratio to its probe: the figure to drive down, since absolute times are noisy on shared machines;
5. lands a new profile batch (`simulate_profile_batch_job`) and times its single-partition rescore
   (features, scores, score ingestion, audience refresh, activation): the incremental cost.

Output: a readable table, then as the LAST line one JSON object (profiles, events, total_s,
peak_rss_mb, model_auc, oracle_auc, incremental_s, stages -> {seconds, rows_per_s, limit_seconds}, ...).
Every duration in the JSON is the raw measurement in seconds (perf_counter or the event log's
timestamps), never rounded: a probe that takes 3 ms is 0.003..., not 0.0. Only the table rounds.

    python bench/run.py --profiles 100000 [--output bench/results/100k.txt] [--keep]

Modules (run as scripts, bench/ is on sys.path, so they import each other by bare name): this one runs
the pipeline and assembles the result; `sampler` samples memory and CPU; `probes` (with
`generation_probe`) measures the limits; `cold_rescore` times a rescore in a fresh process; `report` renders
the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cold_rescore import rescore_in_fresh_process
from probes import LIMIT_DESCRIPTIONS, run_probes
from report import render_table
from sampler import TreeMemorySampler

REPO = Path(__file__).resolve().parent.parent

# Dagster step key -> stage of issue 8 (eda and scoring_features are steps of their own, reported apart
# so that "feature SQL" and "scoring" mean the training CTAS and the model respectively).
STAGE_OF_STEP = {
    "synthetic_data": "generation",
    "aep_profiles": "ingestion",
    "aep_experience_events": "ingestion",
    "training_features": "feature_sql",
    "eda_summary": "eda",
    "training_export": "export",
    "propensity_model": "training",
    "scoring_features": "scoring_features",
    "propensity_scores": "scoring",
    "aep_propensity_scores": "scores_ingestion",
    "propensity_audiences": "audiences",
    "audience_activations": "activation",
}
STAGES = list(dict.fromkeys(STAGE_OF_STEP.values()))


def main(argv: list[str] | None = None) -> int:
    """Benchmark in a throwaway home, print the table and the JSON line; the home's server is always stopped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--batch-profiles", type=int, default=10_000, help="size of the incremental batch")
    parser.add_argument("--output", type=Path, help="also write the table and the JSON line to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary AEP_ASSETS_HOME (server stopped)")
    args = parser.parse_args(argv)

    home = fresh_home()
    os.environ.update({"AEP_ASSETS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
                       "AEP_ASSETS_PROFILES": str(args.profiles), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    os.environ.pop("AEP_ASSETS_ENV", None)  # the benchmark is of the embedded platform
    for variable in ("AEP_ASSETS_S3_BUCKET", "MLFLOW_TRACKING_URI", "MLFLOW_ARTIFACT_LOCATION"):
        os.environ.pop(variable, None)  # local storage and MLflow store in the fresh home, nobody's registry
    load_before = [round(x, 2) for x in os.getloadavg()]
    sampler = TreeMemorySampler(home / "postgres" / "data")
    sampler.start()
    try:
        result = benchmark(args, home, sampler)
        result["load_average_before"] = load_before
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        from aep_assets.resources.embedded_postgres import EmbeddedPostgres

        try:
            sampler.stop()
        finally:  # whatever failed, the server of the temporary home must not outlive the benchmark
            if args.keep:
                EmbeddedPostgres(home / "postgres").stop()
            else:
                EmbeddedPostgres(home / "postgres").remove()
                shutil.rmtree(home, ignore_errors=True)
    text = render_table(result) + "\n" + json.dumps(result, default=str)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


ASSETS_READ = ("synthetic_profiles", "synthetic_experience_events", "aep_profiles", "aep_experience_events",
               "training_features", "training_export", "propensity_model", "audience_activations")


def benchmark(args, home: Path, sampler: TreeMemorySampler) -> dict:
    """Pipeline, probes, incremental rescore; everything read from the instance before it is deleted."""
    from aep_assets.main import latest_metadata

    # the code this process imports now is what gets measured, whatever is committed later
    commit = git("rev-parse", "--short", "HEAD")
    uncommitted = git("status", "--porcelain", "--", "aep_assets", "sql").splitlines()
    defs, instance, run_ids, total_s = run_pipeline(args.profiles)
    pipeline_end = time.time()
    steps = step_windows(instance, run_ids)
    stages = stage_table(steps, sampler)
    peak_rss, peak_pss = sampler.peak(0, pipeline_end)
    tree_cpu, other_cpu = sampler.cpu_between(pipeline_end - total_s, pipeline_end)
    meta = {key: latest_metadata(instance, key) for key in ASSETS_READ}
    model = meta["propensity_model"]
    counts = {"profiles": meta["synthetic_profiles"]["dagster/row_count"],
              "events": meta["synthetic_experience_events"]["dagster/row_count"],
              "training_rows": meta["training_features"]["dagster/row_count"],
              "activation_rows": meta["audience_activations"]["dagster/row_count"]}
    probes = run_probes(defs, instance, home, sampler)
    incremental = run_incremental(defs, instance, args.batch_profiles, sampler)
    return {
        "profiles": counts["profiles"], "events": counts["events"], "total_s": total_s,
        "commit": commit, "uncommitted_product_files": uncommitted,
        "peak_rss_mb": round(peak_rss), "peak_pss_mb": round(peak_pss),
        "model_auc": model.get("model_auc"), "oracle_auc": model.get("oracle_auc"),
        "incremental_s": incremental["rescore_s"],
        "outside_steps_s": total_s - sum(s["end"] - s["start"] for s in steps),
        "cpus": os.cpu_count(),
        "pipeline_cores_used": round(tree_cpu / total_s, 2), "pipeline_other_cores": round(other_cpu / total_s, 2),
        "stages": stage_figures(stages, counts, probes), "incremental": incremental, "probes": probes,
        "asset_seconds": asset_seconds(meta),
        "steps": [{"step": s["step"], "seconds": s["end"] - s["start"]} for s in steps],
        "home": str(home), "kept": bool(args.keep),
    }


def asset_seconds(meta: dict) -> dict:
    """The durations the assets report about themselves, beside the event log's step times."""
    model = meta["propensity_model"]
    return {
        "generation_seconds": meta["synthetic_experience_events"].get("generation_seconds"),
        "events_per_second": meta["synthetic_experience_events"].get("events_per_second"),
        "ingest_seconds_profiles": meta["aep_profiles"].get("ingest_seconds"),
        "ingest_seconds_events": meta["aep_experience_events"].get("ingest_seconds"),
        "sql_seconds": meta["training_features"].get("sql_seconds"),
        "export_seconds": meta["training_export"].get("export_seconds"),
        "train_seconds": model.get("train_seconds"),
        "trial_seconds": [t.get("seconds") for t in model.get("trials", [])]}


def stage_figures(stages: dict, counts: dict, probes: dict) -> dict:
    """Per stage: its time, throughput, probe limit and ratio to it, memory and cores, in STAGES order."""
    figures = {}
    for name in STAGES:
        if name not in stages:
            continue
        rows = rows_of(name, counts)
        seconds = stages[name]["seconds"]
        limit = probes.get(name, {}).get("seconds")
        figures[name] = {
            "seconds": seconds, "rows": rows, "rows_per_s": rows / seconds,
            "limit_seconds": limit, "ratio": seconds / limit,
            "peak_rss_mb": stages[name]["peak_rss_mb"], "peak_pss_mb": stages[name]["peak_pss_mb"],
            "python_pss_mb": stages[name]["python_pss_mb"],
            "cores_used": stages[name]["cores_used"], "other_cores": stages[name]["other_cores"],
            "limit": LIMIT_DESCRIPTIONS[name]}
    return figures


def rows_of(stage: str, counts: dict) -> int:
    """The rows a stage moves or processes (events for the SQL over events)."""
    return {"generation": counts["events"], "ingestion": counts["events"] + counts["profiles"],
            "feature_sql": counts["events"], "eda": counts["events"], "export": counts["training_rows"],
            "training": counts["training_rows"], "scoring_features": counts["events"],
            "scoring": counts["profiles"], "scores_ingestion": counts["profiles"], "audiences": counts["profiles"],
            "activation": counts["activation_rows"]}[stage]


def git(*args: str) -> str:
    """The product version measured (others edit it while benchmarks run)."""
    completed = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def fresh_home() -> Path:
    """A throwaway AEP_ASSETS_HOME (mode 755, for the server's user) with DAGSTER_HOME and its dagster.yaml."""
    home = Path(tempfile.mkdtemp(prefix="aep-bench-", dir="/tmp"))
    home.chmod(0o755)
    (home / "dagster").mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster" / "dagster.yaml")
    return home


def run_pipeline(profiles: int) -> tuple:
    """`make run`'s run_all on a fresh instance; returns (defs, instance, run ids, wall seconds)."""
    import dagster as dg

    from aep_assets.definitions import build_definitions
    from aep_assets.main import run_all

    instance = dg.DagsterInstance.get()
    defs = build_definitions()
    started = time.time()
    run_all(defs, instance)
    wall = time.time() - started
    run_ids = [r.run_id for r in reversed(instance.get_runs())]
    return defs, instance, run_ids, wall


def step_windows(instance, run_ids: list[str]) -> list[dict]:
    """Every step of the runs with its start and end (unix seconds) from the event log."""
    import dagster as dg

    wanted = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    steps: dict[tuple[str, str], dict] = {}
    for run_id in run_ids:
        for record in instance.get_records_for_run(run_id, of_type=wanted).records:
            entry = record.event_log_entry
            step = steps.setdefault((run_id, entry.step_key), {"run_id": run_id, "step": entry.step_key})
            if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
                step["start"] = entry.timestamp
            else:
                step["end"] = entry.timestamp
                step["ok"] = entry.dagster_event.event_type == dg.DagsterEventType.STEP_SUCCESS
    return sorted((s for s in steps.values() if "start" in s and "end" in s), key=lambda s: s["start"])


def stage_table(steps: list[dict], sampler: TreeMemorySampler) -> dict:
    """The steps grouped by stage: summed seconds, and the memory and cores sampled over the stage's span."""
    stages: dict[str, dict] = {}
    for step in steps:
        stage = STAGE_OF_STEP.get(step["step"])
        if stage is None:
            continue
        entry = stages.setdefault(stage, {"seconds": 0.0, "start": step["start"], "end": step["end"]})
        entry["seconds"] += step["end"] - step["start"]
        entry["start"], entry["end"] = min(entry["start"], step["start"]), max(entry["end"], step["end"])
    for entry in stages.values():
        entry["peak_rss_mb"], entry["peak_pss_mb"] = (round(v) for v in sampler.peak(entry["start"], entry["end"]))
        entry["python_pss_mb"] = round(sampler.python_peak(entry["start"], entry["end"]))
        tree_cpu, other_cpu = sampler.cpu_between(entry["start"], entry["end"])
        span = max(entry["end"] - entry["start"], 1e-9)
        # cores in use: ours (1.0 = one core busy) and everybody else's on the same machine
        entry["cores_used"], entry["other_cores"] = round(tree_cpu / span, 2), round(other_cpu / span, 2)
    return stages


def run_incremental(defs, instance, batch_profiles: int, sampler: TreeMemorySampler) -> dict:
    """Land one new profile batch as an outside source would, then rescore only that partition."""
    from aep_assets.defs.partitions import profile_batches
    from aep_assets.lib.datasets import PROFILES

    platform = defs.resources["platform"]
    started = time.time()
    defs.resolve_job_def("simulate_profile_batch_job").execute_in_process(
        instance=instance, run_config={"ops": {"land_profile_batch": {"config": {"profiles": batch_profiles}}}},
        raise_on_error=True)
    land_s = time.time() - started
    key = platform.completed_batches(platform.find_dataset(PROFILES.name))[-1].id
    instance.add_dynamic_partitions(profile_batches.name, [key])
    started = time.time()
    result = defs.resolve_job_def("rescore_profile_batch_job").execute_in_process(
        instance=instance, partition_key=key, raise_on_error=True)
    rescore_s = time.time() - started
    steps = step_windows(instance, [result.run_id])
    per_step = {s["step"]: s["end"] - s["start"] for s in steps}
    rss, pss = sampler.peak(started, started + rescore_s)
    # The same rescore as the sensor's run would do it: a fresh process that imports everything first
    # (the daemon launches each run in its own process). Same partition again: the same work.
    cold = rescore_in_fresh_process(key)
    return {"profiles": batch_profiles, "partition_key": key, "land_s": land_s,
            "rescore_s": rescore_s, "steps": per_step, "outside_steps_s": rescore_s - sum(per_step.values()),
            "peak_rss_mb": round(rss), "peak_pss_mb": round(pss), "rescore_fresh_process_s": cold["wall_s"],
            "rescore_fresh_process_phases": cold}


if __name__ == "__main__":
    sys.exit(main())
