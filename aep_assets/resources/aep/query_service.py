"""Query Service: reads and DDL over the PostgreSQL protocol, writes through the asynchronous query API.

`QueryService` is a psycopg 3 connection (sslmode=require by default) opened with the credentials of the
`/connection_parameters` endpoint, renewed hourly or after a failure; long statements (CTAS, INSERT INTO)
go through the `/queries` API and are polled, their errors raised. `QueryWrites` builds the datasets the
project derives by SQL on top of it: CTAS, and slices replaced batch by batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import pyarrow as pa

from aep_assets.lib import names, sql
from aep_assets.resources.aep.catalog import Catalog
from aep_assets.resources.aep.http import AEPError, error_text, log
from aep_assets.resources.aep.sandbox import Sandbox
from aep_assets.resources.platform import Dataset

T = TypeVar("T")

# PostgreSQL type oids of Query Service's result columns, as Arrow types.
PG_ARROW = {16: pa.bool_(), 20: pa.int64(), 21: pa.int32(), 23: pa.int32(), 700: pa.float64(), 701: pa.float64(),
            1700: pa.float64(), 25: pa.string(), 1043: pa.string(), 19: pa.string(), 1042: pa.string(),
            1082: pa.date32(), 1114: pa.timestamp("us", tz="UTC"), 1184: pa.timestamp("us", tz="UTC")}
FINAL_QUERY_FAILURES = ("FAILED", "KILLED", "TIMEOUT", "CANCELLED", "CANCELED")


class QueryService:
    """The sandbox's Query Service: one interactive connection per process, and the asynchronous API."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox
        self._pg: Any = None
        self._pg_opened = 0.0

    def connection(self, fresh: bool = False):
        """The psycopg connection; credentials from /connection_parameters, renewed hourly or on demand."""
        if self._pg is not None and not self._pg.closed and not fresh and time.time() - self._pg_opened < 3000:
            return self._pg
        self.close()
        params = self.sandbox.api.query.connection()
        self.sandbox.redact.add(params["token"])
        self._pg = psycopg.connect(host=params["host"], port=int(params["port"]), dbname=params["dbName"],
                                   user=params["username"], password=params["token"],
                                   sslmode=self.sandbox.config.query_sslmode, autocommit=True, connect_timeout=30)
        self._pg_opened = time.time()
        return self._pg

    def close(self) -> None:
        """Close the interactive connection (the next statement opens a new one)."""
        if self._pg is not None:
            try:
                self._pg.close()
            finally:
                self._pg = None

    def run(self, action: Callable[[Any], T]) -> T:
        """Run against Query Service; on a connection or authentication failure (expired token),
        reconnect once with fresh credentials. Only idempotent statements are run this way."""
        for attempt in (0, 1):
            try:
                return action(self.connection(fresh=attempt == 1))
            except psycopg.OperationalError as error:
                self.close()
                if attempt == 1:
                    raise AEPError(f"Query Service: {type(error).__name__}: {self.sandbox.redact(error)}") from None
                log.info("Query Service connection failed (%s); reconnecting with fresh credentials",
                         type(error).__name__)
        raise AssertionError("unreachable")

    def query(self, text: str) -> pa.Table:
        """A SELECT's rows as Arrow, over the interactive connection."""
        def fetch(conn) -> pa.Table:
            with conn.cursor() as cursor:
                cursor.execute(text)
                if cursor.description is None:
                    return pa.table({})
                return to_arrow(cursor.description, cursor.fetchall())
        return self.run(fetch)

    def execute(self, text: str) -> None:
        """A short idempotent statement (DDL) over the interactive connection."""
        self.run(lambda conn: conn.execute(text))

    def submit(self, text: str, name: str) -> dict:
        """A long statement through the asynchronous query API, polled until it ends; errors raised."""
        api, config = self.sandbox.api, self.sandbox.config
        created = api.query.postQueries(name=name, sql=text, dbname=f"{config.sandbox}:all",
                                        description=f"{config.name_prefix}: {name}")
        query_id = created["id"]

        def check() -> dict | None:
            state = api.query.getQuery(query_id)
            if state.get("state") == "SUCCESS":
                return state
            if state.get("state") in FINAL_QUERY_FAILURES:
                errors = error_text(state.get("errors")) or "no error details"
                raise AEPError(f"Query Service query {query_id} ({name}) {state['state']}: "
                               f"{self.sandbox.redact(errors)}")
            return None
        return self.sandbox.wait(f"Query Service query {query_id} ({name})", check)

    def columns(self, select: str) -> list[str]:
        """The SELECT's column names (lower case), without the batch id column."""
        shape = self.query(f"SELECT * FROM ({select}) AS shape LIMIT 0")
        return [c.lower() for c in shape.column_names if c.lower() != "_acp_batchid"]


class QueryWrites:
    """Datasets written by Query Service statements; old rows leave by reverting the batches that held them."""

    def __init__(self, query: QueryService, catalog: Catalog):
        self.query, self.catalog = query, catalog

    def create_table_as(self, name: str, select: str) -> Dataset:
        """CTAS as a dataset; re-run, the new rows are inserted and the old batches reverted (same dataset)."""
        table = names.identifier(name, "dataset name")
        found = self.catalog.find_dataset(name)
        if found is not None:
            if self.query.columns(f"SELECT * FROM {found.table}") == self.query.columns(select):
                old = [b.id for b in self.catalog.batches(found, "success")]
                self.query.submit(f"INSERT INTO {found.table} {select}", f"replace {name}")
                self.catalog.revert(old)
                return found  # the same dataset: an INSERT changes none of its catalog fields
            log.warning("the columns of %s changed: dropping and recreating it (new dataset id)", name)
            self.query.execute(f"DROP TABLE IF EXISTS {table}")
        self.query.submit(f"CREATE TABLE {table} AS ({select})", f"create {name}")
        dataset = self.catalog.find_dataset(name)
        if dataset is None:
            raise AEPError(f"CTAS of {name} succeeded but the Catalog has no dataset named {name}")
        return dataset

    def replace_slices(self, dataset: Dataset, key_column: str, keys: Sequence[str], select: str) -> dict[str, int]:
        """One INSERT (one batch) per key, so that each key's rows can later be reverted on their own."""
        column = names.identifier(key_column, "column")
        return {key: self.replace_slice(dataset, key_column, key, f"SELECT * FROM ({select}) AS slices "
                                        f"WHERE {column} = {sql.literal(key)}") for key in keys}

    def replace_slice(self, dataset: Dataset, key_column: str, key: str, select: str) -> int:
        """INSERT the new rows (one new batch), then revert the batches that held the old rows of this key.
        Not atomic: until the revert is processed, readers can see both."""
        target = names.identifier(dataset.table, "table")
        column = names.identifier(key_column, "column")
        old = self.query.query(
            f"SELECT _acp_batchid AS batch, COUNT(DISTINCT {column}) AS slices FROM {target} "
            f"WHERE _acp_batchid IN (SELECT _acp_batchid FROM {target} WHERE {column} = {sql.literal(key)}) "
            "GROUP BY _acp_batchid").to_pylist()
        shared = [row["batch"] for row in old if row["slices"] > 1]
        if shared:
            raise AEPError(f"batches {shared} of {dataset.name} hold rows of several {key_column} values: "
                           "reverting them would delete other slices")
        old_ids = [row["batch"] for row in old]
        self.query.submit(f"INSERT INTO {target} {select}", f"replace {dataset.name} {key_column}={key}")
        self.catalog.revert(old_ids)
        keep = f" AND _acp_batchid NOT IN {sql.literal(old_ids)}" if old_ids else ""
        counted = self.query.query(f"SELECT COUNT(*) AS n FROM {target} WHERE {column} = {sql.literal(key)}{keep}")
        return int(counted["n"][0].as_py())


def to_arrow(description, rows: list[tuple]) -> pa.Table:
    """psycopg rows as an Arrow table typed by the columns' PostgreSQL types (numerics as floats)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
    arrays = []
    for column, values in zip(description, columns, strict=True):
        arrow_type = PG_ARROW.get(column.type_code)
        values = [float(v) if isinstance(v, Decimal) else v for v in values]
        arrays.append(pa.array(values, type=arrow_type) if arrow_type is not None or values
                      else pa.array(values, type=pa.string()))
    return pa.table(arrays, names=[column.name for column in description])
