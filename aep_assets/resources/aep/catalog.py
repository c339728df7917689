"""Datasets, their XDM schemas and their batches: the Schema Registry, Catalog and Batch Ingestion.

A dataset is created with its schema (tenant field groups, the ECID primary identity descriptor) and,
for profile datasets, the Profile tags; each gets the flat Query Service view the project's SQL reads
(see `xdm`). Batches are uploaded file by file in the XDM layout (small-file PUT or the large-file API),
tagged with their idempotency key so that content already landed is never sent twice.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow.parquet as pq

from aep_assets.lib import guardrails, names
from aep_assets.lib.datasets import BatchValidationError, DatasetSpec, check_unique_across_files, identity_hashes
from aep_assets.resources.aep import xdm
from aep_assets.resources.aep.http import error_text, json_headers, log, offset_next, paged
from aep_assets.resources.aep.sandbox import AEPConfigError, Sandbox
from aep_assets.resources.platform import Batch, BatchIngestionError, Dataset, conformed_file

if TYPE_CHECKING:
    from aep_assets.resources.aep.query_service import QueryService

BATCH_KEY_TAG = "aepAssetsIdempotencyKey"
SUCCESS = {"success", "active"}
FAILED = {"failed", "failure", "aborted", "abandoned"}
PROFILE_TAGS = {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}


class Catalog:
    """Datasets (with their schemas) and batches of one sandbox."""

    def __init__(self, sandbox: Sandbox, query: QueryService):
        self.sandbox, self.api, self.query = sandbox, sandbox.api, query

    # --- datasets -----------------------------------------------------------------------------
    def ensure_dataset(self, spec: DatasetSpec) -> Dataset:
        """The dataset with its schema, created once, Profile-enabled if the spec says so, and its flat view."""
        if spec.name not in xdm.XDM_PATHS:
            raise AEPConfigError(f"dataset {spec.name!r} has no XDM layout in aep.xdm.XDM_PATHS")
        catalog, tenant = self.api.catalog, self.sandbox.tenant()
        found = self.catalog_dataset(spec.name)
        if found is None:
            schema_id = self.ensure_schema(spec, tenant)
            found = self.sandbox.created(f"dataset {spec.name}", lambda: self.catalog_dataset(spec.name),
                                         lambda: self.create_dataset(spec, schema_id))
        dataset_id, body = found
        if spec.profile_enabled and not profile_enabled(body):
            catalog.connector.patchData(
                f"{catalog.endpoint}/dataSets/{dataset_id}",
                data=[{"op": "add", "path": f"/tags/{tag}", "value": value} for tag, value in PROFILE_TAGS.items()],
                headers={**catalog.header, "Content-Type": "application/json-patch+json"})
            body = catalog.getDataSet(dataset_id)[dataset_id]
        self.query.execute(xdm.flat_view_sql(spec.name, query_table(body), tenant, self.sandbox.dialect))
        return dataset_of(dataset_id, body)

    def create_dataset(self, spec: DatasetSpec, schema_id: str) -> tuple[str, dict]:
        """A new parquet dataset on the schema (Profile-tagged if the spec says so): (id, Catalog body)."""
        catalog = self.api.catalog
        body = {"name": spec.name, "description": spec.description,
                "schemaRef": {"id": schema_id, "contentType": "application/vnd.adobe.xed-full+json;version=1"},
                "fileDescription": {"format": "parquet"}}
        if spec.profile_enabled:
            body["tags"] = dict(PROFILE_TAGS)
        created = catalog.connector.postData(f"{catalog.endpoint}/dataSets", data=body,
                                             headers=json_headers(catalog.header))
        dataset_id = created[0].split("/")[-1]
        log.info("created dataset %s (%s)", spec.name, dataset_id)
        return dataset_id, catalog.getDataSet(dataset_id)[dataset_id]

    def find_dataset(self, name: str) -> Dataset | None:
        """The dataset with this name in the Catalog, or None."""
        found = self.catalog_dataset(name)
        return dataset_of(*found) if found else None

    def catalog_dataset(self, name: str) -> tuple[str, dict] | None:
        """(id, Catalog body) of the oldest dataset with this name, or None."""
        catalog = self.api.catalog
        listing = catalog.connector.getData(f"{catalog.endpoint}/dataSets", params={
            "name": name, "properties": "name,tags,schemaRef,created", "limit": 100})
        matches = sorted(((i, b) for i, b in listing.items() if isinstance(b, dict) and b.get("name") == name),
                         key=lambda item: item[1].get("created", 0))
        if len(matches) > 1:
            log.warning("%d datasets are named %s; using the oldest (%s)", len(matches), name, matches[0][0])
        return matches[0] if matches else None

    # --- schemas ------------------------------------------------------------------------------
    def ensure_schema(self, spec: DatasetSpec, tenant: str) -> str:
        """The id of the dataset's schema, created with its tenant field groups and identity if missing."""
        registry, plan = self.api.schema, xdm.schemas(self.sandbox.config.name_prefix)[spec.name]
        group_ids = [self.ensure_field_group(key, tenant)["$id"] for key in plan.field_groups]
        schema = self.by_title("schemas", plan.title)
        if schema is None:
            body = xdm.schema_body(plan, group_ids)
            schema = self.sandbox.created(
                f"schema {plan.title!r}", lambda: self.by_title("schemas", plan.title),
                lambda: registry.connector.postData(f"{registry.endpoint}/tenant/schemas", data=body,
                                                    headers=json_headers(registry.header)))
            log.info("created schema %r", plan.title)
        self.ensure_identity(schema["$id"], tenant)
        if spec.profile_enabled and "union" not in schema.get("meta:immutableTags", []):
            registry.connector.patchData(
                f"{registry.endpoint}/tenant/schemas/{schema['meta:altId']}", headers=json_headers(registry.header),
                data=[{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}])
        return schema["$id"]

    def ensure_field_group(self, key: str, tenant: str) -> dict:
        """The tenant field group `key` of `xdm.field_groups`, created once (looked up by title)."""
        registry, group = self.api.schema, xdm.field_groups(self.sandbox.config.name_prefix)[key]
        found = self.by_title("fieldgroups", group.title)
        if found is not None:
            return found
        body = xdm.field_group_body(group, tenant)
        found = self.sandbox.created(f"field group {group.title!r}", lambda: self.by_title("fieldgroups", group.title),
                                     lambda: registry.connector.postData(f"{registry.endpoint}/tenant/fieldgroups",
                                                                         data=body,
                                                                         headers=json_headers(registry.header)))
        log.info("created field group %r", group.title)
        return found

    def by_title(self, kind: str, title: str) -> dict | None:
        """A tenant schema or field group by exact title (all pages), or None. The registry pages by
        `orderby`: `start` is the last title of the previous page (it refuses `start` without `orderby`)."""
        registry = self.api.schema
        headers = {**registry.header, "Accept": "application/vnd.adobe.xed+json"}

        def fetch(start: str | None, size: int) -> tuple[list[dict], str | None]:
            params = {"property": f"title=={title}", "orderby": "title", **({} if start is None else {"start": start})}
            page = registry.connector.getData(f"{registry.endpoint}/tenant/{kind}", params=params,
                                              headers=dict(headers))
            results = page.get("results", [])
            more = (page.get("_page") or {}).get("next") and results
            return results, results[-1]["title"] if more else None
        return next((item for item in paged(fetch, first=None) if item.get("title") == title), None)

    def ensure_identity(self, schema_id: str, tenant: str) -> None:
        """The schema's primary identity descriptor (ECID on the tenant userid), created once."""
        registry, path = self.api.schema, xdm.identity_path(tenant)
        if self.identity_descriptor(schema_id, path) is not None:
            return
        self.sandbox.created(f"identity descriptor of {schema_id}", lambda: self.identity_descriptor(schema_id, path),
                             lambda: registry.connector.postData(
                                 f"{registry.endpoint}/tenant/descriptors", headers=json_headers(registry.header),
                                 data={"@type": "xdm:descriptorIdentity", "xdm:sourceSchema": schema_id,
                                       "xdm:sourceVersion": 1, "xdm:sourceProperty": path, "xdm:namespace": "ECID",
                                       "xdm:property": "xdm:code", "xdm:isPrimary": True}))

    def identity_descriptor(self, schema_id: str, path: str) -> dict | None:
        """The schema's identity descriptor on this field path, or None."""
        registry = self.api.schema
        listing = registry.connector.getData(
            f"{registry.endpoint}/tenant/descriptors", params={"property": f"xdm:sourceSchema=={schema_id}"},
            headers={**registry.header, "Accept": "application/vnd.adobe.xdm+json"})
        return next((d for d in listing.get("xdm:descriptorIdentity", [])
                     if d.get("xdm:sourceSchema") == schema_id and d.get("xdm:sourceProperty") == path), None)

    # --- batches ------------------------------------------------------------------------------
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
        done = self.batch_with_key(dataset, idempotency_key)
        if done is not None:
            return done
        batch_id = self.create_batch(dataset, idempotency_key)
        self.upload_files(batch_id, dataset, spec, files)
        log.info("batch %s of %s completed (%d files), waiting for the platform", batch_id, dataset.name, len(files))
        try:
            body = self.sandbox.wait(f"batch {batch_id}", lambda: self.terminal_batch(batch_id))
        except TimeoutError as error:
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name}: {error}") from None
        batch = batch_of(batch_id, body)
        if batch.status != "success":
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name} failed: {batch.error}", batch)
        return batch

    def create_batch(self, dataset: Dataset, key: str) -> str:
        """A new batch tagged with the idempotency key (or the one a lost answer had created)."""
        ingestion = self.api.ingestion
        return self.sandbox.created(f"batch {key} of {dataset.name}", lambda: self.loading_batch_with_key(dataset, key),
                                    lambda: ingestion.connector.postData(
                                        f"{ingestion.endpoint}/batches", headers=json_headers(ingestion.header),
                                        data={"datasetId": dataset.id, "inputFormat": {"format": "parquet"},
                                              "tags": {BATCH_KEY_TAG: [key]}}))["id"]

    def upload_files(self, batch_id: str, dataset: Dataset, spec: DatasetSpec, files: Sequence[Path]) -> None:
        """Every file uploaded, then the batch completed; on any failure the batch is aborted."""
        ingestion = self.api.ingestion
        try:
            for index, path in enumerate(files):
                self.upload_nested(batch_id, dataset.id, f"part-{index:05d}.parquet", path, spec)
            ingestion.uploadSmallFileFinish(batchId=batch_id, action="COMPLETE")
        except Exception as error:
            try:
                ingestion.uploadSmallFileFinish(batchId=batch_id, action="ABORT")
            except Exception as abort_error:  # the upload error is the one to report
                log.warning("could not abort batch %s: %s", batch_id, self.sandbox.redact(abort_error))
            raise BatchIngestionError(f"batch {batch_id} of dataset {dataset.name} failed during upload: "
                                      f"{self.sandbox.redact(error)}") from None

    def upload_nested(self, batch_id: str, dataset_id: str, name: str, path: Path, spec: DatasetSpec) -> None:
        """One file in the XDM layout: a small-file PUT, or the large-file API in chunks."""
        api, config = self.api, self.sandbox.config
        url = f"{api.ingestion.endpoint}/batches/{batch_id}/datasets/{dataset_id}/files/{name}"
        binary = {"Content-Type": "application/octet-stream"}
        with tempfile.TemporaryDirectory(prefix="aep-upload-") as tmp:
            nested = Path(tmp) / "nested.parquet"
            pq.write_table(xdm.nest(conformed_file(path, spec), spec, self.sandbox.tenant()), nested,
                           compression="snappy")
            size = nested.stat().st_size
            with open(nested, "rb") as handle:
                if size <= config.large_file_bytes:
                    api.session.put(url, data=handle.read(), headers=binary)
                    return
                api.session.post(url, params={"action": "INITIALIZE"}, headers=binary)
                for start, end in guardrails.chunks(size, config.chunk_bytes):
                    handle.seek(start)
                    api.session.patch(url, data=handle.read(end - start + 1),
                                      headers={**binary, "Content-Range": f"bytes {start}-{end}/{size}"})
                api.session.post(url, params={"action": "COMPLETE"}, headers=binary)

    def terminal_batch(self, batch_id: str) -> dict | None:
        """The batch's Catalog body once it succeeded or failed, else None."""
        body = self.api.catalog.getBatch(batch_id).get(batch_id, {})
        return body if str(body.get("status", "")).lower() in SUCCESS | FAILED else None

    def batch_with_key(self, dataset: Dataset, key: str) -> Batch | None:
        """The successful batch that already holds the content with this idempotency key, or None."""
        found = self.tagged_batch(dataset, key, "success")
        if found is None:
            return None
        log.info("batch %s already holds this content (key %s)", found[0], key)
        return batch_of(*found)

    def loading_batch_with_key(self, dataset: Dataset, key: str) -> dict | None:
        """A batch created for this content and not yet completed (a create whose answer was lost)."""
        found = self.tagged_batch(dataset, key, "loading")
        return None if found is None else {"id": found[0], **found[1]}

    def tagged_batch(self, dataset: Dataset, key: str, status: str) -> tuple[str, dict] | None:
        """(id, body) of a batch of the dataset in this status, tagged with this idempotency key."""
        catalog = self.api.catalog
        found = catalog.connector.getData(f"{catalog.endpoint}/batches", params={
            "dataSet": dataset.id, "status": status, "tags": f"{BATCH_KEY_TAG}:{key}", "limit": 1})
        return next(((batch_id, body) for batch_id, body in found.items()
                     if isinstance(body, dict) and key in (body.get("tags") or {}).get(BATCH_KEY_TAG, [])), None)

    def completed_batches(self, dataset: Dataset, *, completed_after_ms: int = 0, limit: int | None = None
                          ) -> list[Batch]:
        """Batches that succeeded or failed at or after `completed_after_ms`, in completion order."""
        found = self.list_batches(dataset, {"status": "success,failed", "property": f"completed>={completed_after_ms}",
                                            "orderBy": "asc:completed"}, limit)
        batches = [b for b in found if b.completed_ms is not None and b.completed_ms >= completed_after_ms]
        return sorted(batches, key=lambda b: (b.completed_ms, b.id))[:limit]

    def batches(self, dataset: Dataset, status: str) -> list[Batch]:
        """Every batch of the dataset in this status."""
        return self.list_batches(dataset, {"status": status})

    def list_batches(self, dataset: Dataset, filters: dict, limit: int | None = None) -> list[Batch]:
        """The dataset's batches matching the Catalog query `filters`, all pages (or `limit` of them)."""
        catalog = self.api.catalog

        def fetch(start: int, size: int) -> tuple[list[Batch], int | None]:
            page = catalog.connector.getData(f"{catalog.endpoint}/batches", params={
                "dataSet": dataset.id, **filters, "start": start, "limit": size})
            items = [batch_of(i, b) for i, b in page.items() if isinstance(b, dict)]
            return items, offset_next(start, items, size)
        return list(paged(fetch, limit=limit))

    def revert(self, batch_ids: Sequence[str]) -> None:
        """Delete these batches: their rows leave the dataset."""
        for batch_id in batch_ids:
            self.api.ingestion.deleteBatch(batchId=batch_id)
            log.info("reverted batch %s", batch_id)


def dataset_of(dataset_id: str, body: dict) -> Dataset:
    """A Catalog dataset as the platform interface returns it (ingested datasets are read through their view)."""
    table = query_table(body)
    if body["name"] in xdm.XDM_PATHS:
        table = xdm.flat_view_name(table)
    return Dataset(id=dataset_id, name=body["name"], table=table, profile_enabled=profile_enabled(body),
                   created_ms=int(body.get("created") or 0))


def batch_of(batch_id: str, body: dict) -> Batch:
    """A Catalog batch as the platform interface returns it (statuses folded into loading/success/failed)."""
    raw = str(body.get("status", "")).lower()
    status = "success" if raw in SUCCESS else "failed" if raw in FAILED else "loading"
    error = error_text(body.get("errors"), between=": ") or (f"status {raw}" if status == "failed" else None)
    dataset_id = next((o.get("id") for o in body.get("relatedObjects") or [] if o.get("type") == "dataSet"), "")
    metrics = body.get("metrics") or {}
    records = body.get("recordCount", metrics.get("outputRecordCount", metrics.get("recordCount")))
    key = ((body.get("tags") or {}).get(BATCH_KEY_TAG) or [None])[0]
    completed = body.get("completed") or (body.get("updated") if status != "loading" else None)
    return Batch(id=batch_id, dataset_id=dataset_id, status=status, created_ms=int(body.get("created") or 0),
                 completed_ms=int(completed) if completed else None,
                 record_count=int(records) if records is not None else None, error=error, idempotency_key=key)


def profile_enabled(body: dict) -> bool:
    """Whether the Catalog dataset is tagged for Real-Time Customer Profile."""
    return any(str(v).replace(" ", "") == "enabled:true" for v in (body.get("tags") or {}).get("unifiedProfile", []))


def query_table(body: dict) -> str:
    """The dataset's Query Service table name (Catalog tag adobe/pqs/table)."""
    tagged = (body.get("tags") or {}).get("adobe/pqs/table") or []
    table = tagged[0] if tagged else re.sub(r"[^a-z0-9_]+", "_", str(body.get("name", "")).lower())
    return names.identifier(table, "Query Service table name")


def validate_files(spec: DatasetSpec, files: Sequence[Path]) -> None:
    """Every file fits the dataset (one file in memory at a time); identities unique across the files
    where the dataset wants one record per identity in a batch."""
    identities = []
    for path in files:
        table = conformed_file(path, spec)
        if spec.unique_identity and len(files) > 1:
            identities.append(identity_hashes(pl.from_arrow(table.column(spec.identity))))
        del table
    check_unique_across_files(spec, identities, files)
