"""The fake Catalog and Batch Ingestion: datasets with a real Query Service table each, and batches whose
uploaded parquet files are loaded into that table when the batch is completed.

Part of `FakeAEP`; its state is `datasets`, `batches` and `uploads`. A dataset's table holds
class fields at the root and tenant fields in a composite column `_acme`, plus `_acp_batchid`.
"""

from __future__ import annotations

import io
import json
import re
from datetime import date, datetime

import pyarrow.parquet as pq

from aep_assets.testing.fake_aep.credentials import CLIENT_ID, ORG_ID, TENANT
from aep_assets.testing.fake_aep.state import FakeState

CATALOG = "/data/foundation/catalog"
IMPORT = "/data/foundation/import"
PG_TYPES = {"string": "text", "number": "double precision", "integer": "bigint", "boolean": "boolean"}
EVENT_ROOT = ("_id text", "timestamp timestamptz", "eventtype text", "producedby text")


class FakeCatalog(FakeState):
    """Catalog and Batch Ingestion routes and handlers."""

    ROUTES = (
        ("GET", rf"{CATALOG}/dataSets", "list_datasets"),
        ("POST", rf"{CATALOG}/dataSets", "create_dataset"),
        ("GET", rf"{CATALOG}/dataSets/([^/]+)", "get_dataset"),
        ("PATCH", rf"{CATALOG}/dataSets/([^/]+)", "patch_dataset"),
        ("GET", rf"{CATALOG}/batches", "list_batches"),
        ("GET", rf"{CATALOG}/batches/([^/]+)", "get_batch"),
        ("POST", rf"{IMPORT}/batches", "create_batch"),
        ("PUT", rf"{IMPORT}/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", "put_file"),
        ("POST", rf"{IMPORT}/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", "large_file"),
        ("PATCH", rf"{IMPORT}/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", "file_chunk"),
        ("POST", rf"{IMPORT}/batches/([^/]+)", "batch_action"),
    )

    def list_datasets(self, query, **_):
        found = {i: d for i, d in self.datasets.items() if d["name"] == query.get("name")}
        return 200, found

    def create_dataset(self, body, **_):
        dataset_id = self.new_id()
        table = re.sub(r"[^a-z0-9_]+", "_", body["name"].lower())
        tags = {**body.get("tags", {}), "adobe/pqs/table": [table]}
        self.datasets[dataset_id] = {**body, "tags": tags, "imsOrg": ORG_ID, "created": next(self.clock),
                                     "updated": next(self.clock), "version": "1.0.0",
                                     "files": f"@/dataSetFiles?dataSetId={dataset_id}"}
        if "schemaRef" in body:
            self.create_table(table, self.schemas[body["schemaRef"]["id"]])
        return 201, [f"@/dataSets/{dataset_id}"]

    def create_table(self, table: str, schema: dict) -> None:
        """The dataset's Query Service table: class fields at the root, tenant fields in `_acme`."""
        tenant_fields: dict[str, str] = {}
        for ref in schema["allOf"][1:]:
            group = self.field_groups.get(ref["$ref"])
            if group:
                props = group["definitions"]["fields"]["properties"][f"_{TENANT}"]["properties"]
                tenant_fields.update({name: pg_type(field) for name, field in props.items()})
        columns = [f"_{TENANT} {table}__{TENANT}"]
        with self.pg() as conn:
            conn.execute(f"CREATE TYPE {table}__{TENANT} AS ("
                         + ", ".join(f"{n} {t}" for n, t in tenant_fields.items()) + ")")
            if schema["meta:class"].endswith("experienceevent"):
                conn.execute(f"CREATE TYPE {table}__page AS (name text, url text)")
                conn.execute(f"CREATE TYPE {table}__web AS (webpagedetails {table}__page)")
                columns += [*EVENT_ROOT, f"web {table}__web"]
            conn.execute(f"CREATE TABLE {table} ({', '.join(columns)}, _acp_batchid text)")

    def get_dataset(self, dataset_id, **_):
        if dataset_id not in self.datasets:
            return 404, {"title": "Not found", "detail": f"dataset {dataset_id}"}
        return 200, {dataset_id: self.datasets[dataset_id]}

    def patch_dataset(self, dataset_id, body, headers, **_):
        assert headers["Content-Type"] == "application/json-patch+json"
        for op in body:
            self.datasets[dataset_id]["tags"][op["path"].split("/")[-1]] = op["value"]
        return 200, [f"@/dataSets/{dataset_id}"]

    def list_batches(self, query, **_):
        items = [(i, b) for i, b in self.batches.items()
                 if b["relatedObjects"][0]["id"] == query.get("dataSet")
                 and b["status"] in query.get("status", b["status"]).split(",")]
        if "tags" in query:
            name, value = query["tags"].split(":", 1)
            items = [(i, b) for i, b in items if value in b["tags"].get(name, [])]
        if query.get("property", "").startswith("completed>="):
            floor = int(query["property"].split(">=")[1])
            items = [(i, b) for i, b in items if b.get("completed", 0) >= floor]
        if query.get("orderBy") == "asc:completed":
            items.sort(key=lambda item: item[1].get("completed", 0))
        start, limit = int(query.get("start", 0)), int(query.get("limit", 20))
        return 200, {batch_id: catalog_batch(batch) for batch_id, batch in items[start:start + limit]}

    def get_batch(self, batch_id, **_):
        batch = self.batches[batch_id]
        if batch["status"] == "processing":
            if batch["_polls_left"] > 0:
                batch["_polls_left"] -= 1
            else:
                batch.update(batch.pop("_outcome"))
        return 200, {batch_id: catalog_batch(batch)}

    def create_batch(self, body, **_):
        batch_id = self.new_id(32)
        now = next(self.clock)
        self.batches[batch_id] = {"id": batch_id, "imsOrg": ORG_ID, "status": "loading", "created": now,
                                  "updated": now, "relatedObjects": [{"type": "dataSet", "id": body["datasetId"]}],
                                  "inputFormat": body["inputFormat"], "tags": body.get("tags", {}),
                                  "version": "1.0.0", "createdUser": f"{CLIENT_ID}@AdobeID"}
        return 201, self.batches[batch_id]

    def put_file(self, batch_id, dataset_id, name, body, headers, **_):
        assert headers["Content-Type"] == "application/octet-stream"
        self.uploads[(batch_id, name)] = bytearray(body)
        return 200, ""

    def large_file(self, batch_id, dataset_id, name, query, **_):
        if query["action"] == "INITIALIZE":
            self.uploads[(batch_id, name)] = bytearray()
        return 201, ""  # both INITIALIZE and COMPLETE (the large-file guide)

    def file_chunk(self, batch_id, dataset_id, name, body, headers, **_):
        start, end, total = map(int, re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers["Content-Range"]).groups())
        data = self.uploads[(batch_id, name)]
        assert start == len(data) and end - start + 1 == len(body) and end < total
        data.extend(body)
        return 200, {"name": name, "sizeInBytes": len(data)}

    def batch_action(self, batch_id, query, **_):
        batch = self.batches[batch_id]
        action = query.get("action")
        if action == "COMPLETE":
            self.load_batch(batch)
        elif action == "ABORT":
            batch.update(status="aborted", completed=next(self.clock))
        elif action == "REVERT":
            table = self.datasets[batch["relatedObjects"][0]["id"]]["tags"]["adobe/pqs/table"][0]
            with self.pg() as conn:
                conn.execute(f"DELETE FROM {table} WHERE _acp_batchid = %s", (batch_id,))
            batch.update(status="deleted", updated=next(self.clock))
        return 200, catalog_batch(batch) | {"id": batch["id"]}

    def load_batch(self, batch: dict) -> None:
        """Completed: parse every uploaded file, load the rows; success after one 'processing' poll."""
        dataset = self.datasets[batch["relatedObjects"][0]["id"]]
        table = dataset["tags"]["adobe/pqs/table"][0]
        rows = []
        try:
            for (batch_id, _), data in self.uploads.items():
                if batch_id == batch["id"]:
                    rows += pq.read_table(io.BytesIO(bytes(data))).to_pylist()
            for row in rows:
                row["_acp_batchid"] = batch["id"]
            with self.pg() as conn:
                conn.execute(f"INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, %s)",
                             (json.dumps([lowered(r) for r in rows], default=iso),))
            outcome = {"status": "success", "recordCount": len(rows)}
        except Exception as error:  # a file AEP could not map: the batch fails with the reason
            outcome = {"status": "failed", "errors": [{"code": "INGEST-1212-400",
                                                       "description": f"Mapping failed: {error}"}]}
        batch.update(status="processing", _outcome={**outcome, "completed": next(self.clock)}, _polls_left=1)


def catalog_batch(batch: dict) -> dict:
    """A batch as the Catalog describes it: no id inside (the id is its key) and no bookkeeping."""
    return {k: v for k, v in batch.items() if k != "id" and not k.startswith("_")}


def pg_type(field: dict) -> str:
    """The PostgreSQL type of an XDM field."""
    if field.get("format") == "date-time":
        return "timestamptz"
    return PG_TYPES[field["type"]]


def lowered(value):
    """Record keys in lower case, as PostgreSQL folds the unquoted column names."""
    if isinstance(value, dict):
        return {k.lower(): lowered(v) for k, v in value.items()}
    return value


def iso(value):
    """JSON for the timestamps and dates of parquet rows."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
