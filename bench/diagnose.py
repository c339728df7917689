"""Where the time goes inside each stage: targeted experiments on a home kept by `bench/run.py --keep`.

Business purpose: bench/run.py says how far each stage of the CMLE workflow is from what the machine
allows; this script says why, by timing what the product does in a stage beside the alternatives a
change would use, on the same data, so each suggested product change comes with a measured gain. It
never changes the product: alternatives run as scratch SQL or in-memory code and are dropped afterwards.

    python bench/run.py --profiles 100000 --keep        # prints "home": "/tmp/aep-bench-..."
    python bench/diagnose.py --home /tmp/aep-bench-... [--only sql,audiences] [--output bench/results/x.json]

Sections (default: all but the last two, which are slower or add scores to the home):
- generation: cProfile of one batch of the generator, by part, and its parquet writes;
- ingestion: the events files as the product lands them (logged table, userid index kept during COPY,
  two batches at once) against one at a time, the index built after the load, an unlogged table
  without index (the limit) and rows in time order instead of the files' (userid, time) order; one
  ANALYZE of the events (the product runs one after each initial batch);
- sql: the training CTAS as the product runs it (logged; random_page_cost 1.1), its count and
  ANALYZE, its plan, against unlogged, serial, JIT on (where the server has JIT) and random_page_cost 4; the
  converted-before count of the row-count check;
- sql_variants: the training SELECT without nested loops, with more work_mem, with sort aggregation,
  and on a copy of the events stored in one global (userid, timestamp) order;
- eda: the EDA step's two event queries (weekly counts, a BIT_OR type mask per user), the training
  sample and the numpy around them, against the queries they replaced (COUNT(DISTINCT) per type and a
  self-join of distinct (user, type) pairs), with a check that both give the same users;
- scoring_features: the features of every profile batch in one statement through the product's
  replace_slices (into a scratch table), the same SELECT alone, under random_page_cost 4 and without
  nested loops; the newest profile batch alone (the incremental rescore): plan and time with the
  server's random_page_cost 1.1 (index probes at a large base), the default 4, and index probes forced;
- training: read the export, search and refit, evaluation, permutation importance; one fit and the
  importance on one thread;
- scoring: MLflow load, fetch of one batch's features, predict, histogram;
- audiences: the latest score per profile read from the merged table ingestion maintains against the
  window over every score record (reach, sizes, activation's read), the activation cut and writes,
  and the merge upsert of one scores batch with the product's fillfactor 50 and with 100;
- incremental (optional): cProfile of a single-partition rescore of the newest profile batch;
- openmp (optional): sklearn's OpenMP settings (libgomp's default wait, the product's setting;
  OMP_WAIT_POLICY=PASSIVE; one thread) alone and beside one CPU-bound process.

Prints one line per measurement and, as the last line, all of them as JSON. Stops the server at the end
(the home is left in place; delete it yourself).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SECTIONS = ("generation", "ingestion", "sql", "sql_variants", "eda", "scoring_features", "training", "scoring",
            "audiences", "incremental", "openmp")
DEFAULT_SECTIONS = SECTIONS[:-2]

RESULTS: dict[str, object] = {}


def note(name: str, value) -> None:
    RESULTS[name] = value
    print(f"{name}: {value}", flush=True)


def clock(fn, *args, **kwargs):
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    return round(time.perf_counter() - started, 3), value


def execute(platform, text: str, *settings: str) -> float:
    """Seconds of one statement on its own connection (with optional SET lines before it)."""
    with platform.connect() as conn:
        for line in settings:
            conn.execute(line)
        started = time.perf_counter()
        conn.execute(text)
        return round(time.perf_counter() - started, 3)


def ctas(platform, select: str, *settings: str) -> float:
    """Seconds of the SELECT written to a scratch UNLOGGED table (every row and column computed)."""
    execute(platform, "DROP TABLE IF EXISTS diag_ctas")
    seconds = execute(platform, f"CREATE UNLOGGED TABLE diag_ctas AS {select}", *settings)
    execute(platform, "DROP TABLE IF EXISTS diag_ctas")
    return seconds


def plan(platform, select: str, *settings: str) -> list[str]:
    """The executed plan's scans, joins, aggregates and JIT lines, with their actual rows."""
    with platform.connect() as conn:
        for line in settings:
            conn.execute(line)
        lines = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {select}").fetchall()]
    keep = ("Scan", "Join", "Nested Loop", "Aggregate", "Gather", "Sort", "JIT", "Functions", "Execution Time")
    return [line.strip() for line in lines if any(word in line for word in keep)]


# --- generation -----------------------------------------------------------------------------------

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
    for (filename, _, function), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if (Path(filename).parent.name == "synthetic" or filename.endswith("holdout.py")) and function in (
                "profile_frame", "simulate", "is_held_out", "ground_truth", "oracle_probabilities", "event_frame",
                "argsort_pairs", "uuid_like", "fnv1a64", "walk"):
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


# --- ingestion ------------------------------------------------------------------------------------

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
    # the order the generator wrote before 69cb473: by time, users interleaved
    load("rows_in_time_order", [t.sort_by([("timestamp", "ascending"), ("userid", "ascending")]) for t in batches])
    # the product analyzes the events after each initial batch (each adds over a tenth of the rows)
    note("ingestion.analyze_events_s", execute(platform, f'ANALYZE "{events}"'))


# --- feature SQL ----------------------------------------------------------------------------------

def training_select(platform, training_meta: dict, events: str | None = None) -> str:
    """The training table's SELECT for the home's window, over the events dataset or another events table."""
    from aep_assets.lib import features
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS

    window = features.Window(datetime.fromisoformat(training_meta["cutoff"]),
                             datetime.fromisoformat(training_meta["horizon_end"]))
    events = events or platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table
    return features.training_sql(platform.dialect, events, platform.current_profiles(), window)


def feature_sql(platform, training_meta: dict) -> None:
    """The training CTAS as create_table_as runs it (logged, then count and ANALYZE), and under other settings."""
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS
    from aep_assets.lib.sql import Identifier

    text = training_select(platform, training_meta)
    execute(platform, "DROP TABLE IF EXISTS diag_training")
    note("feature_sql.product_logged_ctas_s", execute(platform, f"CREATE TABLE diag_training AS {text}"))
    note("feature_sql.count_s", execute(platform, "SELECT count(*) FROM diag_training"))
    note("feature_sql.analyze_s", execute(platform, "ANALYZE diag_training"))
    execute(platform, "DROP TABLE IF EXISTS diag_training")
    note("feature_sql.unlogged_ctas_s", ctas(platform, text))
    variants = [("random_page_cost_4", "SET random_page_cost = 4"),
                ("serial", "SET max_parallel_workers_per_gather = 0")]
    if platform.query("SELECT pg_jit_available() AS jit")["jit"][0].as_py():  # a JIT provider, and jit on
        variants.append(("jit_on", "SET jit = on"))
    for name, setting in variants:
        note(f"feature_sql.unlogged_ctas_{name}_s", ctas(platform, text, setting))
    note("feature_sql.plan", plan(platform, text))
    note("feature_sql.plan_random_page_cost_4", plan(platform, text, "SET random_page_cost = 4"))
    # the row-count check's second pass over the events
    events = Identifier(platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table)
    cutoff = datetime.fromisoformat(training_meta["cutoff"])
    note("feature_sql.converted_before_query_s",
         clock(platform.query, platform.render("converted_before", events=events, cutoff=cutoff))[0])


def feature_sql_variants(platform, training_meta: dict) -> None:
    """The training SELECT under other plans, and on an events table stored in one (userid, timestamp) order."""
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS

    text = training_select(platform, training_meta)
    for name, settings in (
            ("no_nested_loop", ["SET enable_nestloop = off"]),
            ("no_nested_loop_work_mem_64MB", ["SET enable_nestloop = off", "SET work_mem = '64MB'"]),
            ("no_nested_loop_sort_aggregate", ["SET enable_nestloop = off", "SET enable_hashagg = off"])):
        note(f"feature_sql.variant.{name}_s", ctas(platform, text, *settings))
    # The files are ordered by (userid, time) within each batch and two batches land at once; this copy
    # is ordered across all batches, as a CLUSTER on userid would leave it.
    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table
    execute(platform, "DROP TABLE IF EXISTS diag_events_by_user")
    note("feature_sql.variant.copy_events_in_user_order_s", execute(
        platform, f'CREATE UNLOGGED TABLE diag_events_by_user AS SELECT * FROM "{events}" ORDER BY userid, timestamp'))
    note("feature_sql.variant.index_userid_on_user_ordered_s",
         execute(platform, "CREATE INDEX ON diag_events_by_user (userid)"))
    execute(platform, "ANALYZE diag_events_by_user")
    correlation = {}
    for table in (events, "diag_events_by_user"):
        rows = platform.query(f"SELECT correlation FROM pg_stats WHERE tablename = '{table}' AND attname = 'userid'")
        correlation[table] = round(rows["correlation"][0].as_py(), 3) if rows.num_rows else None
    note("feature_sql.variant.userid_correlation_with_storage_order", correlation)
    ordered = training_select(platform, training_meta, "diag_events_by_user")
    note("feature_sql.variant.user_ordered_events_s", ctas(platform, ordered))
    note("feature_sql.variant.user_ordered_plan", plan(platform, ordered))
    execute(platform, "DROP TABLE IF EXISTS diag_events_by_user")


# --- EDA ------------------------------------------------------------------------------------------

# The funnel and co-occurrence queries the EDA step ran before 23f1cdd.
OLD_EVENT_TYPES = """
SELECT event_type, COUNT(*) AS events, COUNT(DISTINCT userid) AS users
FROM "{events}" GROUP BY event_type ORDER BY events DESC
"""
OLD_COOCCURRENCE = """
SELECT a.event_type AS event_type_a, b.event_type AS event_type_b, COUNT(*) AS users
FROM (SELECT DISTINCT userid, event_type FROM "{events}") AS a
JOIN (SELECT DISTINCT userid, event_type FROM "{events}") AS b
    ON a.userid = b.userid AND a.event_type <= b.event_type
GROUP BY a.event_type, b.event_type
ORDER BY users DESC
"""


def eda(platform) -> None:
    import polars as pl

    from aep_assets.lib import eda as lib
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS, TRAINING_DATASET
    from aep_assets.lib.eda import feature_label_correlations
    from aep_assets.lib.sql import Identifier

    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table
    training = platform.find_dataset_or_fail(TRAINING_DATASET).table
    types = sorted(EXPERIENCE_EVENTS.allowed_values["event_type"])
    weekly_s, weekly = clock(platform.query, platform.render("eda_weekly_events", events=Identifier(events)))
    combinations_s, combinations = clock(platform.query, platform.render(
        "eda_type_combinations", events=Identifier(events), type_bit=lib.type_bit(types)))
    sample_s, sample = clock(platform.query, platform.render("training_sample", table=Identifier(training)))
    started = time.perf_counter()
    pairs = lib.cooccurrence(pl.from_arrow(combinations), types)
    funnel = lib.funnel(pl.from_arrow(weekly), pairs, types)
    feature_label_correlations(pl.from_arrow(sample))
    note("eda.product_s", {"weekly_events_s": weekly_s, "type_combinations_s": combinations_s,
                           "training_sample_s": sample_s,
                           "numpy_polars_s": round(time.perf_counter() - started, 3),
                           "combinations": combinations.num_rows})
    old_types_s, old_types = clock(platform.query, OLD_EVENT_TYPES.format(events=events))
    old_pairs_s, old_pairs = clock(platform.query, OLD_COOCCURRENCE.format(events=events))
    note("eda.replaced_queries_s", {"count_distinct_per_type_s": old_types_s, "cooccurrence_self_join_s": old_pairs_s})
    users = dict(zip(funnel["event_type"].to_list(), funnel["users"].to_list(), strict=True))
    same = users == dict(zip(old_types["event_type"].to_pylist(), old_types["users"].to_pylist(), strict=True))
    for a, b, count in zip(*(old_pairs[c].to_pylist() for c in ("event_type_a", "event_type_b", "users")),
                           strict=True):
        same = same and int(pairs[types.index(a), types.index(b)]) == count
    note("eda.same_users_per_type_and_pair", same)


# --- scoring features -----------------------------------------------------------------------------

def scoring_features(platform) -> None:
    from aep_assets.lib import features
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, SCORING_DATASET
    from aep_assets.resources.platform import Dataset

    events = platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table
    profiles = platform.find_dataset_or_fail(PROFILES.name)
    keys = [b.id for b in platform.completed_batches(profiles) if b.status == "success"]
    as_of = datetime.now(timezone.utc).replace(microsecond=0)
    every = features.scoring_sql(platform.dialect, events, platform.current_records(profiles, PROFILES), as_of, keys)
    # What the asset does for a full rescore, into a scratch table shaped as the product's: the first run
    # fills an empty table, the second replaces the rows (the steady state).
    table = platform.find_dataset_or_fail(SCORING_DATASET).table
    execute(platform, "DROP TABLE IF EXISTS diag_scoring")
    execute(platform, f'CREATE TABLE diag_scoring (LIKE "{table}")')
    scratch = Dataset("diag", "diag_scoring", "diag_scoring", False, 0)
    first_s, rows = clock(platform.replace_slices, scratch, "profile_batch", keys, every)
    again_s, _ = clock(platform.replace_slices, scratch, "profile_batch", keys, every)
    execute(platform, "DROP TABLE IF EXISTS diag_scoring")
    note("scoring_features.all_batches_replace_slices_s", {
        "into_empty_s": first_s, "replacing_s": again_s, "batches": len(keys), "rows": sum(rows.values())})
    note("scoring_features.all_batches_unlogged_ctas_s", ctas(platform, every))
    note("scoring_features.all_batches_random_page_cost_4_s", ctas(platform, every, "SET random_page_cost = 4"))
    note("scoring_features.all_batches_no_nested_loop_s", ctas(platform, every, "SET enable_nestloop = off"))
    note("scoring_features.all_batches_plan", plan(platform, every))
    # The incremental rescore: the newest batch alone, as the server's random_page_cost 1.1 plans it (index
    # probes into the events for its users once the batch is small beside the base), as the default 4 plans
    # it, and with the index probes forced whatever the sizes.
    newest = features.scoring_sql(platform.dialect, events, platform.current_records(profiles, PROFILES), as_of,
                                  keys[-1:])
    note("scoring_features.newest_batch_profiles", rows[keys[-1]])
    for name, settings in (("random_page_cost_1.1", []), ("random_page_cost_4", ["SET random_page_cost = 4"]),
                           ("index_probes_forced", ["SET enable_hashjoin = off", "SET enable_mergejoin = off"])):
        note(f"scoring_features.newest_batch_{name}_s", ctas(platform, newest, *settings))
        note(f"scoring_features.newest_batch_{name}_plan", plan(platform, newest, *settings))


# --- training -------------------------------------------------------------------------------------

def training(platform, storage) -> None:
    import polars as pl
    from threadpoolctl import threadpool_limits

    from aep_assets.lib import modeling
    from aep_assets.lib.datasets import TRAINING_DATASET
    from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN
    from aep_assets.lib.holdout import is_held_out
    from aep_assets.resources.platform import export_parent

    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    seconds, frame = clock(lambda: modeling.in_profile_order(storage.read_frame(manifest)))
    note("training.read_export_s", seconds)
    seconds, model = clock(modeling.train, frame, modeling.TrainingSettings())
    note("training.search_and_refit_s", {"total": seconds, "search": round(model.search_seconds, 3),
                                         "trials": [t["seconds"] for t in model.trials]})
    scores = model.estimator.predict_proba(model.x_test)[:, 1]
    note("training.evaluate_with_plots_s", clock(modeling.evaluate, model.y_test, scores)[0])
    note("training.permutation_importance_s", clock(modeling.importance, model)[0])
    with threadpool_limits(1):
        note("training.permutation_importance_one_thread_s", clock(modeling.importance, model)[0])
    train = pl.Series(~is_held_out(frame[ID_COLUMN]))
    x_train = modeling.matrix(frame.filter(train), model.features)
    y_train = frame[LABEL_COLUMN].filter(train).to_numpy().astype(np.int8)
    estimator = modeling.build_estimator("hist_gradient_boosting", model.params, 42)
    note("training.one_fit_default_threads_s", clock(estimator.fit, x_train, y_train)[0])
    with threadpool_limits(1):
        note("training.one_fit_one_thread_s", clock(estimator.fit, x_train, y_train)[0])


OPENMP_PROBE = """
import sys, time
import numpy as np
from aep_assets.lib import modeling
data = np.load(sys.argv[1])
estimator = modeling.build_estimator("hist_gradient_boosting", eval(sys.argv[2]), 42)
started = time.perf_counter(); estimator.fit(data["x"], data["y"]); fit = time.perf_counter() - started
rows = data["x"][:5000]
started = time.perf_counter()
for _ in range(2 * rows.shape[1]):  # what permutation importance does: features x 2 repeats of predict_proba
    estimator.predict_proba(rows)
print(round(fit, 3), round(time.perf_counter() - started, 3))
"""


def openmp(platform, storage) -> None:
    """sklearn's OpenMP threads on a shared 2-core machine, in fresh processes: libgomp's default wait
    policy (the product's), OMP_WAIT_POLICY=PASSIVE and one thread; alone, then beside one CPU-bound process
    of ours (a controlled stand-in for a colleague's job on the other core)."""
    import subprocess

    import polars as pl

    from aep_assets.lib import modeling
    from aep_assets.lib.datasets import TRAINING_DATASET
    from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN, feature_columns
    from aep_assets.lib.holdout import is_held_out
    from aep_assets.resources.platform import export_parent

    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    frame = modeling.in_profile_order(storage.read_frame(manifest))
    train = frame.filter(pl.Series(~is_held_out(frame[ID_COLUMN])))
    params = {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0}
    unset = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    with tempfile.TemporaryDirectory(prefix="diag-omp-") as tmp:
        path = Path(tmp) / "xy.npz"
        np.savez(path, x=modeling.matrix(train, feature_columns(train.columns)),
                 y=train[LABEL_COLUMN].to_numpy().astype(np.int8))
        for hogs in (0, 1):
            spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
            try:
                for name, extra in (("libgomp_default", {}),
                                    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
                                    ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})):
                    out = subprocess.run([sys.executable, "-c", OPENMP_PROBE, str(path), repr(params)],
                                         env={**unset, **extra}, capture_output=True, text=True,
                                         check=True).stdout.split()
                    note(f"openmp.{hogs}_busy_process.{name}", {
                        "fit_s": float(out[0]), "importance_predicts_s": float(out[1]),
                        "load_1min": round(os.getloadavg()[0], 2)})
            finally:
                for spinner in spinners:
                    spinner.terminate()
                    spinner.wait()


# --- scoring, audiences, activation ---------------------------------------------------------------

def scoring(platform, tracking) -> None:
    import polars as pl

    from aep_assets.lib import modeling, plots
    from aep_assets.lib.datasets import SCORING_DATASET
    from aep_assets.lib.sql import Identifier

    note("scoring.mlflow_activate_s", clock(tracking.activate)[0])
    note("scoring.champion_lookup_s", clock(tracking.champion_version)[0])
    seconds, champion = clock(tracking.load_champion)
    note("scoring.load_model_s", seconds)
    estimator = champion.estimator
    table = platform.find_dataset_or_fail(SCORING_DATASET).table
    key = platform.query(f'SELECT profile_batch FROM "{table}" LIMIT 1')["profile_batch"][0].as_py()
    seconds, frame = clock(lambda: pl.from_arrow(platform.query(platform.render(
        "scoring_features_of_batch", table=Identifier(table), profile_batch=key))))
    note("scoring.fetch_one_batch_s", seconds)
    names = [c for c in frame.columns if c not in ("userid", "profile_batch")]
    note("scoring.predict_one_batch_s", clock(modeling.predict, estimator, frame, names)[0])
    values = np.random.default_rng(0).random(frame.height)
    note("scoring.histogram_plot_s", clock(plots.histogram, values, "x", "y")[0])


def audiences(platform) -> None:
    """The profile view of the scores as the product reads it (the merged table) and as the window over
    every score record (what it replaced; still the AEP platform's view), and what the merge costs."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home kept by bench/run.py --keep")
    parser.add_argument("--only", default="", help=f"comma-separated, from: {','.join(SECTIONS)} "
                                                   f"(default: all but {','.join(SECTIONS[len(DEFAULT_SECTIONS):])})")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    wanted = set(filter(None, args.only.split(","))) or set(DEFAULT_SECTIONS)
    if wanted - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(wanted - set(SECTIONS))}")
    os.environ.update({"AEP_ASSETS_HOME": str(args.home), "DAGSTER_HOME": str(args.home / "dagster"),
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    import dagster as dg

    from aep_assets.lib.source_files import source_folder
    from aep_assets.resources.embedded_postgres import EmbeddedPostgres
    from aep_assets.resources.local_platform import LocalPlatform
    from aep_assets.resources.storage import LocalStorage
    from aep_assets.resources.tracking import MlflowTracking

    platform, storage, tracking = LocalPlatform(), LocalStorage(), MlflowTracking()
    note("load_average_start", [round(x, 2) for x in os.getloadavg()])
    try:
        with dg.DagsterInstance.get() as instance:
            record = instance.get_latest_materialization_event(dg.AssetKey("training_features"))
            training_meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
            profiles = instance.get_latest_materialization_event(dg.AssetKey("synthetic_profiles"))
            n_profiles = profiles.asset_materialization.metadata["dagster/row_count"].value
        server = platform.query("SELECT current_setting('jit') AS jit, pg_jit_available() AS jit_available, "
                                "current_setting('random_page_cost') AS random_page_cost, "
                                "current_setting('server_version') AS version")
        note("server", {name: server[name][0].as_py() for name in server.column_names})
        run = {
            "generation": lambda: generation(n_profiles),
            "ingestion": lambda: ingestion(platform, source_folder()),
            "sql": lambda: feature_sql(platform, training_meta),
            "sql_variants": lambda: feature_sql_variants(platform, training_meta),
            "eda": lambda: eda(platform),
            "scoring_features": lambda: scoring_features(platform),
            "training": lambda: training(platform, storage),
            "scoring": lambda: scoring(platform, tracking),
            "audiences": lambda: audiences(platform),
            "incremental": lambda: incremental(platform),
            "openmp": lambda: openmp(platform, storage),
        }
        for section in SECTIONS:  # in this order, whatever the order of --only
            if section in wanted:
                run[section]()
    finally:
        EmbeddedPostgres(args.home / "postgres").stop()
    note("load_average_end", [round(x, 2) for x in os.getloadavg()])
    text = json.dumps(RESULTS, default=str)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
