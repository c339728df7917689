"""The fake Query Service: connection parameters for the PostgreSQL database that plays it, and the
asynchronous query API, which runs CTAS and INSERT INTO for real and registers their output as a dataset
batch, as AEP does.

Part of `FakeAEP`; its state is `queries` and `qs_tokens` (and the datasets and batches it writes).
"""

from __future__ import annotations

import re
import secrets

import psycopg

from aep_assets.testing.fake_aep.credentials import ORG_ID
from aep_assets.testing.fake_aep.state import FakeState

QUERY = "/data/foundation/query"


class FakeQueryService(FakeState):
    """Query Service routes and handlers."""

    ROUTES = (
        ("GET", rf"{QUERY}/connection_parameters", "connection_parameters"),
        ("POST", rf"{QUERY}/queries", "create_query"),
        ("GET", rf"{QUERY}/queries/([^/]+)", "get_query"),
    )

    def connection_parameters(self, **_):
        token = f"eyFAKE-query-service-token-{len(self.qs_tokens) + 1}-{secrets.token_hex(6)}"
        self.qs_tokens.append(token)
        return 200, {"username": self.address.user, "dbName": self.address.dbname, "host": self.address.host,
                     "version": 1, "port": self.address.port, "token": token, "compressedToken": "eJz-fake"}

    def create_query(self, body, **_):
        query_id = secrets.token_hex(16)
        sql = body["sql"]
        state = {"isInsertInto": sql.startswith("INSERT"), "isCTAS": sql.startswith("CREATE TABLE"),
                 "request": {k: body[k] for k in ("dbName", "sql", "name", "description") if k in body},
                 "state": "SUBMITTED", "rowCount": 0, "errors": [], "version": 1, "id": query_id,
                 "elapsedTime": 0, "client": "API", "created": "2025-01-08T21:47:46.865Z"}
        if self.query_timeouts:  # Query Service gave up on it: TIMEOUT is terminal (query-service.yaml)
            self.query_timeouts -= 1
            state["_final"] = {"state": "TIMEOUT", "errors": [{"code": "58000", "message": "Query timed out"}]}
            self.queries[query_id] = state
            return 202, {k: v for k, v in state.items() if k != "_final"}
        try:
            state["_final"] = {"state": "SUCCESS", "rowCount": self.run_sql(sql)}
        except (psycopg.Error, ValueError) as error:
            state["_final"] = {"state": "FAILED", "errors": [{"code": "42601", "message": str(error).strip()}]}
        self.queries[query_id] = state
        return 202, {k: v for k, v in state.items() if k != "_final"}

    def run_sql(self, text: str) -> int:
        batch_id = self.new_id(32)
        ctas = re.fullmatch(r"CREATE TABLE (\w+) AS \((.*)\)", text, re.S)
        insert = re.fullmatch(r"INSERT INTO (\w+) (.*)", text, re.S)
        if not (ctas or insert):
            raise ValueError(f"statement not supported by the fake Query Service: {text[:60]}")
        table, select = (ctas or insert).groups()
        with self.pg() as conn:
            if ctas:
                conn.execute(f"CREATE TABLE {table} AS SELECT q.*, %s::text AS _acp_batchid FROM ({select}) AS q",
                             (batch_id,))
                dataset_id = self.new_id()
                self.datasets[dataset_id] = {"name": table, "tags": {"adobe/pqs/table": [table]},
                                             "created": next(self.clock), "imsOrg": ORG_ID}
            else:
                conn.execute(f"INSERT INTO {table} SELECT q.*, %s::text FROM ({select}) AS q", (batch_id,))
                dataset_id = next(i for i, d in self.datasets.items() if d["tags"]["adobe/pqs/table"] == [table])
            rows = conn.execute(f"SELECT count(*) FROM {table} WHERE _acp_batchid = %s", (batch_id,)).fetchone()[0]
        now = next(self.clock)
        self.batches[batch_id] = {"id": batch_id, "status": "success", "created": now, "completed": now,
                                  "relatedObjects": [{"type": "dataSet", "id": dataset_id}], "tags": {},
                                  "recordCount": rows}
        return rows

    def get_query(self, query_id, **_):
        state = self.queries[query_id]
        if state["state"] == "SUBMITTED":
            state["state"] = "IN_PROGRESS"
        else:
            state.update(state["_final"])
        return 200, {k: v for k, v in state.items() if k != "_final"}
