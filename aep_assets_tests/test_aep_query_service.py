"""AEP mode's Query Service against the fake platform, whose Query Service is the embedded PostgreSQL
(conftest's `fake`, `aep`, `make_aep`): typed Arrow results over one TLS connection renewed with fresh
credentials, CTAS and INSERT through the asynchronous query API, Adobe's query errors, replaced slices."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import psycopg
import pyarrow as pa
import pytest

from aep_assets.resources.aep.http import AEPError
from aep_assets.testing.fake_aep import SANDBOX


def test_query_returns_arrow_with_types(aep, fake):
    table = aep.query("SELECT 1::bigint AS n, 2.5::float8 AS x, 'a'::text AS s, 3.25::numeric AS d, "
                      "TIMESTAMPTZ '2025-01-06 00:00:00+00' AS t, NULL::text AS missing")
    assert table.schema.types[:5] == [pa.int64(), pa.float64(), pa.string(), pa.float64(),
                                      pa.timestamp("us", tz="UTC")]
    assert table.to_pylist()[0]["t"] == datetime(2025, 1, 6, tzinfo=timezone.utc)
    assert aep.query("SELECT 1 AS n WHERE FALSE").num_rows == 0
    assert len(fake.calls("GET", "/connection_parameters")) == 1  # one connection, reused


def test_query_service_connection_requires_tls(fake, sleeps, make_aep):
    strict = make_aep(query_sslmode="require")  # the embedded server has no TLS: the connection must fail
    with pytest.raises(AEPError, match="(?i)ssl"):
        strict.query("SELECT 1")
    assert len(fake.calls("GET", "/connection_parameters")) == 2  # retried once with fresh credentials


def test_reconnects_with_fresh_credentials_when_the_session_ends(aep, fake):
    assert aep.query("SELECT 1 AS n")["n"][0].as_py() == 1
    with psycopg.connect(fake.conninfo, autocommit=True) as admin:  # the token expired: server drops us
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert aep.query("SELECT 2 AS n")["n"][0].as_py() == 2
    assert len(fake.calls("GET", "/connection_parameters")) == 2
    assert fake.qs_tokens[0] != fake.qs_tokens[1]


def test_ctas_goes_through_the_async_api_and_replaces_keeping_the_dataset(aep, fake):
    first = aep.create_table_as("cmle_training", "SELECT 1 AS userid, 0 AS label UNION ALL SELECT 2, 1")
    post = json.loads(fake.calls("POST", "/query/queries")[0]["body"])
    assert post["dbName"] == f"{SANDBOX}:all" and post["sql"].startswith("CREATE TABLE cmle_training AS (SELECT")
    assert len(fake.calls("GET", "/query/queries/")) == 2  # IN_PROGRESS then SUCCESS
    second = aep.create_table_as("cmle_training", "SELECT 3 AS userid, 1 AS label")
    assert second.id == first.id and second.table == "cmle_training"
    assert fake.calls("POST", "/query/queries")[-1]["body"].count("INSERT INTO cmle_training SELECT 3") == 1
    assert aep.query("SELECT userid FROM cmle_training")["userid"].to_pylist() == [3]
    assert fake.calls("POST", r"/import/batches/\w+$")[-1]["query"] == {"action": "REVERT"}


def test_failed_query_errors_are_surfaced(aep, fake):
    with pytest.raises(AEPError, match=r"FAILED: 42601 .*no_such_table"):
        aep.create_table_as("cmle_bad", "SELECT * FROM no_such_table")


def test_a_query_that_times_out_fails_at_once_with_adobe_error(aep, fake, sleeps):
    """TIMEOUT is terminal in query-service.yaml: it was polled until our own six-hour limit."""
    fake.query_timeouts = 1
    with pytest.raises(AEPError, match=r"TIMEOUT: 58000 Query timed out"):
        aep.create_table_as("cmle_slow", "SELECT 1 AS one")
    assert len(sleeps) == 1  # one poll after SUBMITTED, then the terminal state


def test_ensure_table_and_replace_slices(aep, fake):
    shape = "SELECT 'x' AS userid, 1.0 AS score, 'k' AS profile_batch"
    table = aep.ensure_table("cmle_scoring", shape)
    row = "SELECT '{}' AS userid, {} AS score, '{}' AS profile_batch"
    two = row.format("u1", 0.5, "b1") + " UNION ALL " + row.format("u2", 0.7, "b2")
    assert aep.replace_slices(table, "profile_batch", ["b1", "b2"], two) == {"b1": 1, "b2": 1}
    batches_before = len(fake.calls("POST", r"/queries$"))
    assert aep.replace_slices(table, "profile_batch", ["b1"],
                              row.format("u3", 0.9, "b1") + " UNION ALL SELECT 'u4', 0.1, 'b1'") == {"b1": 2}
    assert len(fake.calls("POST", r"/queries$")) == batches_before + 1  # one INSERT: b2's batch untouched
    rows = aep.query("SELECT userid, profile_batch FROM cmle_scoring ORDER BY userid").to_pylist()
    assert rows == [{"userid": "u2", "profile_batch": "b2"}, {"userid": "u3", "profile_batch": "b1"},
                    {"userid": "u4", "profile_batch": "b1"}]
    assert aep.ensure_table("cmle_scoring", shape).id == table.id
