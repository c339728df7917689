"""AEP mode's dataset export against the fake platform (conftest's `fake`, `aep`, `make_aep`): a Flow
Service dataflow to the project's S3 bucket (moto's, through conftest's `s3_bucket`), run ad hoc until AEP
has written the files, which are then read back through a manifest; a failed run raises Adobe's errors."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from aep_assets.resources.aep.http import AEPError
from aep_assets.resources.aep.sandbox import AEPConfigError
from aep_assets.resources.platform import export_parent
from aep_assets.resources.storage import LocalStorage, S3Storage
from aep_assets.testing.fake_aep import S3_ACCESS_KEY, S3_SECRET_KEY
from aep_assets_tests.factories import dataset_export_writer


def test_export_runs_the_dataflow_and_writes_a_manifest(fake, sleeps, moto_endpoint, s3_bucket, make_aep):
    storage = s3_bucket("cmle-exports", prefix="team")
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY,
                   export_not_ready_wait_seconds=60)
    dataset = aep.create_table_as("cmle_training", "SELECT 1 AS userid, 0 AS label UNION ALL SELECT 2, 1")
    fake.on_export = dataset_export_writer(
        fake, moto_endpoint, lambda dataset_id: aep.query("SELECT userid, label FROM cmle_training ORDER BY userid"))
    fake.not_ready_answers = 2
    manifest = aep.export_dataset(dataset, storage, datetime.now(timezone.utc))
    assert storage.latest_complete(export_parent(dataset)) == manifest
    assert manifest.prefix == f"cmle/egress/{dataset.id}/exportTime=202501061230" and manifest.rows == 2
    assert storage.read_table(manifest)["label"].to_pylist() == [0, 1]
    base = json.loads(fake.calls("POST", "/flowservice/connections")[0]["body"])
    assert base["auth"] == {"specName": "Access Key", "params": {"s3AccessKey": S3_ACCESS_KEY,
                                                                 "s3SecretKey": S3_SECRET_KEY}}
    assert base["connectionSpec"]["id"] == "4fce964d-3f37-408f-9778-e597338a21ee"
    target = json.loads(fake.calls("POST", "/flowservice/targetConnections")[0]["body"])["params"]
    assert target == {"bucketName": "cmle-exports", "path": "team/cmle/egress", "compression": "GZIP",
                      "datasetFileType": "PARQUET"}
    source = json.loads(fake.calls("POST", "/flowservice/sourceConnections")[0]["body"])
    assert source["params"]["datasets"][0]["dataSetId"] == dataset.id
    flow = json.loads(fake.calls("POST", "/flowservice/flows")[0]["body"])
    assert flow["flowSpec"]["id"] == "269ba276-16fc-47db-92b0-c1049a3c131f"
    schedule = flow["scheduleParams"]  # what the destinations API accepts; an explicit end (else six months)
    assert (schedule["interval"], schedule["timeUnit"]) == (1, "day") and schedule["endTime"] > schedule["startTime"]
    assert len(fake.calls("POST", "/adhocrun")) == 3 and sleeps.count(60) == 2  # 'not ready' twice, then ran
    aep.services().export.export_flow(dataset, storage)
    assert len(fake.calls("POST", "/flowservice/flows")) == 1  # looked up by name the second time


def test_a_failed_export_run_raises_adobe_errors(fake, sleeps, s3_bucket, make_aep):
    """The run's outcome is metrics.statusSummary.status; a failed run also has completedAtUTC, which
    made it pass as a success when the outcome was read from a status field runs do not have."""
    storage = s3_bucket("cmle-failed", prefix="")
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY)
    dataset = aep.create_table_as("cmle_training", "SELECT 1 AS userid")
    fake.export_outcome = "failed"
    with pytest.raises(AEPError, match=r"run .* failed: CONNECTOR-2001-500 Access denied to the bucket path"):
        aep.export_dataset(dataset, storage, datetime.now(timezone.utc))


def test_export_needs_s3_storage_and_keys(aep, fake, tmp_path):
    dataset = aep.create_table_as("cmle_training", "SELECT 1 AS userid")
    with pytest.raises(AEPConfigError, match="AEP_ASSETS_S3_BUCKET"):
        aep.export_dataset(dataset, LocalStorage(root=str(tmp_path)), datetime.now(timezone.utc))
    with pytest.raises(AEPConfigError, match="AEP_EXPORT_S3_ACCESS_KEY_ID"):
        aep.export_dataset(dataset, S3Storage(bucket="b-x"), datetime.now(timezone.utc))
