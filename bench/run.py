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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

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


# --- memory of the whole process tree ---------------------------------------------------------------

class TreeMemorySampler(threading.Thread):
    """Samples RSS and PSS summed over this process, its descendants and the PostgreSQL server.

    The server is not our child (pg_ctl daemonizes it), so it is found by its data directory's
    postmaster.pid. Summed RSS counts shared pages (PostgreSQL's shared_buffers) once per process
    that touched them; summed PSS splits them, so it is the tree's real footprint. Both are kept.
    """

    def __init__(self, pg_data_dir: Path, interval: float = 0.1):
        super().__init__(daemon=True, name="tree-memory-sampler")
        self.pg_data_dir = pg_data_dir
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (unix time, rss bytes, pss bytes)
        # (unix time, CPU seconds of the tree, busy CPU seconds of the whole machine)
        self.cpu: list[tuple[float, float, float]] = []
        self.python: list[tuple[float, int]] = []  # (unix time, PSS of the tree without the server)
        self._halt = threading.Event()
        self._me = psutil.Process()
        self._postmaster_pid = -1

    def _processes(self) -> list[psutil.Process]:
        processes = [self._me, *self._me.children(recursive=True)]
        try:
            postmaster = int((self.pg_data_dir / "postmaster.pid").read_text().split()[0])
            server = psutil.Process(postmaster)
            self._postmaster_pid = postmaster
            processes += [server, *server.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.Error):
            pass  # not started yet, or stopping
        return processes

    def _server_pids(self) -> set[int]:
        if self._postmaster_pid < 0:
            return set()
        try:
            server = psutil.Process(self._postmaster_pid)
            return {server.pid, *(child.pid for child in server.children(recursive=True))}
        except psutil.Error:
            return set()

    def python_peak(self, start: float = 0.0, end: float = float("inf")) -> float:
        """Peak PSS (MB) of this process and its children, the PostgreSQL server left out."""
        inside = [p for t, p in self.python if start <= t <= end]
        return max(inside) / 2**20 if inside else 0.0

    def sample(self) -> None:
        rss = pss = python_pss = 0
        cpu = 0.0
        seen = set()
        processes = self._processes()  # first: it finds the postmaster
        server = self._server_pids()
        for process in processes:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                info = process.memory_full_info()
                times = process.cpu_times()
            except psutil.Error:
                continue  # exited between listing and reading
            rss += info.rss
            pss += info.pss
            if process.pid not in server:
                python_pss += info.pss
            cpu += times.user + times.system
            if process.pid in (self._me.pid, self._postmaster_pid):
                # exited children (PostgreSQL backends end with their connection) are counted here
                cpu += times.children_user + times.children_system
        machine = psutil.cpu_times()
        now = time.time()
        self.samples.append((now, rss, pss))
        self.python.append((now, python_pss))
        self.cpu.append((now, cpu, machine.user + machine.system + machine.nice + getattr(machine, "irq", 0)
                         + getattr(machine, "softirq", 0) + getattr(machine, "steal", 0)))

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()

    def cpu_between(self, start: float, end: float) -> tuple[float, float]:
        """(CPU seconds used by the tree, CPU seconds used by every other process) in [start, end]."""
        def at(moment: float) -> tuple[float, float]:
            before = [c for c in self.cpu if c[0] <= moment]
            chosen = before[-1] if before else self.cpu[0]
            return chosen[1], chosen[2]
        if not self.cpu:
            return 0.0, 0.0
        tree_start, machine_start = at(start)
        tree_end, machine_end = at(end)
        tree = max(tree_end - tree_start, 0.0)
        return tree, max(machine_end - machine_start - tree, 0.0)

    def peak(self, start: float = 0.0, end: float = float("inf")) -> tuple[float, float]:
        """(peak RSS MB, peak PSS MB) over the samples taken in [start, end]."""
        inside = [(r, p) for t, r, p in self.samples if start <= t <= end]
        if not inside:
            return 0.0, 0.0
        return max(r for r, _ in inside) / 2**20, max(p for _, p in inside) / 2**20


# --- timing helpers ----------------------------------------------------------------------------------

@contextmanager
def timed(into: dict, name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        into[name] = time.perf_counter() - started


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


def metadata(instance, key: str) -> dict:
    from aep_assets.main import latest_metadata

    return latest_metadata(instance, key)


# --- probes: what each stage must physically do, without the pipeline --------------------------------

def adbc_connect(platform):
    import adbc_driver_postgresql.dbapi as adbc

    return adbc.connect(platform.address().uri)


def sql_execute(platform, text: str) -> None:
    with platform.connect() as conn:
        conn.execute(text)


def copy_files_unlogged(platform, like_table: str, files: list[Path], table: str = "bench_probe_copy") -> dict:
    """Read the same parquet files and binary-COPY them (ADBC) into an UNLOGGED table without indexes."""
    sql_execute(platform, f'DROP TABLE IF EXISTS "{table}"')
    sql_execute(platform, f'CREATE UNLOGGED TABLE "{table}" (LIKE "{like_table}")')
    parts = {"read_s": 0.0, "copy_s": 0.0}
    rows = 0
    try:
        with adbc_connect(platform) as conn:
            for index, path in enumerate(files):
                started = time.perf_counter()
                data = pq.read_table(path)
                data = data.append_column("_acp_batchid", pa.array([f"probe{index:05d}"] * data.num_rows, pa.string()))
                parts["read_s"] += time.perf_counter() - started
                started = time.perf_counter()
                with conn.cursor() as cursor:
                    cursor.adbc_ingest(table, data, mode="append")
                conn.commit()
                parts["copy_s"] += time.perf_counter() - started
                rows += data.num_rows
    finally:
        sql_execute(platform, f'DROP TABLE IF EXISTS "{table}"')
    return {"seconds": parts["read_s"] + parts["copy_s"], "rows": rows, **parts}


def probe_generation(profile_files: list[Path], event_files: list[Path], scratch: Path) -> dict:
    """The same tables (row counts, columns, string widths, zstd parquet per batch) from plain numpy/Arrow.

    No simulation, no oracle: random values of the right shapes. Strings are plain (not dictionary)
    because the datasets' schema is plain strings; the dictionary variant is timed beside it.
    """
    rng = np.random.default_rng(0)
    hex_chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = np.frombuffer(b"0123456789", dtype=np.uint8)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    event_types = pa.array(["advertising.impressions", "advertising.clicks", "web.webpagedetails.pageViews",
                            "web.webinteraction.linkClicks", "commerce.productViews", "commerce.purchases",
                            "decisioning.propositionDisplay", "decisioning.propositionInteract",
                            "decisioning.propositionDismiss", "directMarketing.emailSent",
                            "directMarketing.emailOpened", "directMarketing.emailClicked", "web.formFilledOut"])
    pages = pa.array([f"page{i}" for i in range(15)])
    urls = pa.array([f"https://www.example.com/page{i}" for i in range(15)])
    campaigns = pa.array([f"email-w{i:02d}" for i in range(10)] + [f"display-w{i:02d}" for i in range(10)])
    names = pa.array([f"name{i}" for i in range(300)])
    cities = pa.array([f"city{i}" for i in range(300)])

    def fixed_strings(chars: np.ndarray) -> pa.Array:
        n, width = chars.shape
        offsets = (np.arange(n + 1, dtype=np.int32) * width)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))

    def with_nulls(pool: pa.Array, n: int, share_null: float, dictionary: bool) -> pa.Array:
        index = pa.array(rng.integers(0, len(pool), n, dtype=np.int32), mask=rng.random(n) < share_null)
        if dictionary:
            return pa.DictionaryArray.from_arrays(index, pool)
        return pool.take(index)

    def build(n_profiles: int, n_events: int, dictionary: bool) -> tuple[pa.Table, pa.Table]:
        userid = fixed_strings(digits[rng.integers(0, 10, (n_profiles, 38), dtype=np.uint8)])
        profiles = pa.table({
            "userid": userid,
            "email": fixed_strings(letters[rng.integers(0, 26, (n_profiles, 30), dtype=np.uint8)]),
            "first_name": with_nulls(names, n_profiles, 0.0, dictionary),
            "last_name": with_nulls(names, n_profiles, 0.0, dictionary),
            "country": with_nulls(cities, n_profiles, 0.0, dictionary),
            "city": with_nulls(cities, n_profiles, 0.0, dictionary),
            "created_at": pa.array(rng.integers(1_600_000_000_000_000, 1_700_000_000_000_000, n_profiles),
                                   pa.timestamp("us", "UTC")),
        })
        user = rng.integers(0, n_profiles, n_events, dtype=np.int32)
        event_userid = (pa.DictionaryArray.from_arrays(pa.array(user), userid) if dictionary
                        else userid.take(pa.array(user)))
        events = pa.table({
            "event_id": fixed_strings(hex_chars[rng.integers(0, 16, (n_events, 36), dtype=np.uint8)]),
            "userid": event_userid,
            "event_type": with_nulls(event_types, n_events, 0.0, dictionary),
            "timestamp": pa.array(np.sort(rng.integers(1_700_000_000_000_000, 1_706_000_000_000_000, n_events)),
                                  pa.timestamp("us", "UTC")),
            "produced_by": (pa.DictionaryArray.from_arrays(pa.array(np.zeros(n_events, np.int32)),
                                                           pa.array(["aep_assets.synthetic"])) if dictionary
                            else pa.array(["aep_assets.synthetic"]).take(pa.array(np.zeros(n_events, np.int32)))),
            "page_name": with_nulls(pages, n_events, 0.6, dictionary),
            "page_url": with_nulls(urls, n_events, 0.6, dictionary),
            "campaign_id": with_nulls(campaigns, n_events, 0.3, dictionary),
        })
        return profiles, events

    result = {}
    scratch.mkdir(parents=True, exist_ok=True)
    for variant, dictionary in (("plain", False), ("dictionary", True)):
        build_s = write_s = 0.0
        for index, (profile_file, event_file) in enumerate(zip(profile_files, event_files, strict=True)):
            n_profiles = pq.ParquetFile(profile_file).metadata.num_rows
            n_events = pq.ParquetFile(event_file).metadata.num_rows
            started = time.perf_counter()
            profiles, events = build(n_profiles, n_events, dictionary)
            build_s += time.perf_counter() - started
            started = time.perf_counter()
            pq.write_table(profiles, scratch / f"profiles-{index}.parquet", compression="zstd")
            pq.write_table(events, scratch / f"events-{index}.parquet", compression="zstd")
            write_s += time.perf_counter() - started
            del profiles, events
        result[variant] = {"build_s": build_s, "write_s": write_s, "seconds": build_s + write_s}
    shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": result["plain"]["seconds"], **result}


def probe_ctas(platform, select: str, table: str = "bench_probe_ctas") -> dict:
    """The same SELECT alone, as CREATE UNLOGGED TABLE AS on the warm server."""
    sql_execute(platform, f'DROP TABLE IF EXISTS "{table}"')
    started = time.perf_counter()
    sql_execute(platform, f'CREATE UNLOGGED TABLE "{table}" AS {select}')
    seconds = time.perf_counter() - started
    with platform.connect() as conn:
        rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    sql_execute(platform, f'DROP TABLE IF EXISTS "{table}"')
    return {"seconds": seconds, "rows": rows}


def probe_export(platform, table: str, scratch: Path) -> dict:
    """Fetch the same table as Arrow (ADBC) and write it with pyarrow as gzip level 1."""
    parts = {}
    with platform.connect() as conn:
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
            (table,)).fetchall() if r[0] != "_acp_batchid"]
    with timed(parts, "fetch_s"):
        with adbc_connect(platform) as conn, conn.cursor() as cursor:
            quoted = ", ".join(f'"{c}"' for c in columns)
            cursor.execute(f'SELECT {quoted} FROM "{table}"')
            data = cursor.fetch_arrow_table()
    scratch.mkdir(parents=True, exist_ok=True)
    with timed(parts, "write_gzip1_s"):
        pq.write_table(data, scratch / "export.gz.parquet", compression="gzip", compression_level=1)
    with timed(parts, "write_zstd_s"):
        pq.write_table(data, scratch / "export.zstd.parquet", compression="zstd")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": parts["fetch_s"] + parts["write_gzip1_s"], "rows": data.num_rows, **parts}


def probe_training(storage, platform, trials: list[dict]) -> dict:
    """One fit of the chosen hyperparameters on the same training rows, data already in memory."""
    import polars as pl

    from aep_assets.lib import holdout, modeling
    from aep_assets.lib.datasets import TRAINING_DATASET
    from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN, feature_columns
    from aep_assets.resources.platform import export_parent

    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    parts = {}
    with timed(parts, "read_export_s"):
        frame = pl.from_arrow(storage.read_table(manifest))
    names = feature_columns(frame.columns)
    x = modeling.matrix(frame, names)
    y = frame[LABEL_COLUMN].to_numpy().astype(np.int8)
    test = holdout.is_held_out(frame[ID_COLUMN])  # the product's split (by profile id hash)
    x_train, y_train = x[~test], y[~test]
    best = max(trials, key=lambda t: t["validation_auc"])["params"] if trials else {}
    estimator = modeling.build_estimator("hist_gradient_boosting", best, 42)
    with timed(parts, "fit_s"):
        estimator.fit(x_train, y_train)
    # sklearn's OpenMP threads busy-wait: with another process on one of the 2 cores a 2-thread fit can be
    # 10x slower than a 1-thread one, so the limit is the better of the two
    with threadpool_limits(1), timed(parts, "fit_one_thread_s"):
        estimator.fit(x_train, y_train)
    return {"seconds": min(parts["fit_s"], parts["fit_one_thread_s"]), "rows": len(y_train), "params": best,
            "iterations": int(getattr(estimator, "n_iter_", 0)), **parts}


def probe_scoring(platform, tracking, scratch: Path) -> dict:
    """Fetch all scoring features (ADBC), predict_proba on the in-memory array, write the scores as zstd."""
    import polars as pl

    from aep_assets.lib import modeling
    from aep_assets.lib.datasets import SCORING_DATASET
    from aep_assets.lib.features import feature_columns

    champion = tracking.load_champion()
    estimator, names = champion.estimator, champion.features
    table = platform.find_dataset_or_fail(SCORING_DATASET).table
    parts = {}
    with timed(parts, "fetch_s"):
        with adbc_connect(platform) as conn, conn.cursor() as cursor:
            cursor.execute(f'SELECT * FROM "{table}"')
            frame = pl.from_arrow(cursor.fetch_arrow_table())
    with timed(parts, "matrix_s"):
        x = modeling.matrix(frame, names or feature_columns(frame.columns))
    with timed(parts, "predict_s"):
        propensity = estimator.predict_proba(x)[:, 1]
    with threadpool_limits(1), timed(parts, "predict_one_thread_s"):  # see probe_training
        estimator.predict_proba(x)
    scratch.mkdir(parents=True, exist_ok=True)
    with timed(parts, "write_s"):
        scores = pa.table({"userid": frame["userid"].to_arrow(), "propensity": propensity,
                           "decile": modeling.deciles_of(propensity)})
        pq.write_table(scores, scratch / "scores.parquet", compression="zstd")
    shutil.rmtree(scratch, ignore_errors=True)
    predict = min(parts["predict_s"], parts["predict_one_thread_s"])
    return {"seconds": predict, "rows": len(propensity),
            "with_io_s": parts["fetch_s"] + parts["matrix_s"] + predict + parts["write_s"], **parts}


def probe_audiences(platform) -> dict:
    """The one query the reach table needs: the latest propensity per profile (kept merged by ingestion)."""
    from aep_assets.lib import audiences, merge
    from aep_assets.lib.datasets import PROPENSITY_SCORES

    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    parts = {}
    with timed(parts, "latest_scores_query_s"):
        propensity = platform.query(audiences.latest_propensities_sql(
            platform.dialect, platform.current_records(scores, PROPENSITY_SCORES)))
    with timed(parts, "window_over_all_scores_s"):  # without the merged table: a window over every score
        platform.query(audiences.latest_propensities_sql(platform.dialect,
                                                         merge.current_records_sql(PROPENSITY_SCORES, scores.table)))
    return {"seconds": parts["latest_scores_query_s"], "rows": propensity.num_rows, **parts}


def probe_activation(platform, scratch: Path) -> dict:
    """One latest-score query, members of every interval cut in memory, each written as zstd parquet."""
    from aep_assets.lib import audiences
    from aep_assets.lib.datasets import PROPENSITY_SCORES

    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    text = audiences.latest_members_sql(platform.dialect, platform.current_records(scores, PROPENSITY_SCORES),
                                        platform.current_profiles())
    parts = {}
    with timed(parts, "query_s"):
        latest = platform.query(text)
    scratch.mkdir(parents=True, exist_ok=True)
    members = 0
    with timed(parts, "cut_and_write_s"):
        values = latest["propensity"].to_numpy()
        for index, interval in enumerate(platform.audiences()):
            mask = (values >= interval.lower) & (values < interval.upper)
            chosen = latest.filter(pa.array(mask))
            members += chosen.num_rows
            pq.write_table(chosen, scratch / f"audience-{index}.parquet", compression="zstd")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": parts["query_s"] + parts["cut_and_write_s"], "rows": members, **parts}


def probe_eda(platform) -> dict:
    """One pass over the events giving the distinct (user, event type) pairs, from which the funnel's
    distinct users and the co-occurrence both follow (the asset makes two passes: weekly counts by
    type, and each user's set of types as a bitmask)."""
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS

    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table
    started = time.perf_counter()
    pairs = platform.query(f'SELECT event_type, userid, count(*) AS events FROM "{events}" GROUP BY 1, 2')
    return {"seconds": time.perf_counter() - started, "rows": pairs.num_rows}


# --- the benchmark -----------------------------------------------------------------------------------

def git(*args: str) -> str:
    """The product version measured (others edit it while benchmarks run)."""
    completed = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def fresh_home() -> Path:
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


def stage_table(steps: list[dict], sampler: TreeMemorySampler) -> dict:
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
    started = time.time()
    subprocess.run([sys.executable, "-c", COLD_RESCORE, key], env=os.environ, check=True, capture_output=True)
    cold_s = time.time() - started
    return {"profiles": batch_profiles, "partition_key": key, "land_s": land_s,
            "rescore_s": rescore_s, "steps": per_step, "outside_steps_s": rescore_s - sum(per_step.values()),
            "peak_rss_mb": round(rss), "peak_pss_mb": round(pss), "rescore_fresh_process_s": cold_s}


COLD_RESCORE = """
import sys
import dagster as dg
from aep_assets.definitions import build_definitions
with dg.DagsterInstance.get() as instance:
    build_definitions().resolve_job_def("rescore_profile_batch_job").execute_in_process(
        instance=instance, partition_key=sys.argv[1], raise_on_error=True)
"""


def best_of(sampler: TreeMemorySampler, probe, *args) -> dict:
    """A probe's fastest of two runs, or three when a run takes under PROBE_REPEAT_BELOW seconds.

    The minimum is the usual estimate of a limit on a shared machine (a colleague's job on the other
    core can double a single run); every run's seconds and the CPU other processes used meanwhile
    are kept beside it.
    """
    runs, others = [], []
    best = None
    while True:
        started = time.time()
        outcome = probe(*args)
        span = max(time.time() - started, 1e-9)
        runs.append(outcome["seconds"])
        others.append(round(sampler.cpu_between(started, started + span)[1] / span, 2))
        if best is None or outcome["seconds"] < best["seconds"]:
            best = outcome
        if len(runs) == 3 or (len(runs) == 2 and outcome["seconds"] >= PROBE_REPEAT_BELOW):
            break
    return {**best, "runs": runs, "other_cores": others}


PROBE_REPEAT_BELOW = 8.0  # seconds: cheaper probes run three times, dearer ones twice


def run_probes(defs, instance, home: Path, sampler: TreeMemorySampler) -> dict:
    """Every probe on the data the pipeline just produced, on the same (now warm) server."""
    from aep_assets.lib import features
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES, TRAINING_DATASET
    from aep_assets.lib.source_files import source_folder

    platform, storage, tracking = (defs.resources[k] for k in ("platform", "storage", "mlflow_tracking"))
    scratch = home / "probe-scratch"
    folder = source_folder()
    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name)
    profiles = platform.find_dataset_or_fail(PROFILES.name)
    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    training_meta = metadata(instance, "training_features")
    window = features.Window(datetime.fromisoformat(training_meta["cutoff"]),
                             datetime.fromisoformat(training_meta["horizon_end"]))
    # The asset's scoring SELECT over every profile batch, without the replace into the dataset.
    current_profiles = platform.current_records(profiles, PROFILES)
    all_profiles = features.scoring_sql(platform.dialect, events.table, current_profiles,
                                        datetime.fromisoformat(metadata(instance, "scoring_features")["as_of"]),
                                        instance.get_dynamic_partitions("profile_batches"))
    score_files = [Path(storage.uri(key)) for key in storage.list_keys("cmle/ingress") if key.endswith(".parquet")]

    def ingestion() -> dict:
        events_copy = copy_files_unlogged(platform, events.table, folder.files("events"))
        profiles_copy = copy_files_unlogged(platform, profiles.table, folder.files("profiles"))
        return {"seconds": events_copy["seconds"] + profiles_copy["seconds"],
                "rows": events_copy["rows"] + profiles_copy["rows"], "events": events_copy,
                "profiles": profiles_copy}

    plan = {
        "generation": (probe_generation, folder.files("profiles"), folder.files("events"), scratch),
        "ingestion": (ingestion,),
        "feature_sql": (probe_ctas, platform, features.training_sql(platform.dialect, events.table, current_profiles,
                                                                    window)),
        "eda": (probe_eda, platform),
        "export": (probe_export, platform, platform.find_dataset_or_fail(TRAINING_DATASET).table, scratch),
        "training": (probe_training, storage, platform, metadata(instance, "propensity_model").get("trials", [])),
        "scoring_features": (probe_ctas, platform, all_profiles),
        "scoring": (probe_scoring, platform, tracking, scratch),
        "scores_ingestion": (copy_files_unlogged, platform, scores.table, score_files),
        "audiences": (probe_audiences, platform),
        "activation": (probe_activation, platform, scratch),
    }
    return {stage: best_of(sampler, probe, *args) for stage, (probe, *args) in plan.items()}


def seconds_text(seconds: float) -> str:
    """Seconds for the table: the JSON keeps the raw figure; a probe of a few ms must not print as 0.00."""
    return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.2g}"


def render_table(result: dict) -> str:
    lines = [
        f"aep_assets benchmark at {result['commit']}"
        + (f" + uncommitted {', '.join(f.split()[-1] for f in result['uncommitted_product_files'])}"
           if result["uncommitted_product_files"] else "")
        + f": {result['profiles']:,} profiles, {result['events']:,} events, "
        f"{os.cpu_count()} cores, load average before/after {result['load_average_before']} / "
        f"{result['load_average_after']}",
        f"end to end {result['total_s']:.1f} s (Dagster outside steps {result['outside_steps_s']:.1f} s), "
        f"peak RSS of the process tree {result['peak_rss_mb']:,} MB (PSS {result['peak_pss_mb']:,} MB), "
        f"model AUC {result['model_auc']} vs oracle AUC {result['oracle_auc']}",
        f"during the pipeline the bench used {result['pipeline_cores_used']} cores on average, other processes "
        f"{result['pipeline_other_cores']}",
        "",
        f"{'stage':<17}{'seconds':>9}{'rows':>13}{'rows/s':>12}{'limit s':>9}{'ratio':>8}"
        f"{'peak RSS MB':>13}{'PSS MB':>8}{'py PSS':>8}{'cores':>7}{'others':>7}  limit probe",
    ]
    for name, stage in result["stages"].items():
        lines.append(
            f"{name:<17}{seconds_text(stage['seconds']):>9}{stage['rows']:>13,}{round(stage['rows_per_s']):>12,}"
            f"{seconds_text(stage['limit_seconds']):>9}{stage['ratio']:>7.1f}x{stage['peak_rss_mb']:>13,}"
            f"{stage['peak_pss_mb']:>8,}{stage['python_pss_mb']:>8,}{stage['cores_used']:>7.2f}"
            f"{stage['other_cores']:>7.2f}  {stage['limit']}")
    lines.append("RSS/PSS: whole tree incl. PostgreSQL (RSS counts shared buffers once per process, PSS splits "
                 "them); py PSS: the tree without the server; cores: CPU seconds of the tree per wall second; "
                 "others: of every other process on the machine")
    inc = result["incremental"]
    lines += ["", f"incremental: land {inc['profiles']:,} profiles {inc['land_s']:.1f} s, then rescore that "
                  f"partition {inc['rescore_s']:.1f} s (peak RSS {inc['peak_rss_mb']:,} MB)",
              "  " + ", ".join(f"{k} {seconds_text(v)} s" for k, v in inc["steps"].items())
              + f", outside steps {inc['outside_steps_s']:.2f} s",
              f"  the same rescore in a fresh process (as a sensor-launched run): "
              f"{inc['rescore_fresh_process_s']:.1f} s"]
    return "\n".join(lines)


LIMIT_DESCRIPTIONS = {
    "generation": "numpy/Arrow arrays of the same shapes + zstd parquet per batch",
    "ingestion": "read the same parquet + ADBC binary COPY into UNLOGGED tables, no indexes",
    "feature_sql": "the same training SELECT alone as CREATE UNLOGGED TABLE AS",
    "eda": "one GROUP BY (event_type, userid) pass over the events",
    "export": "ADBC fetch_arrow_table + pyarrow gzip level 1",
    "training": "one HistGradientBoosting fit, best params, same rows, in memory (better of 2 or 1 thread)",
    "scoring_features": "the scoring SELECT for all profiles in one CTAS (UNLOGGED)",
    "scoring": "predict_proba on the in-memory feature array (better of 2 or 1 thread)",
    "scores_ingestion": "read the same scores parquet + ADBC COPY into an UNLOGGED table",
    "audiences": "one latest-score-per-profile query",
    "activation": "one latest-score query + members cut in memory + zstd parquet",
}


def rows_of(stage: str, counts: dict) -> int:
    """The rows a stage moves or processes (events for the SQL over events)."""
    return {"generation": counts["events"], "ingestion": counts["events"] + counts["profiles"],
            "feature_sql": counts["events"], "eda": counts["events"], "export": counts["training_rows"],
            "training": counts["training_rows"], "scoring_features": counts["events"],
            "scoring": counts["profiles"], "scores_ingestion": counts["profiles"], "audiences": counts["profiles"],
            "activation": counts["activation_rows"]}[stage]


def main(argv: list[str] | None = None) -> int:
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
            EmbeddedPostgres(home / "postgres").stop()
            if not args.keep:
                shutil.rmtree(home, ignore_errors=True)
    text = render_table(result) + "\n" + json.dumps(result, default=str)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


def benchmark(args, home: Path, sampler: TreeMemorySampler) -> dict:
    """Pipeline, probes, incremental rescore; everything read from the instance before it is deleted."""
    # the code this process imports now is what gets measured, whatever is committed later
    commit = git("rev-parse", "--short", "HEAD")
    uncommitted = git("status", "--porcelain", "--", "aep_assets", "sql").splitlines()
    defs, instance, run_ids, total_s = run_pipeline(args.profiles)
    pipeline_end = time.time()
    steps = step_windows(instance, run_ids)
    stages = stage_table(steps, sampler)
    peak_rss, peak_pss = sampler.peak(0, pipeline_end)
    tree_cpu, other_cpu = sampler.cpu_between(pipeline_end - total_s, pipeline_end)
    meta = {key: metadata(instance, key) for key in (
        "synthetic_profiles", "synthetic_experience_events", "aep_profiles", "aep_experience_events",
        "training_features", "training_export", "propensity_model", "audience_activations")}
    model = meta["propensity_model"]
    counts = {"profiles": meta["synthetic_profiles"]["dagster/row_count"],
              "events": meta["synthetic_experience_events"]["dagster/row_count"],
              "training_rows": meta["training_features"]["dagster/row_count"],
              "activation_rows": meta["audience_activations"]["dagster/row_count"]}
    probes = run_probes(defs, instance, home, sampler)
    incremental = run_incremental(defs, instance, args.batch_profiles, sampler)

    result = {
        "profiles": counts["profiles"], "events": counts["events"], "total_s": total_s,
        "commit": commit, "uncommitted_product_files": uncommitted,
        "peak_rss_mb": round(peak_rss), "peak_pss_mb": round(peak_pss),
        "model_auc": model.get("model_auc"), "oracle_auc": model.get("oracle_auc"),
        "incremental_s": incremental["rescore_s"],
        "outside_steps_s": total_s - sum(s["end"] - s["start"] for s in steps),
        "cpus": os.cpu_count(),
        "pipeline_cores_used": round(tree_cpu / total_s, 2), "pipeline_other_cores": round(other_cpu / total_s, 2),
        "stages": {}, "incremental": incremental, "probes": probes,
        "asset_seconds": {
            "generation_seconds": meta["synthetic_experience_events"].get("generation_seconds"),
            "events_per_second": meta["synthetic_experience_events"].get("events_per_second"),
            "ingest_seconds_profiles": meta["aep_profiles"].get("ingest_seconds"),
            "ingest_seconds_events": meta["aep_experience_events"].get("ingest_seconds"),
            "sql_seconds": meta["training_features"].get("sql_seconds"),
            "export_seconds": meta["training_export"].get("export_seconds"),
            "train_seconds": model.get("train_seconds"),
            "trial_seconds": [t.get("seconds") for t in model.get("trials", [])]},
        "steps": [{"step": s["step"], "seconds": s["end"] - s["start"]} for s in steps],
        "home": str(home), "kept": bool(args.keep),
    }
    for name in STAGES:
        if name not in stages:
            continue
        rows = rows_of(name, counts)
        seconds = stages[name]["seconds"]
        limit = probes.get(name, {}).get("seconds")
        result["stages"][name] = {
            "seconds": seconds, "rows": rows, "rows_per_s": rows / seconds,
            "limit_seconds": limit, "ratio": seconds / limit,
            "peak_rss_mb": stages[name]["peak_rss_mb"], "peak_pss_mb": stages[name]["peak_pss_mb"],
            "python_pss_mb": stages[name]["python_pss_mb"],
            "cores_used": stages[name]["cores_used"], "other_cores": stages[name]["other_cores"],
            "limit": LIMIT_DESCRIPTIONS[name]}
    return result


if __name__ == "__main__":
    sys.exit(main())
