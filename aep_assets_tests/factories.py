"""Small inputs the tests build: source files in the datasets' shapes, a free local port. Shared by every
test module (tests import this module, never each other)."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
