"""Small inputs the tests build: source files in the datasets' shapes, the files AEP's dataset export
writes, a free local port. Shared by every test module (tests import this module, never each other)."""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq

from aep_assets.testing.fake_aep import FakeAEP

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def profiles_file(path: Path, ids, **overrides) -> Path:
    """A profile batch file of the given user numbers (38-digit userids), columns replaceable by name."""
    columns = {
        "userid": pa.array([f"{i:038d}" for i in ids]), "email": pa.array([f"u{i}@example.com" for i in ids]),
        "first_name": pa.array(["Ada"] * len(ids)), "last_name": pa.array(["Lovelace"] * len(ids)),
        "country": pa.array(["UK"] * len(ids)), "city": pa.array(["London"] * len(ids)),
        "created_at": pa.array([NOW - timedelta(days=1)] * len(ids), pa.timestamp("us", "UTC")),
    }
    columns.update(overrides)
    pq.write_table(pa.table(columns), path)
    return path


def events_file(path: Path, rows: int, **overrides) -> Path:
    """An experience event batch file of `rows` email sends over 1,000 users, columns replaceable by name."""
    columns = {
        "event_id": pa.array([f"e{i}" for i in range(rows)]),
        "userid": pa.array([f"{i % 1000:038d}" for i in range(rows)]),
        "event_type": pa.array(["directMarketing.emailSent"] * rows),
        "timestamp": pa.array([NOW - timedelta(days=1)] * rows, pa.timestamp("us", "UTC")),
        "produced_by": pa.array(["test"] * rows), "page_name": pa.nulls(rows, pa.string()),
        "page_url": pa.nulls(rows, pa.string()), "campaign_id": pa.nulls(rows, pa.string()),
    }
    columns.update(overrides)
    pq.write_table(pa.table(columns), path)
    return path


def scores_file(path: Path, propensities, as_of: datetime = NOW) -> Path:
    """A propensity score batch file: user `u{i}` has the i-th propensity, all scored as of `as_of`."""
    n = len(propensities)
    columns = {
        "userid": pa.array([f"u{i}" for i in range(n)]), "propensity": pa.array(propensities, pa.float64()),
        "decile": pa.array([1] * n, pa.int32()), "model_name": pa.array(["cmle_propensity_model"] * n),
        "model_version": pa.array(["3"] * n), "as_of": pa.array([as_of] * n, pa.timestamp("us", "UTC")),
        "profile_batch": pa.array(["b1"] * n),
    }
    pq.write_table(pa.table(columns), path)
    return path


def dataset_export_writer(fake: FakeAEP, endpoint_url: str,
                          rows_of: Callable[[str], pa.Table]) -> Callable[[dict, str], None]:
    """A `fake.on_export` that does what AEP's dataflow does: the dataset's rows (`rows_of(dataset_id)`) as
    gzip parquet in the flow's target bucket, under {path}/{dataset id}/exportTime=.../."""
    s3 = boto3.client("s3", endpoint_url=endpoint_url)

    def write_export(flow: dict, dataset_id: str) -> None:
        target = next(c for c in fake.connections.values() if c["id"] == flow["targetConnectionIds"][0])
        buffer = io.BytesIO()
        pq.write_table(rows_of(dataset_id), buffer, compression="gzip")
        key = f"{target['params']['path']}/{dataset_id}/exportTime=202501061230/part-00000-tid-42-c000.gz.parquet"
        s3.put_object(Bucket=target["params"]["bucketName"], Key=key, Body=buffer.getvalue())

    return write_export


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
