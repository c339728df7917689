"""`LocalPlatform`: Experience Platform on an embedded PostgreSQL server.

Catalog tables (`local_catalog`) mirror AEP's Catalog service (datasets, batches) and Segmentation (audiences);
each dataset is a table with a `_acp_batchid` column (a dataset with a merge policy also has its
merged table, one row per profile, kept current by ingestion, as the Profile store is); Query
Service is the same server over the PostgreSQL protocol. Bulk data moves as Arrow through ADBC's
binary COPY, never row by row.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cached_property
from pathlib import Path

import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, PrivateAttr

from aep_assets.lib import audiences, merge, names, sql
from aep_assets.lib.datasets import (
    PROPENSITY_SCORES,
    BatchValidationError,
    DatasetSpec,
    check_unique_across_files,
    identity_hashes,
)
from aep_assets.resources.embedded_postgres import EmbeddedPostgres, ServerAddress
from aep_assets.resources.local_catalog import (
    BATCH_COLUMNS,
    CATALOG_DDL,
    NOW_MS,
    PG_TYPES,
    batch_row,
    dataset_row,
    new_id,
)
from aep_assets.resources.platform import (
    Audience,
    Batch,
    BatchIngestionError,
    Dataset,
    Platform,
    conformed_file,
    export_prefix,
)
from aep_assets.resources.storage import Manifest, Storage
from aep_assets.settings import assets_home


class LocalPlatform(Platform):
    """The embedded platform: a PostgreSQL server in `$AEP_ASSETS_HOME/postgres`, started on first use."""

    home: str = Field(default="", description="Project data folder; empty means $AEP_ASSETS_HOME.")
    database: str = Field(default="aep", description="Database on the embedded server (tests use their own).")
    _address: ServerAddress | None = PrivateAttr(default=None)
    _address_pid: int = PrivateAttr(default=0)

    @property
    def dialect(self) -> sql.Dialect:
        return "postgres"

    @property
    def concurrent_ingestions(self) -> int:
        # One COPY keeps one server process busy: two at once land a large load about 30% faster
        # on 2 cores (each batch stays its own transaction).
        return min(2, os.cpu_count() or 1)

    # --- connections --------------------------------------------------------------------------
    @cached_property
    def server(self) -> EmbeddedPostgres:
        return EmbeddedPostgres((Path(self.home) if self.home else assets_home()) / "postgres")

    def address(self) -> ServerAddress:
        """Start the server if needed and create the catalog; cached for this process."""
        if self._address is None or self._address_pid != os.getpid():
            address = self.server.ensure_running(names.identifier(self.database, "database name"))
            with psycopg.connect(address.conninfo, autocommit=True) as conn:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(4242)")  # concurrent first runs
                    conn.execute(CATALOG_DDL)
            self._address, self._address_pid = address, os.getpid()
        return self._address

    def _open(self, connect):
        """`connect(address)`; if the server died since we cached its address, start it again once."""
        try:
            return connect(self.address())
        except (psycopg.OperationalError, adbc.OperationalError):
            self._address = None
            return connect(self.address())

    @contextmanager
    def connect(self):
        """A psycopg 3 connection (autocommit) to the local Query Service."""
        with self._open(lambda a: psycopg.connect(a.conninfo, autocommit=True)) as conn:
            yield conn

    @contextmanager
    def _arrow_connection(self):
        """An ADBC connection: Arrow in and out through binary COPY."""
        with self._open(lambda a: adbc.connect(a.uri)) as conn:
            yield conn

    # --- catalog ------------------------------------------------------------------------------
    def ensure_dataset(self, spec: DatasetSpec) -> Dataset:
        table = names.identifier(spec.name, "dataset name")
        columns = ", ".join(f"{names.quoted(f.name, 'column')} {PG_TYPES[f.type]}" for f in spec.schema)
        xdm = {f.name: str(f.type) for f in spec.schema}
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dataset:{table}",))
            existing = dataset_row(conn, "name", spec.name)
            if existing:
                self._ensure_merged_table(conn, spec, table)
                return existing
            conn.execute(f"CREATE TABLE IF NOT EXISTS {names.quoted(table)} ({columns}, _acp_batchid text NOT NULL)")
            if spec.unique_identity:  # record datasets are read per batch; events never are
                conn.execute(f"CREATE INDEX IF NOT EXISTS {names.quoted(table + '_batch')} "
                             f"ON {names.quoted(table)} (_acp_batchid)")
            if not spec.merged:  # otherwise profiles are looked up in the merged table, keyed by identity
                conn.execute(f"CREATE INDEX IF NOT EXISTS {names.quoted(table + '_identity')} "
                             f"ON {names.quoted(table)} ({names.quoted(spec.identity)})")
            conn.execute(
                f"INSERT INTO catalog.datasets VALUES (%s, %s, %s, %s, %s, {NOW_MS})",
                (secrets.token_hex(12), spec.name, table, psycopg.types.json.Jsonb(xdm), spec.profile_enabled),
            )
            self._ensure_merged_table(conn, spec, table)
            return dataset_row(conn, "name", spec.name)

    @staticmethod
    def _ensure_merged_table(conn, spec: DatasetSpec, table: str) -> None:
        """For a dataset with a merge policy, the table of its merged records (one per identity) that
        ingestion keeps current, as the Profile store is: reading the latest record per profile is then
        a plain scan, not a window over every record ever ingested. Built from the records once."""
        if not spec.merged:
            return
        merged = names.quoted(merge.merged_table(table))
        if conn.execute("SELECT to_regclass(%s)", (merged,)).fetchone()[0] is not None:
            return
        # Every rescoring rewrites each profile's row: free space on the page lets PostgreSQL update it in
        # place (a HOT update, no new index entry), a third faster than a new row version (docs/performance.md).
        conn.execute(f"CREATE TABLE {merged} (LIKE {names.quoted(table)}, PRIMARY KEY ({names.quoted(spec.identity)})) "
                     "WITH (fillfactor = 50)")
        if not spec.merge_by:  # profiles: scoring reads them per batch (the batch that last touched each one)
            conn.execute(f"CREATE INDEX {names.quoted(merge.merged_table(table) + '_batch')} "
                         f"ON {merged} (_acp_batchid)")
        conn.execute(merge.upsert_sql(spec, table))

    def find_dataset(self, name: str) -> Dataset | None:
        with self.connect() as conn:
            return dataset_row(conn, "name", name)

    def batch(self, batch_id: str) -> Batch | None:
        """One batch by id, as the Catalog's /batches/{id}."""
        with self.connect() as conn:
            return batch_row(conn, batch_id)

    def batches(self, dataset: Dataset) -> list[Batch]:
        """Every batch of a dataset, any status, oldest first."""
        with self.connect() as conn:
            rows = conn.execute(f"SELECT {BATCH_COLUMNS} FROM catalog.batches WHERE dataset_id = %s "
                                "ORDER BY created_ms, id", (dataset.id,)).fetchall()
        return [Batch(*row) for row in rows]

    def completed_batches(self, dataset: Dataset, *, completed_after_ms: int = 0, limit: int | None = None
                          ) -> list[Batch]:
        with self.connect() as conn:
            rows = conn.execute(
                f"SELECT {BATCH_COLUMNS} FROM catalog.batches WHERE dataset_id = %s "
                "AND status IN ('success', 'failed') AND completed_ms >= %s ORDER BY completed_ms, id LIMIT %s",
                (dataset.id, completed_after_ms, limit),
            ).fetchall()
        return [Batch(*row) for row in rows]

    # --- ingestion ----------------------------------------------------------------------------
    def ingest_batch(self, dataset: Dataset, spec: DatasetSpec, files: Sequence[Path], *,
                     idempotency_key: str, refresh_statistics: bool = True) -> Batch:
        if not files:
            raise BatchIngestionError(f"batch for dataset {dataset.name} has no files")
        with self.connect() as guard:
            # Held for the whole ingestion: concurrent requests for the same content run once, and a
            # 'loading' batch whose owner died (lock released) is recognisable as abandoned.
            guard.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"ingest:{dataset.id}:{idempotency_key}",))
            existing = guard.execute(
                f"SELECT {BATCH_COLUMNS} FROM catalog.batches WHERE dataset_id = %s AND idempotency_key = %s "
                "AND status = 'success'", (dataset.id, idempotency_key)).fetchone()
            if existing:
                return Batch(*existing)
            guard.execute(
                f"UPDATE catalog.batches SET status = 'failed', completed_ms = {NOW_MS}, "
                "error = 'abandoned: the ingesting process stopped before completing the batch' "
                "WHERE dataset_id = %s AND idempotency_key = %s AND status = 'loading'",
                (dataset.id, idempotency_key))
            batch_id = new_id()
            guard.execute(
                f"INSERT INTO catalog.batches (id, dataset_id, status, created_ms, idempotency_key) "
                f"VALUES (%s, %s, 'loading', {NOW_MS}, %s)", (batch_id, dataset.id, idempotency_key))
            try:
                table = self._read_batch_files(spec, files, batch_id)
                with self._arrow_connection() as conn:
                    with conn.cursor() as cursor:
                        cursor.adbc_ingest(dataset.table, table, mode="append")
                        if spec.merged:
                            cursor.execute(merge.upsert_sql(spec, dataset.table, batch_id))
                        cursor.execute(
                            f"UPDATE catalog.batches SET status = 'success', record_count = {table.num_rows}, "
                            f"completed_ms = {NOW_MS} WHERE id = '{batch_id}'")
                    conn.commit()
            except Exception as error:
                message = str(error) if isinstance(error, BatchValidationError) else f"{type(error).__name__}: {error}"
                guard.execute(
                    f"UPDATE catalog.batches SET status = 'failed', completed_ms = {NOW_MS}, error = %s "
                    "WHERE id = %s", (message[:4000], batch_id))
                failed = self.batch(batch_id)
                raise BatchIngestionError(
                    f"batch {batch_id} of dataset {dataset.name} failed: {message}", failed) from error
            finally:
                guard.execute("SELECT pg_advisory_unlock(hashtext(%s))",
                              (f"ingest:{dataset.id}:{idempotency_key}",))
            # Statistics current before the next query, not whenever autovacuum gets to it (the feature SQL's
            # joins depend on them), once a batch adds a tenth of the rows last analyzed, autovacuum's threshold.
            # A merged dataset is read through its merged table, by plain scans: nothing to plan.
            landed = batch_row(guard, batch_id)
            if refresh_statistics and not spec.merged:
                analyzed_rows = guard.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass",
                                              (names.quoted(dataset.table),)).fetchone()[0]
                if (landed.record_count or 0) * 10 >= analyzed_rows:
                    guard.execute(f"ANALYZE {names.quoted(dataset.table)}")
        return landed

    def refresh_statistics(self, dataset: Dataset) -> None:
        # The merged table too, where there is one: the queries read it, and without statistics a filter on
        # a few batches is estimated at a few thousand profiles, so at 1M profiles the scoring features'
        # hash aggregate spilled to disk (30-37 s against 11 s for the same SELECT with statistics).
        merged = merge.merged_table(dataset.table)
        with self.connect() as conn:
            conn.execute(f"ANALYZE {names.quoted(dataset.table)}")
            if conn.execute("SELECT to_regclass(%s)", (names.quoted(merged),)).fetchone()[0] is not None:
                conn.execute(f"ANALYZE {names.quoted(merged)}")

    @staticmethod
    def _read_batch_files(spec: DatasetSpec, files: Sequence[Path], batch_id: str) -> pa.Table:
        parts = [conformed_file(path, spec) for path in files]
        if spec.unique_identity and len(parts) > 1:
            check_unique_across_files(spec, [identity_hashes(pl.from_arrow(p.column(spec.identity))) for p in parts],
                                      files)
        table = pa.concat_tables(parts)
        return table.append_column("_acp_batchid", pa.repeat(pa.scalar(batch_id), table.num_rows).cast(pa.string()))

    # --- Query Service ------------------------------------------------------------------------
    def query(self, text: str) -> pa.Table:
        with self._arrow_connection() as conn, conn.cursor() as cursor:
            cursor.execute(text)
            return cursor.fetch_arrow_table()

    def stream(self, select: str, storage: Storage, name: str) -> Iterator[pa.RecordBatch]:
        """Straight from the server, batch by batch (binary COPY through ADBC)."""
        with self._arrow_connection() as conn, conn.cursor() as cursor:
            cursor.execute(select)
            yield from cursor.fetch_record_batch()

    def execute(self, text: str) -> None:
        """A statement with no result (DDL, DML)."""
        with self.connect() as conn:
            conn.execute(text)

    def create_table_as(self, name: str, select: str) -> Dataset:
        table = names.identifier(name, "dataset name")
        staging = names.quoted(f"{table}__staging")
        with self.connect() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"dataset:{table}",))
            conn.execute(f"DROP TABLE IF EXISTS {staging}")
            conn.execute(f"CREATE TABLE {staging} AS {select}")
            rows = conn.execute(f"SELECT count(*) FROM {staging}").fetchone()[0]
            conn.execute(f"DROP TABLE IF EXISTS {names.quoted(table)}")
            conn.execute(f"ALTER TABLE {staging} RENAME TO {names.quoted(table)}")
            conn.execute(f"ANALYZE {names.quoted(table)}")
            columns = conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position", (table,)).fetchall()
            xdm = psycopg.types.json.Jsonb(dict(columns))
            dataset = dataset_row(conn, "name", name)
            if dataset is None:
                conn.execute(f"INSERT INTO catalog.datasets VALUES (%s, %s, %s, %s, false, {NOW_MS})",
                             (secrets.token_hex(12), name, table, xdm))
                dataset = dataset_row(conn, "name", name)
            else:
                conn.execute("UPDATE catalog.datasets SET xdm_schema = %s WHERE id = %s", (xdm, dataset.id))
            # As AEP does for CTAS output: the new content is one successful batch of the dataset.
            conn.execute(
                f"INSERT INTO catalog.batches (id, dataset_id, status, created_ms, completed_ms, record_count) "
                f"VALUES (%s, %s, 'success', {NOW_MS}, {NOW_MS}, %s)", (new_id(), dataset.id, rows))
            return dataset

    def replace_slices(self, dataset: Dataset, key_column: str, keys: Sequence[str], select: str) -> dict[str, int]:
        """All keys in one transaction and one INSERT: a full rescore is one pass over the events."""
        target, column = names.quoted(dataset.table), names.quoted(key_column, "column")
        index = names.identifier(f"{dataset.table}_{key_column}"[:63], "index name")
        with self.connect() as conn:
            # Checked first: CREATE INDEX IF NOT EXISTS would lock the table against parallel runs' writes.
            if not conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (index,)).fetchone():
                conn.execute(f"CREATE INDEX IF NOT EXISTS {names.quoted(index)} ON {target} ({column})")
            with conn.transaction():
                conn.execute(f"DELETE FROM {target} WHERE {column} = ANY(%s)", (list(keys),))
                inserted = conn.execute(f"INSERT INTO {target} {select}").rowcount
                counts = dict(conn.execute(f"SELECT {column}, COUNT(*) FROM {target} WHERE {column} = ANY(%s) "
                                           f"GROUP BY {column}", (list(keys),)).fetchall())
                if sum(counts.values()) != inserted:  # rolls back: rows of other keys would be left behind
                    raise ValueError(f"the SELECT for {dataset.name} produced {inserted - sum(counts.values())} "
                                     f"rows whose {key_column} is not one of {list(keys)}")
        return {key: int(counts.get(key, 0)) for key in keys}

    def export_dataset(self, dataset: Dataset, storage: Storage, export_time: datetime,
                       order_by: str | None = None) -> Manifest:
        with self._arrow_connection() as conn, conn.cursor() as cursor:
            columns = [c for c in self._columns(dataset.table) if c != "_acp_batchid"]
            order = f" ORDER BY {names.quoted(order_by, 'column')}" if order_by else ""
            cursor.execute(f"SELECT {', '.join(names.quoted(c, 'column') for c in columns)} "
                           f"FROM {names.quoted(dataset.table)}{order}")
            reader = cursor.fetch_record_batch()
            return storage.write_parquet_parts(export_prefix(dataset, export_time), reader, schema=reader.schema)

    def _columns(self, table: str) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                "ORDER BY ordinal_position", (table,)).fetchall()
        return [row[0] for row in rows]

    # --- segmentation -------------------------------------------------------------------------
    def current_records(self, dataset: Dataset, spec: DatasetSpec) -> sql.Fragment:
        return merge.merged_table_sql(spec, dataset.table)

    def upsert_audience(self, name: str, description: str, lower: float, upper: float,
                        scores: Dataset) -> Audience:
        names.audience_name(name)
        expression = f"{scores.table}.propensity >= {lower!r} and {scores.table}.propensity < {upper!r}"
        with self.connect() as conn:
            conn.execute(
                f"INSERT INTO catalog.audiences VALUES (%s, %s, %s, %s, %s, %s, {NOW_MS}, {NOW_MS}) "
                "ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description, "
                "expression = EXCLUDED.expression, lower_bound = EXCLUDED.lower_bound, "
                "upper_bound = EXCLUDED.upper_bound, updated_ms = EXCLUDED.updated_ms "
                "WHERE (catalog.audiences.expression, catalog.audiences.description) "
                "IS DISTINCT FROM (EXCLUDED.expression, EXCLUDED.description)",
                (secrets.token_hex(12), name, description, expression, lower, upper))
        return next(a for a in self.audiences() if a.name == name)

    def audiences(self) -> list[Audience]:
        with self.connect() as conn:
            rows = conn.execute("SELECT id, name, description, expression, lower_bound, upper_bound, created_ms, "
                                "updated_ms FROM catalog.audiences ORDER BY lower_bound, name").fetchall()
        return [Audience(*row) for row in rows]

    def delete_audience(self, audience: Audience) -> None:
        """Remove an audience this project no longer configures."""
        with self.connect() as conn:
            conn.execute("DELETE FROM catalog.audiences WHERE id = %s", (audience.id,))

    def audience_size(self, audience: Audience, scores: Dataset) -> int:
        return self.audience_sizes([audience], scores)[audience.name]

    def audience_sizes(self, selected: list[Audience], scores: Dataset) -> dict[str, int]:
        if not selected:
            return {}
        row = self.query(audiences.sizes_sql(self.dialect, self.current_records(scores, PROPENSITY_SCORES),
                                             [(a.lower, a.upper) for a in selected]))
        return {a.name: int(row[f"size_{i}"][0].as_py() or 0) for i, a in enumerate(selected)}

    def activate_audience(self, audience: Audience, scores: Dataset, storage: Storage,
                          export_time: datetime) -> Manifest:
        return self.activate_audiences([audience], scores, storage, export_time)[audience.name]

    def activate_audiences(self, selected: list[Audience], scores: Dataset, storage: Storage,
                           export_time: datetime) -> dict[str, Manifest]:
        """The latest scores are read once and cut per audience (each cut is a full-table read otherwise)."""
        latest = self.query(audiences.latest_members_sql(self.dialect, self.current_records(scores, PROPENSITY_SCORES),
                                                         self.current_profiles()))
        propensity = latest["propensity"]
        manifests = {}
        for audience in selected:
            inside = pc.and_(pc.greater_equal(propensity, audience.lower), pc.less(propensity, audience.upper))
            manifests[audience.name] = self.write_activation(storage, audience, latest.filter(inside).to_batches(),
                                                             export_time)
        return manifests

