"""Faults: processes killed mid-step, the server killed under a run, bad files. Nothing half-written
may become visible, and the next run must complete."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aep_assets.lib.datasets import EXPERIENCE_EVENTS
from aep_assets.resources.platform import BatchIngestionError
from aep_assets.resources.storage import StorageError
from aep_assets_tests.factories import NOW, events_file


def run_until(script: str, ready, timeout=60):
    """Start a Python child, wait until `ready()` is true, then kill -9 it. A killed process cannot remove its
    temporary files: the child's go to a folder of its own, removed here."""
    scratch = tempfile.mkdtemp(prefix="aep-killed-child-")
    try:
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, "TMPDIR": scratch})
        deadline = time.monotonic() + timeout
        while not ready():
            if child.poll() is not None:
                raise AssertionError(f"child ended before the kill: {child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                child.kill()
                raise AssertionError("child never reached the point to kill it")
            time.sleep(0.02)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_kill_during_batch_ingestion_leaves_no_partial_batch(platform, tmp_path):
    dataset = platform.ensure_dataset(EXPERIENCE_EVENTS)
    big = events_file(tmp_path / "big.parquet", 3_000_000)
    def loading():
        return platform.query("SELECT COUNT(*) AS n FROM catalog.batches WHERE status = 'loading'")["n"][0].as_py() > 0

    run_until(f"""
        from pathlib import Path
        from aep_assets.lib.datasets import EXPERIENCE_EVENTS
        from aep_assets.resources.local_platform import LocalPlatform
        platform = LocalPlatform(home={platform.home!r}, database={platform.database!r})
        dataset = platform.ensure_dataset(EXPERIENCE_EVENTS)
        platform.ingest_batch(dataset, EXPERIENCE_EVENTS, [Path({str(big)!r})], idempotency_key="big")
    """, loading)
    # No wait for the server to notice the dead client: its rows are invisible either way, and the
    # retry below blocks on the dead client's lock until the server has rolled its transaction back.
    assert platform.query('SELECT COUNT(*) AS n FROM "cmle_experience_events"')["n"][0].as_py() == 0
    assert [b.status for b in platform.batches(dataset)] == ["loading"]  # never success
    assert platform.completed_batches(dataset) == []  # so the sensor never sees it
    batch = platform.ingest_batch(dataset, EXPERIENCE_EVENTS, [big], idempotency_key="big")
    assert batch.status == "success" and batch.record_count == 3_000_000
    statuses = sorted(b.status for b in platform.batches(dataset))
    assert statuses == ["failed", "success"]  # the abandoned one is marked failed, with why
    assert "abandoned" in next(b.error for b in platform.batches(dataset) if b.status == "failed")
    assert platform.query('SELECT COUNT(*) AS n FROM "cmle_experience_events"')["n"][0].as_py() == 3_000_000


def test_kill_during_export_leaves_no_visible_export(storage, tmp_path):
    parent = "cmle/egress/ds/exportTime=20260101000000"
    first_part = storage.root_path / parent / "part-00000.gz.parquet"
    run_until(f"""
        import time
        import pyarrow as pa
        from aep_assets.resources.storage import LocalStorage
        storage = LocalStorage(root={str(storage.root_path)!r})
        schema = pa.schema([("x", pa.int64())])
        def slow():
            for i in range(1000):
                yield pa.record_batch([pa.array(range(1000))], schema=schema)
                time.sleep(0.01)
        storage.write_parquet_parts({parent!r}, slow(), schema=schema, rows_per_file=5000)
    """, first_part.exists)
    with pytest.raises(StorageError, match="no complete export"):
        storage.latest_complete("cmle/egress/ds")
    manifest = storage.write_table(parent, pa.table({"x": list(range(10))}))
    assert storage.latest_complete("cmle/egress/ds") == manifest
    assert len(storage.list_keys(parent)) == 2  # the crashed attempt's parts are gone


def test_server_killed_under_a_busy_query_is_started_again(platform):
    """A backend busy in a query outlives its killed postmaster and blocks a restart until it ends;
    the next call ends it, restarts the server (crash recovery) and answers, without waiting for it."""
    failures = []

    def busy():
        try:
            with platform.connect() as conn:
                conn.execute("SELECT count(*) FROM generate_series(1, 10000000000)")
        except Exception as error:  # the kill ends it
            failures.append(error)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    deadline = time.monotonic() + 60
    while not platform.query("SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%generate_series%' "
                             "AND state = 'active' AND pid <> pg_backend_pid()")["n"][0].as_py():
        assert time.monotonic() < deadline, "the busy query never started"
        time.sleep(0.02)
    pid = int((platform.server.data_dir / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    assert platform.query("SELECT 1 AS one")["one"][0].as_py() == 1
    worker.join(timeout=60)
    assert not worker.is_alive() and failures, "the orphaned query was not ended"
    new_pid = int((platform.server.data_dir / "postmaster.pid").read_text().split()[0])
    assert new_pid != pid


@pytest.mark.parametrize("problem,make,message", [
    ("unknown event type", lambda p: events_file(p, 5, event_type=pa.array(["web.teleport"] * 5)),
     r"unknown event_type value\(s\) \['web.teleport'\]"),
    ("non-utf8 text", lambda p: events_file(p, 3, page_name=pa.array([b"\xff\xfe", b"ok", b"x"], pa.binary())),
     "column 'page_name' has type binary"),
    ("future timestamps", lambda p: events_file(p, 3, timestamp=pa.array([NOW + timedelta(days=30)] * 3,
                                                                           pa.timestamp("us", "UTC"))), "future"),
    ("missing column", lambda p: pq.write_table(pa.table({"userid": ["1"]}), p) or p, "missing column"),
])
def test_bad_event_batches_fail_alone(platform, tmp_path, problem, make, message):
    dataset = platform.ensure_dataset(EXPERIENCE_EVENTS)
    good = platform.ingest_batch(dataset, EXPERIENCE_EVENTS, [events_file(tmp_path / "good.parquet", 10)],
                                 idempotency_key="good")
    path = make(tmp_path / f"{problem.replace(' ', '_')}.parquet")
    with pytest.raises(BatchIngestionError, match=message) as failure:
        platform.ingest_batch(dataset, EXPERIENCE_EVENTS, [path], idempotency_key=problem)
    assert path.name in str(failure.value) and failure.value.batch.id in str(failure.value)
    assert platform.query('SELECT COUNT(*) AS n FROM "cmle_experience_events"')["n"][0].as_py() == 10
    assert [b.id for b in platform.completed_batches(dataset) if b.status == "success"] == [good.id]
