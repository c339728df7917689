"""Dataset export: a Flow Service dataflow per dataset to the project's S3 bucket, run ad hoc.

The flow, its S3 base connection, target and source connections are created once each (looked up by
name); each export is an ad-hoc run of the flow through the destinations API (retried while AEP says the
flow is "not ready"), polled until it ends, then described by our manifest beside AEP's files.
"""

from __future__ import annotations

import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq

from aep_assets.resources.aep import http
from aep_assets.resources.aep.http import AEPError, error_text, json_headers, log
from aep_assets.resources.aep.sandbox import AEPConfigError, Sandbox
from aep_assets.resources.platform import Dataset, export_parent
from aep_assets.resources.storage import MANIFEST, Manifest, S3Storage, Storage, StorageError

# Flow Service ids from Adobe's "Export datasets by using the Flow Service API" tutorial.
S3_CONNECTION_SPEC = "4fce964d-3f37-408f-9778-e597338a21ee"
S3_DATASET_FLOW_SPEC = "269ba276-16fc-47db-92b0-c1049a3c131f"
DATA_LAKE_SOURCE_SPEC = "23598e46-f560-407b-88d5-ea6207e49db0"
NOT_READY = "not ready for dataset export"


class DatasetExport:
    """Exports of the sandbox's datasets to S3 through dataset-export dataflows."""

    def __init__(self, sandbox: Sandbox):
        self.sandbox, self.api, self.config = sandbox, sandbox.api, sandbox.config

    def export_dataset(self, dataset: Dataset, storage: Storage) -> Manifest:
        """Ad-hoc run of the dataset's export dataflow to the S3 storage, then our manifest of what it wrote.

        AEP names the folder itself (`exportTime=YYYYMMDDHHMM`), and the export has no row order.
        """
        if not isinstance(storage, S3Storage):
            raise AEPConfigError("AEP dataset export writes to S3: set AEP_ASSETS_S3_BUCKET (and "
                                 "AEP_ASSETS_S3_PREFIX) so storage is the bucket the dataflow writes to")
        if not (self.config.export_s3_access_key_id and self.config.export_s3_secret_access_key):
            raise AEPConfigError("AEP dataset export needs AEP_EXPORT_S3_ACCESS_KEY_ID and "
                                 "AEP_EXPORT_S3_SECRET_ACCESS_KEY (the key AEP writes to the bucket with)")
        parent = export_parent(dataset)
        flow_id = self.export_flow(dataset, storage)
        before = folders(storage.list_keys(parent), parent)
        run_id = self.adhoc_export(flow_id, dataset)
        self.sandbox.wait(f"dataset export run {run_id}", lambda: self.finished_run(run_id))
        keys = storage.list_keys(parent)
        complete = {key.split("/")[-2] for key in keys if key.endswith(f"/{MANIFEST}")}
        new = sorted(f for f in folders(keys, parent) - before if f not in complete)
        if not new:
            raise StorageError(f"dataset export run {run_id} succeeded but wrote no new folder under "
                               f"{storage.uri(parent)}")
        prefix = f"{parent}/{new[-1]}"
        files = [k for k in keys if k.startswith(prefix + "/") and k.endswith(".parquet")]
        if not files:
            raise StorageError(f"dataset export run {run_id}: no parquet files under {storage.uri(prefix)}")
        manifest = describe_export(storage, prefix, files)
        storage.put_bytes(f"{prefix}/{MANIFEST}", manifest.to_json())
        log.info("dataset %s exported by run %s: %d files, %d rows", dataset.name, run_id, len(files),
                 manifest.rows)
        return manifest

    def export_flow(self, dataset: Dataset, storage: S3Storage) -> str:
        """The dataset's export dataflow and its connections, each created once (looked up by name)."""
        prefix = self.config.name_prefix
        flow_name = f"{prefix} export {dataset.name} {dataset.id}"
        found = self.flow_items("flows", flow_name)
        if found:
            return found[0]["id"]
        spec = {"id": S3_CONNECTION_SPEC, "version": "1.0"}
        base_id = self.flow_item("connections", f"{prefix} S3 {storage.bucket}", {
            "connectionSpec": spec, "auth": {"specName": "Access Key", "params": {
                "s3AccessKey": self.config.export_s3_access_key_id,
                "s3SecretKey": self.config.export_s3_secret_access_key}}})
        path = "/".join(p for p in (storage.prefix.strip("/"), "cmle/egress") if p)
        target_id = self.flow_item("targetConnections", f"{flow_name} target", {
            "baseConnectionId": base_id, "connectionSpec": spec,
            "params": {"bucketName": storage.bucket, "path": path, "compression": "GZIP",
                       "datasetFileType": "PARQUET"}})
        source_id = self.flow_item("sourceConnections", f"{flow_name} source", {
            "connectionSpec": {"id": DATA_LAKE_SOURCE_SPEC, "version": "1.0"},
            "params": {"datasets": [{"dataSetId": dataset.id, "name": dataset.name}]}})
        flow_id = self.create_flow_item("flows", flow_name, {  # not found above
            "flowSpec": {"id": S3_DATASET_FLOW_SPEC}, "sourceConnectionIds": [source_id],
            "targetConnectionIds": [target_id], "transformations": [], "scheduleParams": export_schedule(time.time())})
        log.info("created export dataflow %s for %s", flow_id, dataset.name)
        return flow_id

    def flow_items(self, kind: str, name: str) -> list[dict]:
        """The Flow Service items of this kind (flows, connections, ...) with exactly this name."""
        flow = self.api.flow
        listing = flow.connector.getData(f"{flow.endpoint}/{kind}", params={"property": f"name=={name}"})
        return [item for item in listing.get("items", []) if item.get("name") == name]

    def flow_item(self, kind: str, name: str, body: dict) -> str:
        """The id of the Flow Service item of this kind and name, created if there is none."""
        found = self.flow_items(kind, name)
        return found[0]["id"] if found else self.create_flow_item(kind, name, body)

    def create_flow_item(self, kind: str, name: str, body: dict) -> str:
        """Create the Flow Service item (a retried POST that may have been applied is found by name)."""
        flow = self.api.flow
        created = self.sandbox.created(f"{kind} {name!r}", lambda: next(iter(self.flow_items(kind, name)), None),
                                       lambda: flow.connector.postData(f"{flow.endpoint}/{kind}",
                                                                       data={"name": name, **body},
                                                                       headers=json_headers(flow.header)))
        return created["id"]

    def adhoc_export(self, flow_id: str, dataset: Dataset) -> str:
        """Start an ad-hoc run of the flow for the dataset, waiting while AEP says the flow is not ready;
        returns the run id."""
        attempts = self.config.export_not_ready_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self.api.destinations.createAdHocDatasetExport({flow_id: [dataset.id]})
                status_url = response["destinations"][0]["datasets"][0]["statusURL"]
                return status_url.rstrip("/").rsplit("/", 1)[-1]
            except AEPError as error:
                if NOT_READY not in str(error).lower() or attempt == attempts:
                    raise
                log.info("dataflow %s not ready for an ad-hoc export yet (try %d), waiting %.0f s", flow_id,
                         attempt, self.config.export_not_ready_wait_seconds)
                http.pause(self.config.export_not_ready_wait_seconds)
        raise AssertionError("unreachable")

    def finished_run(self, run_id: str) -> dict | None:
        """The run once it succeeded, None while it runs; AEPError with Adobe's errors if it failed."""
        try:
            items = self.api.flow.getRun(run_id)
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
            errors = self.sandbox.redact(run_errors(run)) or "no error details"
            raise AEPError(f"dataset export run {run_id} {state}: {errors}")
        return run if state == "success" else None


def describe_export(storage: Storage, prefix: str, files: list[str]) -> Manifest:
    """Our manifest of the parquet files AEP wrote (rows, bytes, columns), read one file at a time."""
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
    return Manifest(prefix, files, rows, size, columns, created)


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


def folders(keys: list[str], parent: str) -> set[str]:
    """The names of the folders directly under `parent` among these storage keys."""
    depth = parent.rstrip("/").count("/") + 1
    return {key.split("/")[depth] for key in keys if key.count("/") > depth}
