"""Diagnose the loading stages: the synthetic generator by part, and the events' ingestion by table shape.

Business purpose: which part of generating and landing the customers' data a change could speed up,
with the gain measured on the home's own files.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from diagnose_tools import clock, execute, note


def generation(profiles: int) -> None:
    """cProfile of one batch of the product's generator, by top-level part, and its file writes."""
    import polars as pl

    from aep_assets.defs.synthetic import SyntheticDataConfig
    from aep_assets.lib import synthetic
    from aep_assets.lib.source_files import SourceFolder, timeline_of

    config = SyntheticDataConfig(profiles=profiles).generator_config()
    synthetic.generate_batch(config, 9)  # warm: Faker pools, imports
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    data = synthetic.generate_batch(config, 0)
    profiler.disable()
    total = time.perf_counter() - started
    parts = {}
    ours = ("profile_frame", "simulate", "is_held_out", "ground_truth", "oracle_probabilities", "event_frame",
            "argsort_pairs", "uuid_like", "fnv1a64", "walk")
    for (filename, _, function), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        in_lib = Path(filename).parent.name == "synthetic" or filename.endswith(("holdout.py", "hashing.py"))
        if in_lib and function in ours:
            parts[function] = round(cumulative, 3)
    note("generation.batch0_seconds", round(total, 3))
    note("generation.batch0_events", data.events.height)
    note("generation.batch0_parts", parts)
    with tempfile.TemporaryDirectory(prefix="diag-gen-") as tmp:
        seconds, _ = clock(SourceFolder(Path(tmp)).write_batch, Path(tmp), 0, data, timeline_of(config))
        note("generation.batch0_write_parquet_s", seconds)
    # the product's string columns, as dictionary-encoded (categorical) columns instead
    events = data.events
    seconds, _ = clock(lambda: events.with_columns(
        [events[c].cast(pl.Categorical) for c in ("event_type", "produced_by", "page_name", "page_url",
                                                  "campaign_id")]))
    note("generation.batch0_categorical_cast_s", seconds)


def ingestion(platform, folder) -> None:
    """The events files into scratch tables shaped as the product's and as the alternatives."""
    import adbc_driver_postgresql.dbapi as adbc

    from aep_assets.lib.datasets import EXPERIENCE_EVENTS, conform

    seconds, tables = clock(lambda: [pq.read_table(path) for path in folder.files("events")])
    note("ingestion.read_parquet_s", seconds)
    seconds, conformed = clock(lambda: [conform(t, EXPERIENCE_EVENTS, "diag") for t in tables])
    note("ingestion.conform_s", seconds)
    batches = [t.append_column("_acp_batchid", pa.array([f"b{i:05d}"] * t.num_rows, pa.string()))
               for i, t in enumerate(conformed)]
    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table

    def copy(data: pa.Table) -> None:  # as LocalPlatform.ingest_batch: one connection and transaction per batch
        with adbc.connect(platform.address().uri) as conn:
            with conn.cursor() as cursor:
                cursor.adbc_ingest("diag_ingest", data, mode="append")
            conn.commit()

    def load(name: str, data: list[pa.Table], *, at_once: int = 2, logged: bool = True, index: str = "during"
             ) -> None:
        execute(platform, "DROP TABLE IF EXISTS diag_ingest")
        execute(platform, f'CREATE {"" if logged else "UNLOGGED "}TABLE diag_ingest (LIKE "{events}")')
        if index == "during":
            execute(platform, "CREATE INDEX ON diag_ingest (userid)")
        started = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(copy, data))
        copy_s = time.perf_counter() - started
        index_s = execute(platform, "CREATE INDEX ON diag_ingest (userid)") if index == "after" else 0.0
        note(f"ingestion.{name}", {"copy_s": round(copy_s, 3), "index_after_s": index_s,
                                   "total_s": round(copy_s + index_s, 3)})
        execute(platform, "DROP TABLE IF EXISTS diag_ingest")

    load("product_userid_index_two_at_once", batches)
    load("one_at_a_time", batches, at_once=1)
    load("index_built_after", batches, index="after")
    load("unlogged_no_index", batches, logged=False, index="none")
    # rows by time, users interleaved: what the files' (userid, time) order saves the userid index
    load("rows_in_time_order", [t.sort_by([("timestamp", "ascending"), ("userid", "ascending")]) for t in batches])
    # the product analyzes the events after each initial batch (each adds over a tenth of the rows)
    note("ingestion.analyze_events_s", execute(platform, f'ANALYZE "{events}"'))
