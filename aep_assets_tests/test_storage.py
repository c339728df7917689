"""Storage on a local folder and on S3 through moto's real HTTP server: complete writes only."""


import pyarrow as pa
import pytest

from aep_assets.resources.storage import LocalStorage, S3Storage, StorageError


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path, moto_endpoint, monkeypatch):
    if request.param == "local":
        return LocalStorage(root=str(tmp_path / "bucket"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = S3Storage(bucket=f"cmle-test-{tmp_path.name[-8:].lower().replace('_', '-')}", prefix="aep",
                        endpoint_url=moto_endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    storage._client().create_bucket(Bucket=storage.bucket)
    return storage


def table(rows: int) -> pa.Table:
    return pa.table({"userid": [f"{i:038d}" for i in range(rows)], "x": list(range(rows))})


def test_write_then_read_back_in_parts(any_storage):
    manifest = any_storage.write_table("cmle/egress/ds1/exportTime=20260101000000", table(2500),
                                       rows_per_file=1000)
    assert manifest.rows == 2500 and len(manifest.files) == 3
    assert all(f.endswith(".gz.parquet") for f in manifest.files)
    latest = any_storage.latest_complete("cmle/egress/ds1")
    assert latest == manifest
    assert any_storage.read_table(latest).num_rows == 2500
    frame = any_storage.read_frame(latest, columns=["userid"])
    assert frame.columns == ["userid"] and frame["userid"].to_list() == table(2500)["userid"].to_pylist()


def test_readers_skip_exports_without_manifest(any_storage, tmp_path):
    complete = any_storage.write_table("cmle/egress/ds2/exportTime=20260101000000", table(10))
    # A newer export that crashed before its manifest: parts present, no _manifest.json.
    (tmp_path / "part").write_bytes(b"partial")
    any_storage.put_file("cmle/egress/ds2/exportTime=20260102000000/part-00000.gz.parquet", tmp_path / "part")
    assert any_storage.latest_complete("cmle/egress/ds2") == complete


def test_no_complete_export_is_a_clear_error(any_storage):
    with pytest.raises(StorageError, match="no complete export"):
        any_storage.latest_complete("cmle/egress/missing")


def test_rewriting_a_prefix_replaces_it(any_storage):
    any_storage.write_table("cmle/activation/a/exportTime=1", table(30), rows_per_file=10)
    second = any_storage.write_table("cmle/activation/a/exportTime=1", table(5), rows_per_file=10)
    assert len(any_storage.list_keys("cmle/activation/a/exportTime=1")) == 2  # one part + manifest
    assert any_storage.read_table(second).num_rows == 5


def test_local_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(StorageError, match="leaves the storage root"):
        LocalStorage(root=str(tmp_path)).put_bytes("../outside", b"x")
