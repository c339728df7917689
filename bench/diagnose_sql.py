"""Diagnose the SQL stages: the training CTAS and its plans, the EDA queries, the scoring features.

Business purpose: the feature SQL is where most of the pipeline's time goes at scale; each setting,
plan or storage order a product change could pick is timed beside what the product runs today.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from diagnose_tools import clock, ctas, execute, note, plan


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


# The funnel and co-occurrence as COUNT(DISTINCT) per type and a self-join of distinct (user, type) pairs:
# the straightforward queries the EDA step's two passes stand in for, kept to measure the gain and to check
# that both give the same users.
COUNT_DISTINCT_PER_TYPE = """
SELECT event_type, COUNT(*) AS events, COUNT(DISTINCT userid) AS users
FROM "{events}" GROUP BY event_type ORDER BY events DESC
"""
SELF_JOIN_COOCCURRENCE = """
SELECT a.event_type AS event_type_a, b.event_type AS event_type_b, COUNT(*) AS users
FROM (SELECT DISTINCT userid, event_type FROM "{events}") AS a
JOIN (SELECT DISTINCT userid, event_type FROM "{events}") AS b
    ON a.userid = b.userid AND a.event_type <= b.event_type
GROUP BY a.event_type, b.event_type
ORDER BY users DESC
"""


def eda(platform) -> None:
    """The EDA step's queries and in-memory work against the straightforward queries, and that both agree."""
    import polars as pl

    from aep_assets.lib import eda as lib
    from aep_assets.lib.datasets import EXPERIENCE_EVENTS, TRAINING_DATASET
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
    lib.feature_label_correlations(pl.from_arrow(sample))
    note("eda.product_s", {"weekly_events_s": weekly_s, "type_combinations_s": combinations_s,
                           "training_sample_s": sample_s,
                           "numpy_polars_s": round(time.perf_counter() - started, 3),
                           "combinations": combinations.num_rows})
    old_types_s, old_types = clock(platform.query, COUNT_DISTINCT_PER_TYPE.format(events=events))
    old_pairs_s, old_pairs = clock(platform.query, SELF_JOIN_COOCCURRENCE.format(events=events))
    note("eda.replaced_queries_s", {"count_distinct_per_type_s": old_types_s, "cooccurrence_self_join_s": old_pairs_s})
    users = dict(zip(funnel["event_type"].to_list(), funnel["users"].to_list(), strict=True))
    same = users == dict(zip(old_types["event_type"].to_pylist(), old_types["users"].to_pylist(), strict=True))
    for a, b, count in zip(*(old_pairs[c].to_pylist() for c in ("event_type_a", "event_type_b", "users")),
                           strict=True):
        same = same and int(pairs[types.index(a), types.index(b)]) == count
    note("eda.same_users_per_type_and_pair", same)


def scoring_features(platform) -> None:
    """The scoring features of every batch (a full rescore) and of the newest batch alone, under other plans."""
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
