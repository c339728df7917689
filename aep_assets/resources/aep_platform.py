"""`AEPPlatform`: the platform interface against a real Adobe Experience Platform sandbox.

Adobe's APIs are called through aepp 0.6.0 service objects built from a per-instance `ConnectObject`
(`aepp.configure(..., connectInstance=True)`), with our `AEPSession` installed in each of them (TLS on,
bounded retries honouring Retry-After, one token refresh on 401, redacted errors: see `aep_http`).
Query Service is a psycopg 3 connection (sslmode=require) opened with the credentials of the
`/connection_parameters` endpoint; long statements (CTAS, INSERT INTO) go through the asynchronous
`/queries` API and are polled, their errors raised.

XDM layout and the flat Query Service views that the project's SQL reads: see `aep_xdm`.
Setup, permissions, clean-up and what was (not) run live: `docs/aep_mode.md`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, PrivateAttr

from aep_assets.lib import guardrails, names, sql
from aep_assets.lib.datasets import (
    BatchValidationError,
    DatasetSpec,
    conform,
    identity_hashes,
    repeated_identities,
)
from aep_assets.resources import aep_http, aep_xdm
from aep_assets.resources.aep_http import (
    AEPError,
    AEPMaybeApplied,
    AEPSession,
    Redactor,
    RetryPolicy,
    TokenProvider,
    gateway_url,
    log,
)
from aep_assets.resources.platform import (
    Audience,
    Batch,
    BatchIngestionError,
    Dataset,
    Platform,
    export_parent,
)
from aep_assets.resources.storage import MANIFEST, Manifest, S3Storage, Storage, StorageError
from aep_assets.settings import SettingError

T = TypeVar("T")

ENV_REQUIRED = (("org_id", "AEP_ORG_ID"), ("client_id", "AEP_CLIENT_ID"), ("client_secret", "AEP_CLIENT_SECRET"),
                ("scopes", "AEP_SCOPES"), ("sandbox", "AEP_SANDBOX_NAME"))
ENV_OPTIONAL = (("tenant_id", "AEP_TENANT_ID"), ("environment", "AEP_ENVIRONMENT"),
                ("name_prefix", "AEP_NAME_PREFIX"),
                ("export_s3_access_key_id", "AEP_EXPORT_S3_ACCESS_KEY_ID"),
                ("export_s3_secret_access_key", "AEP_EXPORT_S3_SECRET_ACCESS_KEY"))

# Flow Service ids from Adobe's "Export datasets by using the Flow Service API" tutorial.
S3_CONNECTION_SPEC = "4fce964d-3f37-408f-9778-e597338a21ee"
S3_DATASET_FLOW_SPEC = "269ba276-16fc-47db-92b0-c1049a3c131f"
DATA_LAKE_SOURCE_SPEC = "23598e46-f560-407b-88d5-ea6207e49db0"
ADHOC_ACCEPT = "application/vnd.adobe.adhoc.dataset.activation+json; version=1"
NOT_READY = "not ready for dataset export"

BATCH_KEY_TAG = "aepAssetsIdempotencyKey"
AUDIENCE_MARKER = "[managed by aep_assets]"
_SUCCESS = {"success", "active"}
_FAILED = {"failed", "failure", "aborted", "abandoned"}
_AEPP_TOKEN = "issued-by-aep_assets"  # aepp's own token slot; AEPSession sets the real header per request

_PG_ARROW = {16: pa.bool_(), 20: pa.int64(), 21: pa.int32(), 23: pa.int32(), 700: pa.float64(), 701: pa.float64(),
             1700: pa.float64(), 25: pa.string(), 1043: pa.string(), 19: pa.string(), 1042: pa.string(),
             1082: pa.date32(), 1114: pa.timestamp("us", tz="UTC"), 1184: pa.timestamp("us", tz="UTC")}


class AEPConfigError(SettingError):
    """AEP mode is missing configuration; the message names what to set."""


class AEPPlatform(Platform):
    """A real Experience Platform sandbox (OAuth server-to-server credentials)."""

    org_id: str = Field(description="IMS organization id (…@AdobeOrg). Env AEP_ORG_ID.")
    client_id: str = Field(description="OAuth server-to-server client id (API key). Env AEP_CLIENT_ID.")
    client_secret: str = Field(description="OAuth client secret, only as dg.EnvVar('AEP_CLIENT_SECRET').",
                               repr=False)
    scopes: str = Field(description="Comma-separated OAuth scopes of the credential. Env AEP_SCOPES.")
    sandbox: str = Field(description="Sandbox name. Env AEP_SANDBOX_NAME.")
    tenant_id: str = Field(default="", description="Tenant id without '_'; empty: looked up in the Schema Registry.")
    environment: str = Field(default="prod", description="'prod' (platform.adobe.io) or an Adobe stage name.")
    name_prefix: str = Field(default="aep_assets", description="Prefix of schema, field group and flow titles.")
    export_s3_access_key_id: str = Field(default="", description="S3 key AEP writes dataset exports with (EnvVar).")
    export_s3_secret_access_key: str = Field(default="", description="Its secret (EnvVar).", repr=False)
    query_sslmode: str = Field(default="require", description="libpq sslmode for Query Service.")
    http_attempts: int = Field(default=5, description="Tries per HTTP call on 429/5xx/connection errors.")
    http_backoff_seconds: float = Field(default=1.0, description="First retry backoff ceiling (doubles, jittered).")
    poll_seconds: float = Field(default=5.0, description="First wait when polling batches, queries, jobs, runs.")
    poll_max_seconds: float = Field(default=60.0, description="Longest wait between two polls.")
    wait_timeout_seconds: float = Field(default=6 * 3600.0, description="Give up waiting after this long.")
    export_not_ready_attempts: int = Field(default=15, description="Ad-hoc export tries while AEP says 'not ready'.")
    export_not_ready_wait_seconds: float = Field(default=60.0, description="Wait between those tries.")
    large_file_bytes: int = Field(default=guardrails.SMALL_FILE_BYTES,
                                  description="Files above this use the large-file API.")
    chunk_bytes: int = Field(default=guardrails.CHUNK_BYTES, description="Chunk size of large-file uploads.")
    interactive_rows: int = Field(default=50_000, description=(
        "Results up to this many rows come over the Query Service wire (its interactive limit); larger "
        "ones are exported to cloud storage through a scratch dataset and read back from there."))

    _api: Any = PrivateAttr(default=None)
    _api_pid: int = PrivateAttr(default=0)
    _tenant: str | None = PrivateAttr(default=None)
    _pg: Any = PrivateAttr(default=None)
    _pg_opened: float = PrivateAttr(default=0.0)
    _jobs: dict = PrivateAttr(default_factory=dict)

    @classmethod
    def from_env(cls) -> AEPPlatform:
        """The resource wired to environment variables (as dg.EnvVar); fails naming every missing one."""
        missing = [var for _, var in ENV_REQUIRED if not os.environ.get(var)]
        if missing:
            raise AEPConfigError(
                f"AEP mode (AEP_ASSETS_ENV=aep) needs these environment variables: {', '.join(missing)}. "
                "See docs/aep_mode.md.")
        config = {field: dg.EnvVar(var) for field, var in ENV_REQUIRED}
        config.update({field: dg.EnvVar(var) for field, var in ENV_OPTIONAL if os.environ.get(var)})
        return cls(**config)

    @property
    def dialect(self) -> sql.Dialect:
        return "spark"

    # --- clients ------------------------------------------------------------------------------
    def api(self) -> _Clients:
        """aepp service objects for this resource (one set per process), our session in each."""
        if self._api is None or self._api_pid != os.getpid():
            self._api = _Clients(self)
            self._api_pid = os.getpid()
        return self._api

    @property
    def redact(self) -> Redactor:
        return self.api().redact

    def tenant(self) -> str:
        if self._tenant is None:
            api = self.api()
            tenant = self.tenant_id or api.schema.connector.getData(f"{api.schema.endpoint}/stats")["tenantId"]
            self._tenant = tenant.lstrip("_")
            names.identifier(self._tenant, "tenant id")
        return self._tenant

    def _wait(self, what: str, check: Callable[[], T | None]) -> T:
        """Poll `check` with backoff until it returns a value, or raise TimeoutError; each wait is logged
        (what, how long so far, when the next look is), so a run waiting for hours says why."""
        started = time.monotonic()
        delay, deadline = self.poll_seconds, started + self.wait_timeout_seconds
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{what}: not finished after {self.wait_timeout_seconds:.0f} s")
            log.info("waiting for %s: %.0f s so far, next look in %.0f s", what, time.monotonic() - started, delay)
            aep_http.pause(delay)
            delay = min(delay * 2, self.poll_max_seconds)

    # --- XDM and catalog ----------------------------------------------------------------------
    def ensure_dataset(self, spec: DatasetSpec) -> Dataset:
        if spec.name not in aep_xdm.XDM_PATHS:
            raise AEPConfigError(f"dataset {spec.name!r} has no XDM layout in aep_xdm.XDM_PATHS")
        api, tenant = self.api(), self.tenant()
        found = self._catalog_dataset(spec.name)
        if found is None:
            schema_id = self._ensure_schema(spec, tenant)
            found = self._created(f"dataset {spec.name}", lambda: self._catalog_dataset(spec.name),
                                  lambda: self._create_dataset(spec, schema_id))
        dataset_id, body = found
        if spec.profile_enabled and not _profile_enabled(body):
            api.catalog.connector.patchData(
                f"{api.catalog.endpoint}/dataSets/{dataset_id}",
                data=[{"op": "add", "path": "/tags/unifiedProfile", "value": ["enabled:true"]},
                      {"op": "add", "path": "/tags/unifiedIdentity", "value": ["enabled:true"]}],
                headers={**api.catalog.header, "Content-Type": "application/json-patch+json"})
            body = api.catalog.getDataSet(dataset_id)[dataset_id]
        self.execute(aep_xdm.flat_view_sql(spec.name, _pqs_table(body), tenant, self.dialect))
        return self._dataset(dataset_id, body)

    def _create_dataset(self, spec: DatasetSpec, schema_id: str) -> tuple[str, dict]:
        api = self.api()
        body = {"name": spec.name, "description": spec.description,
                "schemaRef": {"id": schema_id, "contentType": "application/vnd.adobe.xed-full+json;version=1"},
                "fileDescription": {"format": "parquet"}}
        if spec.profile_enabled:
            body["tags"] = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
        created = api.catalog.connector.postData(f"{api.catalog.endpoint}/dataSets", data=body,
                                                 headers=_json(api.catalog.header))
        dataset_id = created[0].split("/")[-1]
        log.info("created dataset %s (%s)", spec.name, dataset_id)
        return dataset_id, api.catalog.getDataSet(dataset_id)[dataset_id]

    def _created(self, what: str, lookup: Callable[[], T | None], create: Callable[[], T]) -> T:
        """A create call that is never repeated blindly: when Adobe may have acted on it without a definite
        answer (AEPMaybeApplied: a 5xx, a read timeout), what it would have created is looked up (by name,
        tag or key) and taken if it is there; only if it is not is the call made again."""
        for attempt in range(1, self.http_attempts + 1):
            try:
                return create()
            except AEPMaybeApplied as error:
                found = lookup()
                if found is not None:
                    log.warning("%s: the platform had acted on the unanswered request; using what it created", what)
                    return found
                if attempt == self.http_attempts:
                    raise
                delay = self.http_backoff_seconds * 2 ** (attempt - 1)
                log.warning("%s: %s; nothing was created, trying again in %.1f s", what, error, delay)
                aep_http.pause(delay)
        raise AssertionError("unreachable")

    def find_dataset(self, name: str) -> Dataset | None:
        found = self._catalog_dataset(name)
        return self._dataset(*found) if found else None

    def _catalog_dataset(self, name: str) -> tuple[str, dict] | None:
        api = self.api()
        listing = api.catalog.connector.getData(f"{api.catalog.endpoint}/dataSets", params={
            "name": name, "properties": "name,tags,schemaRef,created", "limit": 100})
        matches = sorted(((i, b) for i, b in listing.items() if isinstance(b, dict) and b.get("name") == name),
                         key=lambda item: item[1].get("created", 0))
        if len(matches) > 1:
            log.warning("%d datasets are named %s; using the oldest (%s)", len(matches), name, matches[0][0])
        return matches[0] if matches else None

    def _dataset(self, dataset_id: str, body: dict) -> Dataset:
        table = _pqs_table(body)
        if body["name"] in aep_xdm.XDM_PATHS:
            table = aep_xdm.flat_view_name(table)
        return Dataset(id=dataset_id, name=body["name"], table=table, profile_enabled=_profile_enabled(body),
                       created_ms=int(body.get("created") or 0))

    def _ensure_schema(self, spec: DatasetSpec, tenant: str) -> str:
        api = self.api()
        plan = aep_xdm.schemas(self.name_prefix)[spec.name]
        groups = aep_xdm.field_groups(self.name_prefix)
        group_ids = []
        for key in plan.field_groups:
            title = groups[key].title
            group = self._by_title("fieldgroups", title)
            if group is None:
                body = aep_xdm.field_group_body(groups[key], tenant)
                group = self._created(f"field group {title!r}", lambda t=title: self._by_title("fieldgroups", t),
                                      lambda b=body: api.schema.connector.postData(
                                          f"{api.schema.endpoint}/tenant/fieldgroups", data=b,
                                          headers=_json(api.schema.header)))
                log.info("created field group %r", title)
            group_ids.append(group["$id"])
        schema = self._by_title("schemas", plan.title)
        if schema is None:
            body = aep_xdm.schema_body(plan, group_ids)
            schema = self._created(f"schema {plan.title!r}", lambda: self._by_title("schemas", plan.title),
                                   lambda: api.schema.connector.postData(f"{api.schema.endpoint}/tenant/schemas",
                                                                         data=body, headers=_json(api.schema.header)))
            log.info("created schema %r", plan.title)
        self._ensure_identity(schema["$id"], tenant)
        if spec.profile_enabled and "union" not in schema.get("meta:immutableTags", []):
            api.schema.connector.patchData(
                f"{api.schema.endpoint}/tenant/schemas/{schema['meta:altId']}", headers=_json(api.schema.header),
                data=[{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}])
        return schema["$id"]

    def _by_title(self, kind: str, title: str) -> dict | None:
        """A tenant schema or field group by exact title (all pages), or None. The registry pages by
        `orderby`: `start` is the last title of the previous page (it refuses `start` without `orderby`)."""
        api = self.api()
        params: dict = {"property": f"title=={title}", "orderby": "title"}
        headers = {**api.schema.header, "Accept": "application/vnd.adobe.xed+json"}
        while True:
            page = api.schema.connector.getData(f"{api.schema.endpoint}/tenant/{kind}", params=params,
                                                headers=dict(headers))
            results = page.get("results", [])
            for item in results:
                if item.get("title") == title:
                    return item
            if not (page.get("_page") or {}).get("next") or not results:
                return None
            params["start"] = results[-1]["title"]

    def _ensure_identity(self, schema_id: str, tenant: str) -> None:
        api = self.api()
        path = aep_xdm.identity_path(tenant)
        if self._identity_descriptor(schema_id, path) is not None:
            return
        self._created(f"identity descriptor of {schema_id}", lambda: self._identity_descriptor(schema_id, path),
                      lambda: api.schema.connector.postData(
                          f"{api.schema.endpoint}/tenant/descriptors", headers=_json(api.schema.header),
                          data={"@type": "xdm:descriptorIdentity", "xdm:sourceSchema": schema_id,
                                "xdm:sourceVersion": 1, "xdm:sourceProperty": path, "xdm:namespace": "ECID",
                                "xdm:property": "xdm:code", "xdm:isPrimary": True}))

    def _identity_descriptor(self, schema_id: str, path: str) -> dict | None:
        api = self.api()
        listing = api.schema.connector.getData(
            f"{api.schema.endpoint}/tenant/descriptors", params={"property": f"xdm:sourceSchema=={schema_id}"},
            headers={**api.schema.header, "Accept": "application/vnd.adobe.xdm+json"})
        return next((d for d in listing.get("xdm:descriptorIdentity", [])
                     if d.get("xdm:sourceSchema") == schema_id and d.get("xdm:sourceProperty") == path), None)

    # --- batch ingestion ----------------------------------------------------------------------
    def ingest_batch(self, dataset: Dataset, spec: DatasetSpec, files: Sequence[Path], *,
                     idempotency_key: str) -> Batch:
        """Every file is checked (one at a time) before the first call, then reshaped into XDM and uploaded
        one at a time: memory stays at one file, whatever the batch holds."""
        if not files:
            raise BatchIngestionError(f"batch for dataset {dataset.name} has no files")
        try:
            guardrails.check_batch([Path(path).stat().st_size for path in files])
            validate_files(spec, files)
        except (guardrails.GuardrailError, BatchValidationError) as error:
            raise BatchIngestionError(f"batch for dataset {dataset.name} rejected before upload: {error}") from error
        done = self._batch_with_key(dataset, idempotency_key)
        if done is not None:
            return done
        api = self.api()
        batch_id = self._created(f"batch {idempotency_key} of {dataset.name}",
                                 lambda: self._loading_batch_with_key(dataset, idempotency_key),
                                 lambda: api.ingestion.connector.postData(
                                     f"{api.ingestion.endpoint}/batches", headers=_json(api.ingestion.header),
                                     data={"datasetId": dataset.id, "inputFormat": {"format": "parquet"},
                                           "tags": {BATCH_KEY_TAG: [idempotency_key]}}))["id"]
        try:
            for index, path in enumerate(files):
                self._upload_nested(batch_id, dataset.id, f"part-{index:05d}.parquet", path, spec)
            api.ingestion.uploadSmallFileFinish(batchId=batch_id, action="COMPLETE")
        except Exception as error:
            try:
                api.ingestion.uploadSmallFileFinish(batchId=batch_id, action="ABORT")
            except Exception as abort_error:  # the upload error is the one to report
                log.warning("could not abort batch %s: %s", batch_id, self.redact(abort_error))
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name} failed during upload: "
                                      f"{self.redact(error)}") from None
        log.info("batch %s of %s completed (%d files), waiting for the platform", batch_id, dataset.name, len(files))
        try:
            body = self._wait(f"batch {batch_id}", lambda: self._terminal_batch(batch_id))
        except TimeoutError as error:
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name}: {error}") from None
        batch = _batch(batch_id, body)
        if batch.status != "success":
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name} failed: {batch.error}", batch)
        return batch

    def _upload_nested(self, batch_id: str, dataset_id: str, name: str, path: Path, spec: DatasetSpec) -> None:
        """One file in the XDM layout: a small-file PUT, or the large-file API in chunks."""
        api = self.api()
        url = f"{api.ingestion.endpoint}/batches/{batch_id}/datasets/{dataset_id}/files/{name}"
        binary = {"Content-Type": "application/octet-stream"}
        with tempfile.TemporaryDirectory(prefix="aep-upload-") as tmp:
            nested = Path(tmp) / "nested.parquet"
            pq.write_table(aep_xdm.nest(conform(_read_parquet(path), spec, f"file {path}"), spec, self.tenant()),
                           nested, compression="snappy")
            size = nested.stat().st_size
            with open(nested, "rb") as handle:
                if size <= self.large_file_bytes:
                    api.session.put(url, data=handle.read(), headers=binary)
                    return
                api.session.post(url, params={"action": "INITIALIZE"}, headers=binary)
                for start, end in guardrails.chunks(size, self.chunk_bytes):
                    handle.seek(start)
                    api.session.patch(url, data=handle.read(end - start + 1),
                                      headers={**binary, "Content-Range": f"bytes {start}-{end}/{size}"})
                api.session.post(url, params={"action": "COMPLETE"}, headers=binary)

    def _terminal_batch(self, batch_id: str) -> dict | None:
        body = self.api().catalog.getBatch(batch_id).get(batch_id, {})
        return body if str(body.get("status", "")).lower() in _SUCCESS | _FAILED else None

    def _batch_with_key(self, dataset: Dataset, key: str) -> Batch | None:
        found = self._tagged_batch(dataset, key, "success")
        if found is None:
            return None
        log.info("batch %s already holds this content (key %s)", found[0], key)
        return _batch(*found)

    def _loading_batch_with_key(self, dataset: Dataset, key: str) -> dict | None:
        """A batch created for this content and not yet completed (a create whose answer was lost)."""
        found = self._tagged_batch(dataset, key, "loading")
        return None if found is None else {"id": found[0], **found[1]}

    def _tagged_batch(self, dataset: Dataset, key: str, status: str) -> tuple[str, dict] | None:
        """(id, body) of a batch of the dataset in this status, tagged with this idempotency key."""
        api = self.api()
        found = api.catalog.connector.getData(f"{api.catalog.endpoint}/batches", params={
            "dataSet": dataset.id, "status": status, "tags": f"{BATCH_KEY_TAG}:{key}", "limit": 1})
        return next(((batch_id, body) for batch_id, body in found.items()
                     if isinstance(body, dict) and key in (body.get("tags") or {}).get(BATCH_KEY_TAG, [])), None)

    def completed_batches(self, dataset: Dataset, *, completed_after_ms: int = 0, limit: int | None = None
                          ) -> list[Batch]:
        api = self.api()
        batches: list[Batch] = []
        start = 0
        while limit is None or len(batches) < limit:
            size = 100 if limit is None else min(100, limit - len(batches))
            page = api.catalog.connector.getData(f"{api.catalog.endpoint}/batches", params={
                "dataSet": dataset.id, "status": "success,failed", "property": f"completed>={completed_after_ms}",
                "orderBy": "asc:completed", "start": start, "limit": size})
            items = [(i, b) for i, b in page.items() if isinstance(b, dict)]
            batches.extend(_batch(i, b) for i, b in items)
            if len(items) < size:
                break
            start += len(items)
        batches = [b for b in batches if b.completed_ms is not None and b.completed_ms >= completed_after_ms]
        return sorted(batches, key=lambda b: (b.completed_ms, b.id))[:limit]

    # --- Query Service ------------------------------------------------------------------------
    def _connection(self, fresh: bool = False):
        """The psycopg connection; credentials from /connection_parameters, renewed hourly or on demand."""
        if self._pg is not None and not self._pg.closed and not fresh and time.time() - self._pg_opened < 3000:
            return self._pg
        self._close()
        params = self.api().query.connection()
        self.redact.add(params["token"])
        self._pg = psycopg.connect(host=params["host"], port=int(params["port"]), dbname=params["dbName"],
                                   user=params["username"], password=params["token"], sslmode=self.query_sslmode,
                                   autocommit=True, connect_timeout=30)
        self._pg_opened = time.time()
        return self._pg

    def teardown_after_execution(self, context) -> None:
        """Dagster hook: close the Query Service connection when the run (or step) ends."""
        self._close()

    def _close(self) -> None:
        if self._pg is not None:
            try:
                self._pg.close()
            finally:
                self._pg = None

    def _run(self, action: Callable[[Any], T]) -> T:
        """Run against Query Service; on a connection or authentication failure (expired token),
        reconnect once with fresh credentials. Only idempotent statements are run this way."""
        for attempt in (0, 1):
            try:
                return action(self._connection(fresh=attempt == 1))
            except psycopg.OperationalError as error:
                self._close()
                if attempt == 1:
                    raise AEPError(f"Query Service: {type(error).__name__}: {self.redact(error)}") from None
                log.info("Query Service connection failed (%s); reconnecting with fresh credentials",
                         type(error).__name__)
        raise AssertionError("unreachable")

    def query(self, text: str) -> pa.Table:
        def fetch(conn) -> pa.Table:
            with conn.cursor() as cursor:
                cursor.execute(text)
                if cursor.description is None:
                    return pa.table({})
                return _to_arrow(cursor.description, cursor.fetchall())
        return self._run(fetch)

    def stream(self, select: str, storage: Storage, name: str) -> Iterator[pa.RecordBatch]:
        """Up to `interactive_rows` rows over the Query Service wire; more through the platform's own bulk
        path: a CTAS into the scratch dataset `cmle_bulk_{name}`, exported to cloud storage by the
        dataset-export dataflow, read back file by file (the export folder is removed afterwards)."""
        rows = int(self.query(f"SELECT COUNT(*) AS n FROM ({select}) AS counted")["n"][0].as_py())
        if rows <= self.interactive_rows:
            yield from self.query(select).to_batches()
            return
        log.info("%s: %d rows, more than the %d read interactively: reading them through a dataset export",
                 name, rows, self.interactive_rows)
        columns = ", ".join(names.quoted(c, "column") for c in self._columns(select))  # not the batch ids
        scratch = self.create_table_as(names.identifier(f"cmle_bulk_{name}"[:63], "dataset name"),
                                       f"SELECT {columns} FROM ({select}) AS bulk")
        manifest = self.export_dataset(scratch, storage, datetime.now(timezone.utc))
        try:
            yield from storage.stream_batches(manifest)
        finally:
            storage.delete_prefix(manifest.prefix)

    def execute(self, text: str) -> None:
        """A short idempotent statement (DDL) over the interactive connection."""
        self._run(lambda conn: conn.execute(text))

    def _submit(self, text: str, name: str) -> dict:
        """A long statement through the asynchronous query API, polled until it ends; errors raised."""
        api = self.api()
        created = api.query.postQueries(name=name, sql=text, dbname=f"{self.sandbox}:all",
                                        description=f"{self.name_prefix}: {name}")
        query_id = created["id"]

        def check() -> dict | None:
            state = api.query.getQuery(query_id)
            if state.get("state") == "SUCCESS":
                return state
            if state.get("state") in ("FAILED", "KILLED", "TIMEOUT", "CANCELLED", "CANCELED"):
                errors = error_text(state.get("errors")) or "no error details"
                raise AEPError(f"Query Service query {query_id} ({name}) {state['state']}: {self.redact(errors)}")
            return None
        return self._wait(f"Query Service query {query_id} ({name})", check)

    def _columns(self, select: str) -> list[str]:
        shape = self.query(f"SELECT * FROM ({select}) AS shape LIMIT 0")
        return [c.lower() for c in shape.column_names if c.lower() != "_acp_batchid"]

    def create_table_as(self, name: str, select: str) -> Dataset:
        table = names.identifier(name, "dataset name")
        existing = self.find_dataset(name)
        if existing is not None:
            if self._columns(f"SELECT * FROM {existing.table}") == self._columns(select):
                old = [b.id for b in self._batches(existing, "success")]
                self._submit(f"INSERT INTO {existing.table} {select}", f"replace {name}")
                self._revert(old)
                return self.find_dataset_or_fail(name)
            log.warning("the columns of %s changed: dropping and recreating it (new dataset id)", name)
            self.execute(f"DROP TABLE IF EXISTS {table}")
        self._submit(f"CREATE TABLE {table} AS ({select})", f"create {name}")
        dataset = self.find_dataset(name)
        if dataset is None:
            raise AEPError(f"CTAS of {name} succeeded but the Catalog has no dataset named {name}")
        return dataset

    def ensure_table(self, name: str, like_select: str) -> Dataset:
        return self.find_dataset(name) or self.create_table_as(
            name, f"SELECT * FROM ({like_select}) AS shape WHERE FALSE")

    def replace_slices(self, dataset: Dataset, key_column: str, keys: Sequence[str], select: str) -> dict[str, int]:
        """One INSERT (one batch) per key, so that each key's rows can later be reverted on their own."""
        column = names.identifier(key_column, "column")
        return {key: self._replace_slice(dataset, key_column, key, f"SELECT * FROM ({select}) AS slices "
                                         f"WHERE {column} = {sql.literal(key)}") for key in keys}

    def _replace_slice(self, dataset: Dataset, key_column: str, key: str, select: str) -> int:
        """INSERT the new rows (one new batch), then revert the batches that held the old rows of this key.
        Not atomic: until the revert is processed, readers can see both."""
        target = names.identifier(dataset.table, "table")
        column = names.identifier(key_column, "column")
        old = self.query(
            f"SELECT _acp_batchid AS batch, COUNT(DISTINCT {column}) AS slices FROM {target} "
            f"WHERE _acp_batchid IN (SELECT _acp_batchid FROM {target} WHERE {column} = {sql.literal(key)}) "
            "GROUP BY _acp_batchid").to_pylist()
        shared = [row["batch"] for row in old if row["slices"] > 1]
        if shared:
            raise AEPError(f"batches {shared} of {dataset.name} hold rows of several {key_column} values: "
                           "reverting them would delete other slices")
        old_ids = [row["batch"] for row in old]
        self._submit(f"INSERT INTO {target} {select}", f"replace {dataset.name} {key_column}={key}")
        self._revert(old_ids)
        keep = f" AND _acp_batchid NOT IN {sql.literal(old_ids)}" if old_ids else ""
        counted = self.query(f"SELECT COUNT(*) AS n FROM {target} WHERE {column} = {sql.literal(key)}{keep}")
        return int(counted["n"][0].as_py())

    def _batches(self, dataset: Dataset, status: str) -> list[Batch]:
        api = self.api()
        found: list[Batch] = []
        start = 0
        while True:
            page = api.catalog.connector.getData(f"{api.catalog.endpoint}/batches", params={
                "dataSet": dataset.id, "status": status, "start": start, "limit": 100})
            items = [(i, b) for i, b in page.items() if isinstance(b, dict)]
            found.extend(_batch(i, b) for i, b in items)
            if len(items) < 100:
                return found
            start += len(items)

    def _revert(self, batch_ids: Sequence[str]) -> None:
        for batch_id in batch_ids:
            self.api().ingestion.deleteBatch(batchId=batch_id)
            log.info("reverted batch %s", batch_id)

    # --- dataset export -----------------------------------------------------------------------
    def export_dataset(self, dataset: Dataset, storage: Storage, export_time: datetime,
                       order_by: str | None = None) -> Manifest:
        """Ad-hoc run of a Flow Service dataset-export dataflow to the S3 storage, then our manifest.

        AEP names the folder itself (`exportTime=YYYYMMDDHHMM`); `export_time` is not used for it, and
        the export has no row order (`order_by` is not applied).
        """
        if not isinstance(storage, S3Storage):
            raise AEPConfigError("AEP dataset export writes to S3: set AEP_ASSETS_S3_BUCKET (and "
                                 "AEP_ASSETS_S3_PREFIX) so storage is the bucket the dataflow writes to")
        if not (self.export_s3_access_key_id and self.export_s3_secret_access_key):
            raise AEPConfigError("AEP dataset export needs AEP_EXPORT_S3_ACCESS_KEY_ID and "
                                 "AEP_EXPORT_S3_SECRET_ACCESS_KEY (the key AEP writes to the bucket with)")
        parent = export_parent(dataset)
        flow_id = self._export_flow(dataset, storage)
        before = _folders(storage.list_keys(parent), parent)
        run_id = self._adhoc_export(flow_id, dataset)
        self._wait(f"dataset export run {run_id}", lambda: self._finished_run(run_id))
        keys = storage.list_keys(parent)
        complete = {key.split("/")[-2] for key in keys if key.endswith(f"/{MANIFEST}")}
        new = sorted(f for f in _folders(keys, parent) - before if f not in complete)
        if not new:
            raise StorageError(f"dataset export run {run_id} succeeded but wrote no new folder under "
                               f"{storage.uri(parent)}")
        prefix = f"{parent}/{new[-1]}"
        files = [k for k in keys if k.startswith(prefix + "/") and k.endswith(".parquet")]
        if not files:
            raise StorageError(f"dataset export run {run_id}: no parquet files under {storage.uri(prefix)}")
        rows = size = 0
        columns: list[str] = []
        with tempfile.TemporaryDirectory(prefix="aep-export-") as tmp:
            for index, key in enumerate(files):
                path = Path(tmp) / f"{index}.parquet"
                storage.get_file(key, path)
                metadata = pq.read_metadata(path)
                rows += metadata.num_rows
                size += path.stat().st_size
                columns = columns or metadata.schema.to_arrow_schema().names
                path.unlink()
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest = Manifest(prefix, files, rows, size, columns, created)
        storage.put_bytes(f"{prefix}/{MANIFEST}", manifest.to_json())
        log.info("dataset %s exported by run %s: %d files, %d rows", dataset.name, run_id, len(files), rows)
        return manifest

    def _flow_items(self, kind: str, name: str) -> list[dict]:
        api = self.api()
        listing = api.flow.connector.getData(f"{api.flow.endpoint}/{kind}", params={"property": f"name=={name}"})
        return [item for item in listing.get("items", []) if item.get("name") == name]

    def _export_flow(self, dataset: Dataset, storage: S3Storage) -> str:
        """The dataset's export dataflow and its connections, each created once (looked up by name)."""
        flow_name = f"{self.name_prefix} export {dataset.name} {dataset.id}"
        existing = self._flow_items("flows", flow_name)
        if existing:
            return existing[0]["id"]
        spec = {"id": S3_CONNECTION_SPEC, "version": "1.0"}
        base_id = self._flow_item("connections", f"{self.name_prefix} S3 {storage.bucket}", {
            "connectionSpec": spec, "auth": {"specName": "Access Key", "params": {
                "s3AccessKey": self.export_s3_access_key_id, "s3SecretKey": self.export_s3_secret_access_key}}})
        path = "/".join(p for p in (storage.prefix.strip("/"), "cmle/egress") if p)
        target_id = self._flow_item("targetConnections", f"{flow_name} target", {
            "baseConnectionId": base_id, "connectionSpec": spec,
            "params": {"bucketName": storage.bucket, "path": path, "compression": "GZIP",
                       "datasetFileType": "PARQUET"}})
        source_id = self._flow_item("sourceConnections", f"{flow_name} source", {
            "connectionSpec": {"id": DATA_LAKE_SOURCE_SPEC, "version": "1.0"},
            "params": {"datasets": [{"dataSetId": dataset.id, "name": dataset.name}]}})
        flow_id = self._flow_item("flows", flow_name, {
            "flowSpec": {"id": S3_DATASET_FLOW_SPEC}, "sourceConnectionIds": [source_id],
            "targetConnectionIds": [target_id], "transformations": [], "scheduleParams": export_schedule(time.time())})
        log.info("created export dataflow %s for %s", flow_id, dataset.name)
        return flow_id

    def _flow_item(self, kind: str, name: str, body: dict) -> str:
        """The id of the Flow Service item of this kind and name, created if there is none."""
        found = self._flow_items(kind, name)
        if found:
            return found[0]["id"]
        api = self.api()
        created = self._created(f"{kind} {name!r}", lambda: next(iter(self._flow_items(kind, name)), None),
                                lambda: api.flow.connector.postData(f"{api.flow.endpoint}/{kind}",
                                                                    data={"name": name, **body},
                                                                    headers=_json(api.flow.header)))
        return created["id"]

    def _adhoc_export(self, flow_id: str, dataset: Dataset) -> str:
        api = self.api()
        for attempt in range(1, self.export_not_ready_attempts + 1):
            try:
                response = api.destinations.createAdHocDatasetExport({flow_id: [dataset.id]})
                status_url = response["destinations"][0]["datasets"][0]["statusURL"]
                return status_url.rstrip("/").rsplit("/", 1)[-1]
            except AEPError as error:
                if NOT_READY not in str(error).lower() or attempt == self.export_not_ready_attempts:
                    raise
                log.info("dataflow %s not ready for an ad-hoc export yet (try %d), waiting %.0f s", flow_id,
                         attempt, self.export_not_ready_wait_seconds)
                aep_http.pause(self.export_not_ready_wait_seconds)
        raise AssertionError("unreachable")

    def _finished_run(self, run_id: str) -> dict | None:
        try:
            items = self.api().flow.getRun(run_id)
        except AEPError as error:
            if error.status == 404:  # the run is not registered yet
                return None
            raise
        runs = items if isinstance(items, list) else [items]
        if not runs or not isinstance(runs[0], dict):
            return None
        run = runs[0]
        state = str(((run.get("metrics") or {}).get("statusSummary") or {}).get("status", "")).lower()
        if state in ("failed", "cancelled", "canceled"):
            raise AEPError(f"dataset export run {run_id} {state}: {self.redact(run_errors(run)) or 'no error details'}")
        return run if state == "success" else None

    # --- segmentation -------------------------------------------------------------------------
    def _segments(self) -> list[dict]:
        api = self.api()
        found, start = [], 0
        while True:
            page = api.segmentation.connector.getData(f"{api.segmentation.endpoint}/segment/definitions",
                                                      params={"start": start, "limit": 100})
            segments = page.get("segments", [])
            found.extend(segments)
            if len(segments) < 100:
                return [s for s in found if AUDIENCE_MARKER in (s.get("description") or "")]
            start += len(segments)

    def _audience(self, segment: dict) -> Audience:
        expression = (segment.get("expression") or {}).get("value", "")
        match = re.search(r"propensity >= ([0-9.eE+-]+) and \S+ < ([0-9.eE+-]+)", expression)
        lower, upper = (float(match.group(1)), float(match.group(2))) if match else (float("nan"), float("nan"))
        description = (segment.get("description") or "").replace(AUDIENCE_MARKER, "").strip()
        return Audience(id=segment["id"], name=segment["name"], description=description, expression=expression,
                        lower=lower, upper=upper, created_ms=int(segment.get("creationTime") or 0),
                        updated_ms=int(segment.get("updateTime") or 0))

    def upsert_audience(self, name: str, description: str, lower: float, upper: float,
                        scores: Dataset) -> Audience:
        """A batch segment definition (PQL on `_{tenant}.propensity`), updated in place by name, then an
        evaluation job (its count is `audience_size`)."""
        names.audience_name(name)
        api, tenant = self.api(), self.tenant()
        expression = f"_{tenant}.propensity >= {lower!r} and _{tenant}.propensity < {upper!r}"
        body = {"name": name, "description": f"{description} {AUDIENCE_MARKER}".strip(),
                "expression": {"type": "PQL", "format": "pql/text", "value": expression},
                "schema": {"name": "_xdm.context.profile"},
                "evaluationInfo": {"batch": {"enabled": True}, "continuous": {"enabled": False},
                                   "synchronous": {"enabled": False}}}
        url = f"{api.segmentation.endpoint}/segment/definitions"
        current = next((s for s in self._segments() if s.get("name") == name), None)
        if current is None:
            segment = self._created(f"audience {name!r}",
                                    lambda: next((s for s in self._segments() if s.get("name") == name), None),
                                    lambda: api.segmentation.connector.postData(url, data=body,
                                                                                headers=_json(api.segmentation.header)))
            log.info("created audience %r (%s)", name, segment["id"])
        elif ((current.get("expression") or {}).get("value"), current.get("description")) != (
                expression, body["description"]):
            segment = api.segmentation.connector.patchData(f"{url}/{current['id']}", data={"id": current["id"], **body})
            log.info("updated audience %r (%s) in place", name, current["id"])
        else:
            segment = current
        job = api.segmentation.createJob([segment["id"]])
        self._jobs[segment["id"]] = job["id"]
        return self._audience(segment)

    def audiences(self) -> list[Audience]:
        return sorted((self._audience(s) for s in self._segments()), key=lambda a: (a.lower, a.name))

    def delete_audience(self, audience: Audience) -> None:
        self.api().segmentation.deleteSegment(audience.id)
        self._jobs.pop(audience.id, None)

    def audience_size(self, audience: Audience, scores: Dataset) -> int:
        """Profiles the segment evaluation job counted for this audience."""
        api = self.api()
        job_id = self._jobs.get(audience.id) or api.segmentation.createJob([audience.id])["id"]

        def check() -> dict | None:
            job = api.segmentation.getJob(job_id)
            status = str(job.get("status", "")).upper()
            if status in ("FAILED", "CANCELLED", "CANCELED"):
                errors = error_text(job.get("errors")) or "no error details"
                raise AEPError(f"segment job {job_id} for audience {audience.name!r} {status}: {self.redact(errors)}")
            return job if status == "SUCCEEDED" else None
        job = self._wait(f"segment job {job_id}", check)
        return int(((job.get("metrics") or {}).get("segmentedProfileCounter") or {}).get(audience.id, 0))

    def activate_audience(self, audience: Audience, scores: Dataset, storage: Storage,
                          export_time: datetime) -> Manifest:
        """Members (from Query Service, same interval as the segment; a large audience through a dataset
        export, see `stream`) written to cmle/activation/...

        Limitation: this is not an AEP destination activation (no destination dataflow, merge policy or
        consent evaluation); see docs/aep_mode.md.
        """
        log.warning("audience %r: members exported through Query Service by aep_assets, not through an AEP "
                    "destination dataflow (documented limitation)", audience.name)
        members = self.stream(self.audience_members_sql(audience, scores), storage,
                              f"members_{names.slug(audience.name).replace('-', '_').replace('.', '_')}")
        return self.write_activation(storage, audience, members, export_time)


class _Clients:
    """aepp service objects sharing one ConnectObject and one AEPSession."""

    def __init__(self, platform: AEPPlatform):
        import aepp
        from aepp import catalog, destinationinstanceservice, flowservice, ingestion, queryservice, schema, segmentation

        self.redact = Redactor()
        policy = RetryPolicy(attempts=platform.http_attempts, backoff_seconds=platform.http_backoff_seconds)
        self.tokens = TokenProvider(platform.environment, platform.client_id, platform.client_secret,
                                    platform.scopes, self.redact, policy)
        self.redact.add(platform.export_s3_secret_access_key)
        self.gateway = gateway_url(platform.environment)
        self.session = AEPSession(self.tokens, {"x-api-key": platform.client_id,
                                                "x-gw-ims-org-id": platform.org_id,
                                                "x-sandbox-name": platform.sandbox},
                                  self.gateway, self.redact, policy)
        # aepp never gets the client secret: it holds a placeholder token, AEPSession sets the real one.
        self.connect = aepp.configure(org_id=platform.org_id, client_id=platform.client_id, scopes=platform.scopes,
                                      sandbox=platform.sandbox, environment=platform.environment, retry=0,
                                      connectInstance=True, accesstoken=_AEPP_TOKEN)
        config = self.connect.getConfigObject()
        config["connectionType"] = "oauthV2"
        config["date_limit"] = 2 ** 62  # aepp must never try to fetch a token itself (it would skip TLS)

        def service(cls, endpoint_key: str):
            client = cls(config=self.connect)
            client.connector.session = self.session
            client.connector.retry = 0
            client.endpoint = self.gateway + aepp.config.endpoints[endpoint_key]
            return client

        self.schema = service(schema.Schema, "schemas")
        self.catalog = service(catalog.Catalog, "catalog")
        self.ingestion = service(ingestion.DataIngestion, "ingestion")
        self.query = service(queryservice.QueryService, "query")
        self.segmentation = service(segmentation.Segmentation, "segmentation")
        self.flow = service(flowservice.FlowService, "flow")
        self.destinations = service(destinationinstanceservice.DestinationInstanceService, "destinationInstance")


def export_schedule(now: float) -> dict:
    """The dataset-export flow's schedule. Runs are ad hoc (as in Adobe's CMLE notebooks), so the schedule
    starts a year ahead, daily (the destinations API accepts interval 1, 3, 6, 9 or 12); it ends two years
    ahead explicitly, since a flow without endTime ends six months after creation ("Export datasets by
    using the Flow Service API"), after which ad-hoc runs are refused."""
    start = int(now) + 365 * 86400
    return {"timeUnit": "day", "interval": 1, "startTime": start, "endTime": start + 365 * 86400}


def run_errors(run: dict) -> str:
    """Adobe's errors of a flow run: in its activities' status summaries, directly (the "Monitor dataflows"
    guide) or under `extensions` (flow-service.yaml)."""
    errors = []
    for activity in run.get("activities") or []:
        summary = activity.get("statusSummary") or {}
        errors += (summary.get("errors") or []) + ((summary.get("extensions") or {}).get("errors") or [])
    return error_text(errors)


def error_text(errors: list[dict] | None, between: str = " ") -> str:
    """Adobe's error objects as one line, "code text; ...": each service names the text differently
    (`message`, Catalog's `description`, segmentation's `msg`)."""
    return "; ".join(between.join(str(part) for part in (e.get("code"), e.get("description") or e.get("msg")
                                                          or e.get("message")) if part) for e in errors or [])


def _json(header: dict) -> dict:
    """aepp's service headers with the JSON content type the descriptions require on writes."""
    return {**header, "Content-Type": "application/json"}


def _profile_enabled(body: dict) -> bool:
    return any(str(v).replace(" ", "") == "enabled:true" for v in (body.get("tags") or {}).get("unifiedProfile", []))


def _pqs_table(body: dict) -> str:
    """The dataset's Query Service table name (Catalog tag adobe/pqs/table)."""
    tagged = (body.get("tags") or {}).get("adobe/pqs/table") or []
    table = tagged[0] if tagged else re.sub(r"[^a-z0-9_]+", "_", str(body.get("name", "")).lower())
    return names.identifier(table, "Query Service table name")


def _batch(batch_id: str, body: dict) -> Batch:
    raw = str(body.get("status", "")).lower()
    status = "success" if raw in _SUCCESS else "failed" if raw in _FAILED else "loading"
    error = error_text(body.get("errors"), between=": ") or (f"status {raw}" if status == "failed" else None)
    dataset_id = next((o.get("id") for o in body.get("relatedObjects") or [] if o.get("type") == "dataSet"), "")
    metrics = body.get("metrics") or {}
    records = body.get("recordCount", metrics.get("outputRecordCount", metrics.get("recordCount")))
    key = ((body.get("tags") or {}).get(BATCH_KEY_TAG) or [None])[0]
    completed = body.get("completed") or (body.get("updated") if status != "loading" else None)
    return Batch(id=batch_id, dataset_id=dataset_id, status=status, created_ms=int(body.get("created") or 0),
                 completed_ms=int(completed) if completed else None,
                 record_count=int(records) if records is not None else None, error=error, idempotency_key=key)


def validate_files(spec: DatasetSpec, files: Sequence[Path]) -> None:
    """Every file fits the dataset (one file in memory at a time); identities unique across the files
    where the dataset wants one record per identity in a batch."""
    identities = []
    for path in files:
        table = conform(_read_parquet(path), spec, f"file {path}")
        if spec.unique_identity and len(files) > 1:
            identities.append(identity_hashes(pl.from_arrow(table.column(spec.identity))))
        del table
    repeated = repeated_identities(identities)
    if repeated:
        raise BatchValidationError(f"batch files {[str(p) for p in files]}: duplicate {spec.identity!r} values "
                                   f"across the files ({repeated} repeated)")


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise BatchValidationError(f"file {path}: not a readable parquet file ({error})") from error


def _folders(keys: list[str], parent: str) -> set[str]:
    depth = parent.rstrip("/").count("/") + 1
    return {key.split("/")[depth] for key in keys if key.count("/") > depth}


def _to_arrow(description, rows: list[tuple]) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in description]
    arrays = []
    for column, values in zip(description, columns, strict=True):
        arrow_type = _PG_ARROW.get(column.type_code)
        values = [float(v) if isinstance(v, Decimal) else v for v in values]
        arrays.append(pa.array(values, type=arrow_type) if arrow_type is not None or values
                      else pa.array(values, type=pa.string()))
    return pa.table(arrays, names=[column.name for column in description])
