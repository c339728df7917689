"""Storage on a local folder and on S3 through moto's real HTTP server: complete writes only."""


import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aep_assets.resources.storage import LocalStorage, StorageError


@pytest.fixture(params=["local", "s3"])
def any_storage(request, tmp_path, s3_bucket):
    if request.param == "local":
        return LocalStorage(root=str(tmp_path / "bucket"))
    return s3_bucket(f"cmle-test-{tmp_path.name[-8:].lower().replace('_', '-')}")


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


def test_every_part_but_the_last_holds_exactly_rows_per_file(any_storage):
    batches = [b for size in (700, 0, 700, 1700, 30) for b in table(size).to_batches()]
    manifest = any_storage.write_parquet_parts("cmle/egress/ds5/exportTime=20260101000000", iter(batches),
                                               schema=table(1).schema, rows_per_file=1000)
    with any_storage.downloaded(manifest) as paths:
        assert [pq.ParquetFile(p).metadata.num_rows for p in paths] == [1000, 1000, 1000, 130]
    assert manifest.rows == 3130


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


def test_the_same_content_again_keeps_the_earlier_write(any_storage):
    first = any_storage.write_table("cmle/ingress/s/profileBatch=b/exportTime=20260101000000", table(50))
    again = any_storage.write_table("cmle/ingress/s/profileBatch=b/exportTime=20260102000000", table(50))
    assert again == first and first.digest
    assert [m.prefix for m in any_storage.complete_writes("cmle/ingress/s/profileBatch=b")] == [first.prefix]
    assert any_storage.list_keys("cmle/ingress/s/profileBatch=b/exportTime=20260102000000") == []
    changed = any_storage.write_table("cmle/ingress/s/profileBatch=b/exportTime=20260103000000", table(51))
    assert changed.prefix.endswith("20260103000000") and changed.digest != first.digest


def test_complete_writes_beyond_the_kept_number_are_pruned(any_storage):
    parent = "cmle/egress/ds3"
    storage = any_storage.model_copy(update={"keep_complete_writes": 2})  # as AEP_ASSETS_KEEP_WRITES=2 sets it
    for day in range(1, 5):
        storage.write_table(f"{parent}/exportTime=2026010{day}000000", table(day))
    assert [m.rows for m in storage.complete_writes(parent)] == [3, 4]
    storage.write_table(f"{parent}/exportTime=20260105000000", table(5), keep=1)  # activation keeps one
    assert [m.rows for m in storage.complete_writes(parent)] == [5]


def test_a_folder_left_by_a_killed_writer_is_removed_by_the_next_write(any_storage, tmp_path):
    import json
    import socket
    import subprocess

    parent = "cmle/egress/ds4"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    for folder, writer in (("exportTime=20260101000000", {"host": socket.gethostname(), "pid": dead.pid}),
                           ("exportTime=20260101000001", None),  # no writer record at all
                           ("exportTime=20260101000002", {"host": socket.gethostname(), "pid": os.getpid()})):
        (tmp_path / "part").write_bytes(b"partial")
        any_storage.put_file(f"{parent}/{folder}/part-00000.gz.parquet", tmp_path / "part")
        if writer:
            any_storage.put_bytes(f"{parent}/{folder}/_writing.json",
                                  json.dumps({**writer, "started": "2026-01-01T00:00:00+00:00"}).encode())
    manifest = any_storage.write_table(f"{parent}/exportTime=20260102000000", table(3))
    folders = sorted({key.split("/")[3] for key in any_storage.list_keys(parent)})
    # the live writer's folder stays (it is still writing); the dead ones are gone; no marker is left
    assert folders == ["exportTime=20260101000002", "exportTime=20260102000000"]
    assert "_writing.json" not in " ".join(any_storage.list_keys(manifest.prefix))
