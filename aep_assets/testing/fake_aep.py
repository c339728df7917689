"""A fake Experience Platform, served through `responses` under aepp's `requests`.

Payloads follow Adobe's API descriptions (aep_assets.testing.contracts checks every exchange against
them when given): IMS token v3, Schema Registry, Catalog, Batch Ingestion, Query Service,
Segmentation, Flow Service, ad-hoc dataset export. State is kept so idempotency can be tested (a
lookup finds what an earlier call created). Query Service is a PostgreSQL database: datasets get a real
table (tenant fields as a composite column `_acme`, `_acp_batchid`), completed batches load their
uploaded parquet into it, and asynchronous queries (CTAS, INSERT INTO) run on it. `inject` makes a
route fail (429, 5xx, 401, ...) a number of times.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import date, datetime
from urllib.parse import parse_qs, urlsplit

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import responses

from aep_assets.testing.contracts import Contracts
from aep_assets.testing.exchange import Exchange

GATEWAY = "https://platform.adobe.io"
IMS_TOKEN_URL = "https://ims-na1.adobelogin.com/ims/token/v3"

ORG_ID = "FAKE0RG0000000000000000@AdobeOrg"
CLIENT_ID = "fake-client-id-4c1e"
CLIENT_SECRET = "p8e-FAKE-client-secret-NEVER-LOG-0x5eCr3t"
S3_ACCESS_KEY = "AKIAFAKEFAKEFAKEFAKE"
S3_SECRET_KEY = "FAKE/s3/secret/NEVER/LOG/abcdefghijklmno"  # AWS's shape: 40 characters
SCOPES = "openid,AdobeID,read_organizations,additional_info.projectedProductContext,session"
SANDBOX = "cmle-dev"
SANDBOX_ID = "6f2ff5d9-8b34-4d49-8c27-2ce3b4e5fa0a"
TENANT = "acme"

_PG_TYPES = {"string": "text", "number": "double precision", "integer": "bigint", "boolean": "boolean"}
_EVENT_ROOT = ("_id text", "timestamp timestamptz", "eventtype text", "producedby text")


def _pg_type(field: dict) -> str:
    if field.get("format") == "date-time":
        return "timestamptz"
    return _PG_TYPES[field["type"]]


class FakeAEP:
    """The platform behind https://platform.adobe.io and IMS, for one test."""

    def __init__(self, rsps: responses.RequestsMock, conninfo: str, address, contracts: Contracts | None = None):
        self.rsps, self.conninfo, self.address, self.contracts = rsps, conninfo, address, contracts
        self.violations: list[str] = []  # what the exchanges broke of Adobe's contracts
        self.ids = itertools.count(1)
        self.clock = itertools.count(1_700_000_000_000, 1000)
        self.tokens: list[str] = []
        self.valid_tokens: set[str] = set()
        self.qs_tokens: list[str] = []
        self.requests: list[dict] = []
        self.faults: list[dict] = []
        self.field_groups: dict[str, dict] = {}
        self.schemas: dict[str, dict] = {}
        self.descriptors: list[dict] = []
        self.datasets: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.uploads: dict[tuple[str, str], bytearray] = {}
        self.queries: dict[str, dict] = {}
        self.segments: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.connections: dict[str, dict] = {}  # base, source and target connections
        self.flow_kinds: dict[str, str] = {}
        self.flows: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.not_ready_answers = 0
        self.registry_page_size = 20
        self.job_outcome = "SUCCEEDED"  # what segment jobs end with
        self.export_outcome = "success"  # what dataset-export runs end with
        self.query_timeouts = 0  # how many next queries end in TIMEOUT
        self.segment_count: Callable[[dict], int] = lambda segment: 0
        self.on_export: Callable[[dict, str], None] = lambda flow, dataset_id: None
        self.routes = [
            ("GET", r"/data/foundation/schemaregistry/stats/?", self.stats),
            ("GET", r"/data/foundation/schemaregistry/tenant/(fieldgroups|schemas)/?", self.list_titled),
            ("POST", r"/data/foundation/schemaregistry/tenant/fieldgroups/?", self.create_field_group),
            ("POST", r"/data/foundation/schemaregistry/tenant/schemas/?", self.create_schema),
            ("PATCH", r"/data/foundation/schemaregistry/tenant/schemas/([^/]+)/?", self.patch_schema),
            ("GET", r"/data/foundation/schemaregistry/tenant/descriptors/?", self.list_descriptors),
            ("POST", r"/data/foundation/schemaregistry/tenant/descriptors/?", self.create_descriptor),
            ("GET", r"/data/foundation/catalog/dataSets", self.list_datasets),
            ("POST", r"/data/foundation/catalog/dataSets", self.create_dataset),
            ("GET", r"/data/foundation/catalog/dataSets/([^/]+)", self.get_dataset),
            ("PATCH", r"/data/foundation/catalog/dataSets/([^/]+)", self.patch_dataset),
            ("GET", r"/data/foundation/catalog/batches", self.list_batches),
            ("GET", r"/data/foundation/catalog/batches/([^/]+)", self.get_batch),
            ("POST", r"/data/foundation/import/batches", self.create_batch),
            ("PUT", r"/data/foundation/import/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", self.put_file),
            ("POST", r"/data/foundation/import/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", self.large_file),
            ("PATCH", r"/data/foundation/import/batches/([^/]+)/datasets/([^/]+)/files/([^/]+)", self.file_chunk),
            ("POST", r"/data/foundation/import/batches/([^/]+)", self.batch_action),
            ("GET", r"/data/foundation/query/connection_parameters", self.connection_parameters),
            ("POST", r"/data/foundation/query/queries", self.create_query),
            ("GET", r"/data/foundation/query/queries/([^/]+)", self.get_query),
            ("GET", r"/data/core/ups/segment/definitions", self.list_segments),
            ("POST", r"/data/core/ups/segment/definitions", self.create_segment),
            ("PATCH", r"/data/core/ups/segment/definitions/([^/]+)", self.patch_segment),
            ("DELETE", r"/data/core/ups/segment/definitions/([^/]+)", self.delete_segment),
            ("POST", r"/data/core/ups/segment/jobs", self.create_job),
            ("GET", r"/data/core/ups/segment/jobs/([^/]+)", self.get_job),
            ("GET", r"/data/foundation/flowservice/(flows|connections|sourceConnections|targetConnections)",
             self.list_flow_items),
            ("POST", r"/data/foundation/flowservice/(connections|sourceConnections|targetConnections|flows)",
             self.create_flow_item),
            ("GET", r"/data/foundation/flowservice/runs/([^/]+)", self.get_run),
            ("POST", r"/data/core/activation/disflowprovider/adhocrun", self.adhoc_run),
        ]
        rsps.add_callback(responses.POST, IMS_TOKEN_URL, callback=self.ims)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            rsps.add_callback(method, re.compile(re.escape(GATEWAY) + r"/.*"), callback=self.dispatch)

    # --- plumbing -----------------------------------------------------------------------------
    def new_id(self, width: int = 24) -> str:
        return f"{next(self.ids):0{width}x}"

    def inject(self, method: str, path: str, status: int = 0, body: object = None, headers: dict | None = None,
               times: int = 1, error: Exception | None = None, acted: bool = False) -> None:
        """The next `times` requests matching method and path regex get this answer, or raise `error` in the
        client (a timeout, a refused connection); `acted`: the platform did the work before the answer was
        lost (a 5xx or read timeout after the effect)."""
        self.faults.append({"method": method, "path": re.compile(path), "status": status, "times": times,
                            "body": body if body is not None else {"title": "Injected", "status": status},
                            "headers": headers or {}, "error": error, "acted": acted})

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def calls(self, method: str | None = None, path: str = "") -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method) and re.search(path, r["path"])]

    def ims(self, request):
        return self._checked(request, *self._ims(request))

    def _ims(self, request):
        form = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
        self.requests.append({"method": "POST", "path": "/ims/token/v3", "form": form, "headers": request.headers})
        if form.get("client_secret") != [CLIENT_SECRET] or form.get("grant_type") != ["client_credentials"]:
            return 401, {}, json.dumps({"error": "invalid_client",
                                        "error_description": "invalid client_secret parameter"})
        token = f"eyFAKE-ims-access-token-{len(self.tokens) + 1}-{secrets.token_hex(8)}"
        self.tokens.append(token)
        self.valid_tokens.add(token)
        return 200, {}, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 86399})

    def dispatch(self, request):
        return self._checked(request, *self._dispatch(request))

    def _checked(self, request, status: int, headers: dict, text: str):
        """The answer, after checking the exchange against Adobe's contract."""
        if self.contracts is not None:
            body = request.body.encode() if isinstance(request.body, str) else request.body
            self.violations += self.contracts.check(Exchange(
                request.method, request.url, dict(request.headers), body, status,
                {"Content-Type": "application/json", **headers}, text.encode() if isinstance(text, str) else text))
        return status, headers, text

    def _dispatch(self, request):
        parts = urlsplit(request.url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = request.body
        record = {"method": request.method, "path": parts.path, "query": query, "headers": dict(request.headers),
                  "body": body}
        self.requests.append(record)
        for fault in self.faults:
            if fault["times"] and fault["method"] == request.method and fault["path"].search(parts.path):
                fault["times"] -= 1
                if fault["acted"]:
                    self._route(request, parts, query, body)
                if fault["error"] is not None:
                    raise fault["error"]
                return fault["status"], fault["headers"], json.dumps(fault["body"])
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.valid_tokens:
            return 401, {}, json.dumps({"error_code": "401013", "message": "Oauth token is not valid"})
        expected = {"x-api-key": CLIENT_ID, "x-gw-ims-org-id": ORG_ID, "x-sandbox-name": SANDBOX}
        wrong = [k for k, v in expected.items() if request.headers.get(k) != v]
        if wrong:
            return 403, {}, json.dumps({"error_code": "403010", "message": f"bad headers {wrong}"})
        return self._route(request, parts, query, body)

    def _route(self, request, parts, query: dict, body):
        """The handler's answer to an authenticated request."""
        for method, pattern, handler in self.routes:
            match = re.fullmatch(pattern, parts.path)
            if method == request.method and match:
                parsed = body
                if isinstance(body, (str, bytes)) and "json" in request.headers.get("Content-Type", ""):
                    parsed = json.loads(body)
                status, payload = handler(*match.groups(), query=query, body=parsed, headers=request.headers)
                text = payload if isinstance(payload, str) else json.dumps(payload)
                return status, {"Content-Type": "application/json"}, text
        return 404, {}, json.dumps({"title": "Not Found", "detail": f"{request.method} {parts.path}"})

    def pg(self):
        return psycopg.connect(self.conninfo, autocommit=True)

    # --- Schema Registry ----------------------------------------------------------------------
    def stats(self, **_):
        return 200, {"imsOrg": ORG_ID, "tenantId": TENANT, "counts": {"schemas": len(self.schemas)},
                     "recentlyCreatedResources": [], "recentlyUpdatedResources": [], "classUsage": []}

    def list_titled(self, kind, query, headers, **_):
        """Pages by `orderby` as the registry does: `start` (the last value of the previous page) needs it."""
        if "start" in query and "orderby" not in query:
            return 400, {"type": "/placeholder/type/uri", "status": 400, "title": "BadRequestError",
                         "detail": "start cannot be used without orderby"}
        store = self.field_groups if kind == "fieldgroups" else self.schemas
        title = query.get("property", "").removeprefix("title==")
        found = sorted((i for i in store.values() if i["title"] == title), key=lambda i: i["title"])
        found = [i for i in found if "start" not in query or i["title"] > query["start"]]
        limit = int(query.get("limit", self.registry_page_size))
        page, rest = found[:limit], found[limit:]
        following = f"{GATEWAY}/data/foundation/schemaregistry/tenant/{kind}?orderby=title&start=" if rest else None
        return 200, {"results": page, "_page": {"orderby": "title", "next": following, "count": len(page)},
                     "_links": {"next": following}}

    def _resource(self, body, kind):
        hex_id = secrets.token_hex(16)
        return {**body, "$id": f"https://ns.adobe.com/{TENANT}/{kind}/{hex_id}",
                "meta:altId": f"_{TENANT}.{kind}.{hex_id}", "meta:containerId": "tenant", "version": "1.0",
                "meta:resourceType": kind, "meta:tenantNamespace": f"_{TENANT}"}

    def create_field_group(self, body, **_):
        group = self._resource(body, "mixins")
        self.field_groups[group["$id"]] = group
        return 201, group

    def create_schema(self, body, **_):
        schema = self._resource(body, "schemas")
        schema["meta:class"] = body["allOf"][0]["$ref"]
        self.schemas[schema["$id"]] = schema
        return 201, schema

    def patch_schema(self, alt_id, body, **_):
        schema = next(s for s in self.schemas.values() if s["meta:altId"] == alt_id)
        for op in body:
            assert op["op"] == "add" and op["path"] == "/meta:immutableTags"
            schema["meta:immutableTags"] = op["value"]
        return 200, schema

    def list_descriptors(self, query, **_):
        wanted = query.get("property", "").removeprefix("xdm:sourceSchema==")
        return 200, {"xdm:descriptorIdentity": [d for d in self.descriptors if d["xdm:sourceSchema"] == wanted]}

    def create_descriptor(self, body, **_):
        descriptor = {**body, "meta:containerId": "tenant", "@id": secrets.token_hex(20)}
        self.descriptors.append(descriptor)
        return 201, descriptor

    # --- Catalog and ingestion ----------------------------------------------------------------
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
            self._create_table(table, self.schemas[body["schemaRef"]["id"]])
        return 201, [f"@/dataSets/{dataset_id}"]

    def _create_table(self, table: str, schema: dict) -> None:
        """The dataset's Query Service table: class fields at the root, tenant fields in `_acme`."""
        tenant_fields: dict[str, str] = {}
        for ref in schema["allOf"][1:]:
            group = self.field_groups.get(ref["$ref"])
            if group:
                props = group["definitions"]["fields"]["properties"][f"_{TENANT}"]["properties"]
                tenant_fields.update({name: _pg_type(field) for name, field in props.items()})
        columns = [f"_{TENANT} {table}__{TENANT}"]
        with self.pg() as conn:
            conn.execute(f"CREATE TYPE {table}__{TENANT} AS ("
                         + ", ".join(f"{n} {t}" for n, t in tenant_fields.items()) + ")")
            if schema["meta:class"].endswith("experienceevent"):
                conn.execute(f"CREATE TYPE {table}__page AS (name text, url text)")
                conn.execute(f"CREATE TYPE {table}__web AS (webpagedetails {table}__page)")
                columns += [*_EVENT_ROOT, f"web {table}__web"]
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
        return 200, {batch_id: _catalog_batch(batch) for batch_id, batch in items[start:start + limit]}

    def get_batch(self, batch_id, **_):
        batch = self.batches[batch_id]
        if batch["status"] == "processing":
            if batch["_polls_left"] > 0:
                batch["_polls_left"] -= 1
            else:
                batch.update(batch.pop("_outcome"))
        return 200, {batch_id: _catalog_batch(batch)}

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
            self._load_batch(batch)
        elif action == "ABORT":
            batch.update(status="aborted", completed=next(self.clock))
        elif action == "REVERT":
            table = self.datasets[batch["relatedObjects"][0]["id"]]["tags"]["adobe/pqs/table"][0]
            with self.pg() as conn:
                conn.execute(f"DELETE FROM {table} WHERE _acp_batchid = %s", (batch_id,))
            batch.update(status="deleted", updated=next(self.clock))
        return 200, _catalog_batch(batch) | {"id": batch["id"]}

    def _load_batch(self, batch: dict) -> None:
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
                             (json.dumps([_lower(r) for r in rows], default=_iso),))
            outcome = {"status": "success", "recordCount": len(rows)}
        except Exception as error:  # a file AEP could not map: the batch fails with the reason
            outcome = {"status": "failed", "errors": [{"code": "INGEST-1212-400",
                                                       "description": f"Mapping failed: {error}"}]}
        batch.update(status="processing", _outcome={**outcome, "completed": next(self.clock)}, _polls_left=1)

    # --- Query Service ------------------------------------------------------------------------
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
            state["_final"] = {"state": "SUCCESS", "rowCount": self._run_sql(sql)}
        except (psycopg.Error, ValueError) as error:
            state["_final"] = {"state": "FAILED", "errors": [{"code": "42601", "message": str(error).strip()}]}
        self.queries[query_id] = state
        return 202, {k: v for k, v in state.items() if k != "_final"}

    def _run_sql(self, text: str) -> int:
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

    # --- Segmentation -------------------------------------------------------------------------
    def list_segments(self, query, **_):
        start, limit = int(query.get("start", 0)), int(query.get("limit", 20))
        items = list(self.segments.values())
        return 200, {"segments": items[start:start + limit],
                     "page": {"totalCount": len(items), "totalPages": 1, "sortField": "creationTime",
                              "sort": "desc", "pageSize": len(items[start:start + limit]), "limit": limit},
                     "link": {}}

    def create_segment(self, body, **_):
        segment_id = _uuid()
        now = next(self.clock)
        self.segments[segment_id] = {**body, "id": segment_id, "imsOrgId": ORG_ID, "profileInstanceId": "ups",
                                     "dataGovernancePolicy": {"excludeOptOut": True},
                                     "creationTime": now, "updateEpoch": now // 1000, "updateTime": now}
        return 200, self.segments[segment_id]

    def patch_segment(self, segment_id, body, **_):
        now = next(self.clock)
        self.segments[segment_id].update({**body, "updateEpoch": now // 1000, "updateTime": now})
        return 200, self.segments[segment_id]

    def delete_segment(self, segment_id, **_):
        del self.segments[segment_id]
        return 200, {"status": True, "message": "(Segment) Deleted"}

    def create_job(self, body, **_):
        job_id = secrets.token_hex(16)
        now = next(self.clock)
        segments = [{"segmentId": item["segmentId"], "segment": {
            "id": item["segmentId"], "expression": self.segments[item["segmentId"]]["expression"],
            "mergePolicy": {"id": "fake-default-merge-policy", "version": 1}}} for item in body]
        self.jobs[job_id] = {"id": job_id, "imsOrgId": ORG_ID, "status": "PROCESSING", "_polls": 0,
                             "segments": segments, "creationTime": now, "updateTime": now,
                             "metrics": {"totalTime": {"startTimeInMs": now},
                                         "profileSegmentationTime": {"startTimeInMs": now}}}
        return 200, {k: v for k, v in self.jobs[job_id].items() if not k.startswith("_")}

    def get_job(self, job_id, **_):
        job = self.jobs[job_id]
        job["_polls"] += 1
        if job["_polls"] > 1 and job["status"] == "PROCESSING":
            ids = [s["segmentId"] for s in job["segments"]]
            start, end = job["creationTime"], next(self.clock)
            span = {"startTimeInMs": start, "endTimeInMs": end, "totalTimeInMs": end - start}
            job.update(status=self.job_outcome, updateTime=end, metrics={
                "totalTime": span, "profileSegmentationTime": span,
                "segmentedProfileCounter": {i: self.segment_count(self.segments[i]) for i in ids},
                "segmentedProfileByStatusCounter": {i: {"realized": self.segment_count(self.segments[i]),
                                                        "exited": 0} for i in ids}})
            if self.job_outcome == "FAILED":
                job["errors"] = [{"code": "0090000009", "msg": "Error while evaluating segment expression"}]
        return 200, {k: v for k, v in job.items() if not k.startswith("_")}

    # --- Flow Service and ad-hoc export -------------------------------------------------------
    def list_flow_items(self, kind, query, **_):
        store = self.flows if kind == "flows" else self.connections
        name = query.get("property", "").removeprefix("name==")
        found = [i for i in store.values() if i["name"] == name and self.flow_kinds[i["id"]] == kind]
        # a listed connection names its auth, never its credentials
        return 200, {"items": [{**i, "auth": {"specName": i["auth"]["specName"]}} if "auth" in i else i
                               for i in found]}

    def create_flow_item(self, kind, body, **_):
        item_id = _uuid()
        now = next(self.clock)
        item = {**body, "id": item_id, "etag": f"\"{secrets.token_hex(4)}-0000-0200-0000\"", "state": "enabled",
                "description": body.get("description", ""), "imsOrgId": ORG_ID, "sandboxId": SANDBOX_ID,
                "sandboxName": SANDBOX, "createdBy": f"{CLIENT_ID}@AdobeID", "updatedBy": f"{CLIENT_ID}@AdobeID",
                "createdClient": CLIENT_ID, "updatedClient": CLIENT_ID}
        if kind == "flows":
            item["inheritedAttributes"] = {"properties": {"isDestinationFlow": True}}
        else:
            item.update(createdAt=now, updatedAt=now, version="\"0100\"")
        (self.flows if kind == "flows" else self.connections)[item_id] = item
        self.flow_kinds[item_id] = kind
        return 201, {"id": item_id, "etag": item["etag"]}

    def adhoc_run(self, body, headers, **_):
        assert headers["Accept"] == "application/vnd.adobe.adhoc.dataset.activation+json; version=1"
        destination = body["activationInfo"]["destinations"][0]
        if self.not_ready_answers:
            self.not_ready_answers -= 1
            return 400, {"code": "DEST-3009-400",
                         "message": "Following order ID(s) are not ready for dataset export, please wait for "
                                    f"10 minutes and retry: {destination['flowId']}"}
        run_id = _uuid()
        dataset_id = destination["datasets"][0]["id"]
        self.runs[run_id] = {"id": run_id, "flowId": destination["flowId"], "dataset": dataset_id, "_polls": 0}
        return 200, {"destinations": [{"flowId": destination["flowId"], "datasets": [{
            "id": dataset_id, "statusURL": f"{GATEWAY}/data/foundation/flowservice/runs/{run_id}"}]}]}

    def get_run(self, run_id, **_):
        """A run of the dataset-export flow, its outcome in metrics.statusSummary ("Monitor dataflows")."""
        run = self.runs[run_id]
        run["_polls"] += 1
        done = run["_polls"] > 1
        if done and "_exported" not in run and self.export_outcome == "success":
            self.on_export(self.flows[run["flowId"]], run["dataset"])
            run["_exported"] = True
        summary = {"startedAtUTC": 1675807719411, **({"completedAtUTC": 1675807799416} if done else {})}
        status = {"status": self.export_outcome if done else "inProgress"}
        item = {"id": run_id, "flowId": run["flowId"], "sandboxName": SANDBOX, "imsOrgId": ORG_ID,
                "flowSpec": {"id": "269ba276-16fc-47db-92b0-c1049a3c131f", "version": "1.0"},
                "metrics": {"durationSummary": summary, "recordSummary": {"outputRecordCount": 0},
                            "statusSummary": status}}
        if done and self.export_outcome == "failed":
            item["activities"] = [{"id": "dataset-export", "statusSummary": {"status": "failed", "extensions": {
                "errors": [{"code": "CONNECTOR-2001-500", "message": "Access denied to the bucket path"}]}}}]
        return 200, {"items": [item]}


def _catalog_batch(batch: dict) -> dict:
    """A batch as the Catalog describes it: no id inside (the id is its key) and no bookkeeping."""
    return {k: v for k, v in batch.items() if k != "id" and not k.startswith("_")}


def _uuid() -> str:
    return str(uuid.uuid4())


def _lower(value):
    if isinstance(value, dict):
        return {k.lower(): _lower(v) for k, v in value.items()}
    return value


def _iso(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parquet_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)
