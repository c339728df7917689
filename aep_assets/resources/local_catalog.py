"""The embedded platform's catalog: PostgreSQL tables that mirror AEP's Catalog service (datasets,
batches) and Segmentation (audiences), and the reads of them every `LocalPlatform` operation shares.
"""

from __future__ import annotations

import secrets
import time

import pyarrow as pa

from aep_assets.resources.platform import Batch, Dataset

CATALOG_DDL = """
CREATE SCHEMA IF NOT EXISTS catalog;
CREATE TABLE IF NOT EXISTS catalog.datasets (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    table_name text NOT NULL UNIQUE,
    xdm_schema jsonb NOT NULL,
    profile_enabled boolean NOT NULL,
    created_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS catalog.batches (
    id text PRIMARY KEY,
    dataset_id text NOT NULL REFERENCES catalog.datasets(id) ON DELETE CASCADE,
    status text NOT NULL CHECK (status IN ('loading', 'success', 'failed')),
    created_ms bigint NOT NULL,
    completed_ms bigint,
    record_count bigint,
    error text,
    idempotency_key text
);
CREATE UNIQUE INDEX IF NOT EXISTS batches_one_success_per_key
    ON catalog.batches (dataset_id, idempotency_key) WHERE status = 'success';
CREATE INDEX IF NOT EXISTS batches_by_completion ON catalog.batches (dataset_id, status, completed_ms);
CREATE TABLE IF NOT EXISTS catalog.audiences (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text NOT NULL,
    expression text NOT NULL,
    lower_bound double precision NOT NULL,
    upper_bound double precision NOT NULL,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);
"""

NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"

BATCH_COLUMNS = "id, dataset_id, status, created_ms, completed_ms, record_count, error, idempotency_key"

PG_TYPES = {
    pa.string(): "text",
    pa.float64(): "double precision",
    pa.int32(): "integer",
    pa.int64(): "bigint",
    pa.bool_(): "boolean",
    pa.timestamp("us", tz="UTC"): "timestamptz",
}


def new_id(created_ms: int | None = None) -> str:
    """Time-ordered ids (like AEP's batch ids), so sorting by id follows creation."""
    stamp = created_ms if created_ms is not None else int(time.time() * 1000)
    return f"{stamp:012x}{secrets.token_hex(6)}"


def dataset_row(conn, column: str, value: str) -> Dataset | None:
    """The catalog's dataset whose `column` (id, name) has this value, or None."""
    row = conn.execute(
        f"SELECT id, name, table_name, profile_enabled, created_ms FROM catalog.datasets WHERE {column} = %s",
        (value,),
    ).fetchone()
    return Dataset(*row) if row else None


def batch_row(conn, batch_id: str) -> Batch | None:
    """One batch by id, as the Catalog's /batches/{id}."""
    row = conn.execute(f"SELECT {BATCH_COLUMNS} FROM catalog.batches WHERE id = %s", (batch_id,)).fetchone()
    return Batch(*row) if row else None
