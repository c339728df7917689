"""Diagnose what follows scoring: the audiences' reads and writes, and a whole single-partition rescore.

Business purpose: a new profile batch must reach activation in seconds; this shows which read, merge
or call grows with the base the batch lands on.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from diagnose_tools import clock, execute, note


def audiences(platform) -> None:
    """The profile view of the scores as the product reads it (the merged table) and as the window over
    every score record (the AEP platform's view), and what the merge costs."""
    from aep_assets.lib import audiences as lib
    from aep_assets.lib import merge
    from aep_assets.lib.datasets import PROPENSITY_SCORES

    scores = platform.find_dataset_or_fail(PROPENSITY_SCORES.name)
    profiles = platform.current_profiles()
    merged, window = platform.current_records(scores, PROPENSITY_SCORES), merge.current_records_sql(
        PROPENSITY_SCORES, scores.table)
    intervals = platform.audiences()
    bounds = [(a.lower, a.upper) for a in intervals]
    for name, make in (("latest_propensities", lambda v: lib.latest_propensities_sql(platform.dialect, v)),
                       ("sizes_one_pass", lambda v: lib.sizes_sql(platform.dialect, v, bounds)),
                       ("latest_members", lambda v: lib.latest_members_sql(platform.dialect, v, profiles))):
        note(f"audiences.{name}_s", {"merged_table_s": clock(platform.query, make(merged))[0],
                                     "window_s": clock(platform.query, make(window))[0]})
    records = platform.query(f'SELECT count(*) AS n FROM "{scores.table}"')["n"][0].as_py()
    merged_rows = platform.query(f'SELECT count(*) AS n FROM "{merge.merged_table(scores.table)}"')["n"][0].as_py()
    note("audiences.score_records_vs_profiles", {"records": records, "profiles": merged_rows})
    # activation's cut of the members in memory and its zstd writes
    members = platform.query(lib.latest_members_sql(platform.dialect, merged, profiles))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diag-act-") as tmp:
        values = members["propensity"].to_numpy()
        for index, a in enumerate(intervals):
            pq.write_table(members.filter(pa.array((values >= a.lower) & (values < a.upper))),
                           Path(tmp) / f"{index}.parquet", compression="zstd")
    note("audiences.activation_cut_and_write_s", round(time.perf_counter() - started, 3))
    # The merge ingestion runs per scores batch (the newest, again), on scratch copies: its records and the
    # merged table, with the product's fillfactor 50 (room for HOT updates) and with the default 100.
    newest = [b.id for b in platform.completed_batches(scores) if b.status == "success"][-1]
    execute(platform, "DROP TABLE IF EXISTS diag_scores, diag_scores__profile")
    execute(platform, f"CREATE TABLE diag_scores AS SELECT * FROM \"{scores.table}\" WHERE _acp_batchid = '{newest}'")
    upserts = {"records": platform.query("SELECT count(*) AS n FROM diag_scores")["n"][0].as_py()}
    for fillfactor in (50, 100):
        execute(platform, "DROP TABLE IF EXISTS diag_scores__profile")
        execute(platform, f'CREATE TABLE diag_scores__profile (LIKE "{merge.merged_table(scores.table)}", '
                          f"PRIMARY KEY (userid)) WITH (fillfactor = {fillfactor})")
        execute(platform, f'INSERT INTO diag_scores__profile SELECT * FROM "{merge.merged_table(scores.table)}" '
                          "ORDER BY userid")
        execute(platform, "VACUUM ANALYZE diag_scores__profile")
        upserts[f"fillfactor_{fillfactor}_s"] = execute(platform, merge.upsert_sql(PROPENSITY_SCORES, "diag_scores",
                                                                                   newest))
    execute(platform, "DROP TABLE IF EXISTS diag_scores, diag_scores__profile")
    note("audiences.merge_upsert_newest_scores_batch", upserts)


def incremental(platform) -> None:
    """cProfile of a single-partition rescore of the newest profile batch: which calls grow with the base."""
    import dagster as dg

    from aep_assets.definitions import build_definitions
    from aep_assets.lib.datasets import PROFILES

    key = [b.id for b in platform.completed_batches(platform.find_dataset_or_fail(PROFILES.name))
           if b.status == "success"][-1]
    defs = build_definitions()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("profile_batches", [key])
        job = defs.resolve_job_def("rescore_profile_batch_job")
        job.execute_in_process(instance=instance, partition_key=key, run_config=quiet, raise_on_error=True)  # warm
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        job.execute_in_process(instance=instance, partition_key=key, run_config=quiet, raise_on_error=True)
        profiler.disable()
    note("incremental.rescore_warm_s", round(time.perf_counter() - started, 3))
    calls = []
    for (filename, line, function), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if "/aep_assets/" in filename and cumulative >= 0.15:
            calls.append((round(cumulative, 3), f"{filename.split('/aep_assets/')[-1]}:{line} {function}"))
    note("incremental.aep_assets_calls_over_0.15s", sorted(calls, reverse=True)[:30])
