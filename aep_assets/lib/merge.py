"""Profile merge: one current record per identity, as AEP's Profile store keeps it.

A merged dataset (profiles, scores) keeps every batch it received (its history); what the workflow
reads is its current view: per identity, the record with the latest values of the dataset's merge
columns (scores: `as_of`), ties and datasets without merge columns (profiles) decided by the
latest batch. Batch ids sort by creation time on both platforms (AEP's are ULIDs, see the batch
ingestion API's examples; the local platform's start with the creation time), so the latest batch is
the greatest `_acp_batchid`.

Two ways to read that view, with the same result: a window over every record (Query Service, where
the datasets are plain tables), and a merged table that local ingestion keeps current by upserting
each new batch (a plain scan instead of a window over all history).
"""

from __future__ import annotations

from aep_assets.lib import names, sql
from aep_assets.lib.datasets import DatasetSpec

BATCH_COLUMN = "_acp_batchid"


def merged_table(table: str) -> str:
    """The name of the local merged table of a dataset's table."""
    return names.identifier(f"{table}__profile", "table name")


def _columns(spec: DatasetSpec) -> list[str]:
    return [names.quoted(f.name, "column") for f in spec.schema] + [BATCH_COLUMN]


def _order(spec: DatasetSpec) -> list[str]:
    """Merge precedence, highest first."""
    return [names.quoted(c, "column") for c in spec.merge_by] + [BATCH_COLUMN]


def current_records_sql(spec: DatasetSpec, table: str) -> sql.Fragment:
    """The current record per identity among every record of `table`, as a subquery."""
    _require_merged(spec)
    identity = names.quoted(spec.identity, "column")
    order = ", ".join(f"r.{c} DESC" for c in _order(spec))
    return sql.Fragment(
        f"SELECT {', '.join(_columns(spec))} FROM ("
        f"SELECT r.*, ROW_NUMBER() OVER (PARTITION BY r.{identity} ORDER BY {order}) AS merge_rank "
        f"FROM {names.quoted(table)} AS r) AS ranked WHERE merge_rank = 1")


def merged_table_sql(spec: DatasetSpec, table: str) -> sql.Fragment:
    """The local merged table as a subquery (same columns as `current_records_sql`)."""
    _require_merged(spec)
    return sql.Fragment(f"SELECT {', '.join(_columns(spec))} FROM {names.quoted(merged_table(table))}")


def upsert_sql(spec: DatasetSpec, table: str, batch_id: str | None = None) -> str:
    """Upsert the records of one batch (None: of every batch) of `table` into its merged table; a
    record replaces the merged one only if it takes precedence (so batches may commit in any order).
    A batch of a unique-identity dataset has one record per identity (validated at ingestion)."""
    _require_merged(spec)
    identity = names.quoted(spec.identity, "column")
    columns = _columns(spec)
    order = _order(spec)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != identity)
    merged = names.quoted(merged_table(table))
    one_per_identity = batch_id is not None and spec.unique_identity
    rows = "TRUE" if batch_id is None else sql.substitute(f"{BATCH_COLUMN} = $batch", batch=batch_id)
    distinct = "" if one_per_identity else f"DISTINCT ON ({identity}) "
    precedence = "" if one_per_identity else ", " + ", ".join(f"{c} DESC" for c in order)
    return (f"INSERT INTO {merged} ({', '.join(columns)}) "
            f"SELECT {distinct}{', '.join(columns)} FROM {names.quoted(table)} WHERE {rows} "
            # identity order: the primary key's btree fills page by page instead of at random
            f"ORDER BY {identity}{precedence} "
            f"ON CONFLICT ({identity}) DO UPDATE SET {updates} "
            f"WHERE ({', '.join(f'{merged}.{c}' for c in order)}) <= ({', '.join(f'EXCLUDED.{c}' for c in order)})")


def _require_merged(spec: DatasetSpec) -> None:
    if not spec.merged:
        raise ValueError(f"dataset {spec.name} has no merge policy")
