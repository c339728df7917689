"""AEP mode at the HTTP level: aepp's own `requests` code runs against `responses` (a fake platform with
Adobe's payload shapes, aep_assets.testing.fake_aep.FakeAEP); Query Service is the embedded PostgreSQL.

The `aep_live` tests at the end run only with real credentials in the environment.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import dagster as dg
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import responses
import sqlglot
import urllib3
import yaml

from aep_assets.lib import audiences, guardrails
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES
from aep_assets.lib.merge import current_records_sql
from aep_assets.resources.aep import http, xdm
from aep_assets.resources.aep.http import AEPError, AEPMaybeApplied
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.resources.aep.sandbox import AEPConfigError
from aep_assets.resources.aep.segmentation import audience_of
from aep_assets.resources.platform import BatchIngestionError, export_parent
from aep_assets.resources.storage import LocalStorage, S3Storage
from aep_assets.testing import AEPPlatformOverPostgres, fake_credentials
from aep_assets.testing.fake_aep import (
    CLIENT_ID,
    CLIENT_SECRET,
    ORG_ID,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    SANDBOX,
    SCOPES,
    FakeAEP,
)

T0 = datetime(2025, 1, 6, tzinfo=timezone.utc)


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Every wait of AEP mode, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(http, "pause", recorded.append)
    return recorded


@pytest.fixture
def fake(platform, aep_contracts):
    """The fake platform; `platform` (a LocalPlatform on a fresh database) plays Query Service's server.
    Every exchange is checked against Adobe's API descriptions: a test passes only if none broke them."""
    address = platform.address()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fake = FakeAEP(rsps, address.conninfo, address, aep_contracts)
        yield fake
    assert not fake.violations, "exchanges that break Adobe's API descriptions:\n" + "\n".join(
        dict.fromkeys(fake.violations))


_made: list[AEPPlatform] = []


def make_aep(**overrides) -> AEPPlatform:
    _made.append(AEPPlatformOverPostgres(**fake_credentials(http_attempts=4, http_backoff_seconds=0.5,
                                                            **overrides)))
    return _made[-1]


@pytest.fixture(autouse=True)
def _close_query_service_connections():
    yield
    while _made:
        _made.pop().teardown_after_execution(None)


@pytest.fixture
def aep(fake, sleeps) -> AEPPlatform:
    return make_aep()


def profiles_file(tmp_path, n: int = 3, name: str = "profiles.parquet"):
    rows = [{"userid": f"{12345678901234567890123456789012345678 + i}", "email": f"user{i}@example.com",
             "first_name": f"First{i}", "last_name": f"Last{i}", "country": "FR", "city": "Lyon",
             "created_at": T0 + timedelta(days=i)} for i in range(n)]
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows, schema=PROFILES.schema), path)
    return path


def events_file(tmp_path):
    rows = [{"event_id": f"e{i}", "userid": "12345678901234567890123456789012345678",
             "event_type": "web.webpagedetails.pageViews", "timestamp": T0 + timedelta(hours=i),
             "produced_by": "self", "page_name": "home", "page_url": "https://example.com/", "campaign_id": None}
            for i in range(4)]
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPERIENCE_EVENTS.schema), path)
    return path


def scores_file(tmp_path, propensities, name="scores.parquet", as_of=T0):
    rows = [{"userid": f"u{i}", "propensity": p, "decile": 1, "model_name": "cmle_propensity_model",
             "model_version": "3", "as_of": as_of, "profile_batch": "b1"} for i, p in enumerate(propensities)]
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(rows, schema=PROPENSITY_SCORES.schema), path)
    return path


# --- configuration ------------------------------------------------------------------------------
def test_from_env_names_every_missing_variable(monkeypatch):
    for var in ("AEP_ORG_ID", "AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_SCOPES", "AEP_SANDBOX_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AEP_ORG_ID", ORG_ID)
    with pytest.raises(AEPConfigError) as raised:
        AEPPlatform.from_env()
    message = str(raised.value)
    for var in ("AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_SCOPES", "AEP_SANDBOX_NAME"):
        assert var in message
    assert "AEP_ORG_ID" not in message


def test_from_env_takes_secrets_as_envvars(monkeypatch):
    env = {"AEP_ORG_ID": ORG_ID, "AEP_CLIENT_ID": CLIENT_ID, "AEP_CLIENT_SECRET": CLIENT_SECRET,
           "AEP_SCOPES": SCOPES, "AEP_SANDBOX_NAME": SANDBOX, "AEP_EXPORT_S3_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AEP_TENANT_ID", raising=False)
    resource = AEPPlatform.from_env()
    assert isinstance(resource.client_secret, dg.EnvVar)
    assert resource.client_secret.env_var_name == "AEP_CLIENT_SECRET"
    assert CLIENT_SECRET not in repr(resource) and S3_SECRET_KEY not in repr(resource)
    assert CLIENT_SECRET not in repr(make_aep()) and "client_secret" not in repr(make_aep())
    from aep_assets.resources.environment import build_resources
    assert isinstance(build_resources("aep")["platform"], AEPPlatform)


# --- HTTP behaviour -----------------------------------------------------------------------------
def test_token_then_identity_headers_on_every_call_with_tls_on(aep, fake):
    assert aep.find_dataset("cmle_profiles") is None
    token_call, lookup = fake.requests
    assert token_call["form"] == {"grant_type": ["client_credentials"], "client_id": [CLIENT_ID],
                                  "client_secret": [CLIENT_SECRET], "scope": [SCOPES]}
    assert lookup["path"] == "/data/foundation/catalog/dataSets" and lookup["query"]["name"] == "cmle_profiles"
    headers = lookup["headers"]
    assert headers["Authorization"] == f"Bearer {fake.tokens[0]}"
    assert (headers["x-api-key"], headers["x-gw-ims-org-id"], headers["x-sandbox-name"]) == (CLIENT_ID, ORG_ID, SANDBOX)
    calls = fake.rsps.calls
    verify = [c.request.req_kwargs["verify"] for c in calls]  # aepp passed verify=False on both
    assert len(verify) == 2 and all(v is True or (isinstance(v, str) and os.path.exists(v)) for v in verify)


def test_429_is_retried_after_retry_after(aep, fake, sleeps):
    fake.inject("GET", "/catalog/dataSets", 429, {"error_code": "429001", "message": "Too many requests"},
                headers={"Retry-After": "7"}, times=2)
    assert aep.find_dataset("cmle_profiles") is None
    assert len(fake.calls("GET", "/catalog/dataSets")) == 3
    assert len(sleeps) == 2 and all(s >= 7 for s in sleeps)


def test_5xx_retries_are_bounded_with_growing_jittered_backoff(aep, fake, sleeps):
    fake.inject("GET", "/catalog/dataSets", 503, {"title": "Service Unavailable"}, times=99)
    with pytest.raises(AEPError) as raised:
        aep.find_dataset("cmle_profiles")
    assert raised.value.status == 503 and "GET /data/foundation/catalog/dataSets -> HTTP 503" in str(raised.value)
    assert len(fake.calls("GET", "/catalog/dataSets")) == 4  # http_attempts
    assert len(sleeps) == 3 and all(0 <= s <= 0.5 * 2 ** i for i, s in enumerate(sleeps))


def refused() -> requests.exceptions.ConnectionError:
    """A connection that was never made (the request cannot have reached Adobe)."""
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(
        None, "https://platform.adobe.io", urllib3.exceptions.NewConnectionError(None, "Connection refused")))


def test_a_429_or_a_refused_connection_is_retried_for_a_post(aep, fake, sleeps):
    """Adobe did not act on either: the create is simply sent again, and happens once."""
    fake.inject("POST", "/catalog/dataSets$", 429, body={"error_code": "429001", "message": "Too many requests"},
                headers={"Retry-After": "1"})
    fake.inject("POST", "/catalog/dataSets$", error=refused())
    aep.ensure_dataset(PROFILES)
    assert len(fake.calls("POST", "/catalog/dataSets$")) == 3 and len(fake.datasets) == 1


@pytest.mark.parametrize("answer", ["5xx", "read timeout"])
def test_a_post_that_may_have_acted_is_looked_up_not_repeated(aep, fake, sleeps, answer):
    """A 5xx or a read timeout after Adobe created the dataset: sending the POST again would make a
    second one; the platform is asked first, and the dataset it created is used."""
    lost = {"5xx": {"status": 502, "body": {"title": "Bad Gateway"}},
            "read timeout": {"error": requests.exceptions.ReadTimeout("read timed out")}}[answer]
    fake.inject("POST", "/catalog/dataSets$", acted=True, **lost)
    dataset = aep.ensure_dataset(PROFILES)
    assert len(fake.calls("POST", "/catalog/dataSets$")) == 1 and list(fake.datasets) == [dataset.id]


def test_a_post_that_did_not_act_is_sent_again_after_the_lookup(aep, fake, sleeps, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    fake.inject("POST", r"/import/batches$", 503, body={"title": "Service Unavailable"})
    batch = aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="once")
    assert len(fake.calls("POST", r"/import/batches$")) == 2 and batch.status == "success"
    lookups = [c for c in fake.calls("GET", "/catalog/batches$") if c["query"].get("status") == "loading"]
    assert lookups and lookups[0]["query"]["tags"] == "aepAssetsIdempotencyKey:once"


def test_a_query_that_may_have_run_is_not_repeated(aep, fake, sleeps):
    """Query Service offers no lookup of an unanswered query: it is not sent twice (a second INSERT INTO
    would duplicate rows); the error says so and carries Adobe's request id."""
    fake.inject("POST", "/query/queries$", 500, body={"title": "Internal Server Error"},
                headers={"x-request-id": "req-7f3a"})
    with pytest.raises(AEPMaybeApplied, match=r"HTTP 500.*Adobe request id req-7f3a.*not repeated blindly"):
        aep.create_table_as("cmle_once", "SELECT 1 AS one")
    assert len(fake.calls("POST", "/query/queries$")) == 1


def test_a_4xx_is_raised_at_once_with_adobe_error_text(aep, fake, sleeps):
    fake.inject("GET", "/catalog/dataSets", 400, {"title": "Bad request", "detail": "Invalid property filter"})
    with pytest.raises(AEPError, match="HTTP 400: Bad request; Invalid property filter"):
        aep.find_dataset("cmle_profiles")
    assert sleeps == []


def test_401_refreshes_the_token_once(aep, fake):
    aep.find_dataset("cmle_profiles")
    fake.expire_tokens()
    assert aep.find_dataset("cmle_profiles") is None
    assert len(fake.tokens) == 2
    assert fake.calls("GET", "/dataSets")[-1]["headers"]["Authorization"] == f"Bearer {fake.tokens[1]}"
    fake.inject("GET", "/catalog/dataSets", 401, {"error_code": "401013", "message": "Oauth token is not valid"},
                times=2)
    with pytest.raises(AEPError, match="HTTP 401"):
        aep.find_dataset("cmle_profiles")
    assert len(fake.tokens) == 3  # one refresh per call, not a loop


def test_bad_client_secret_fails_clearly(fake, sleeps):
    wrong = make_aep(client_secret="p8e-wrong-secret-value-1234")
    with pytest.raises(AEPError, match="IMS token request failed: HTTP 401: invalid_client"):
        wrong.find_dataset("cmle_profiles")


# --- XDM setup ----------------------------------------------------------------------------------
def test_ensure_dataset_creates_field_groups_schema_identity_and_profile_dataset(fake, sleeps):
    aep = make_aep(tenant_id="")  # looked up in the Schema Registry
    dataset = aep.ensure_dataset(PROFILES)
    assert fake.calls("GET", "/schemaregistry/stats")
    groups = [json.loads(c["body"]) for c in fake.calls("POST", "/tenant/fieldgroups")]
    assert [g["title"] for g in groups] == ["aep_assets CMLE profile identity", "aep_assets CMLE person fields"]
    fields = groups[1]["definitions"]["fields"]["properties"]["_acme"]["properties"]
    assert set(fields) == {"email", "first_name", "last_name", "country", "city", "created_at"}
    assert fields["created_at"] == {"title": "created_at", "type": "string", "format": "date-time"}
    assert groups[0]["meta:intendedToExtend"] == ["https://ns.adobe.com/xdm/context/profile"]
    schema_body = json.loads(fake.calls("POST", "/tenant/schemas")[0]["body"])
    group_ids = [g["$id"] for g in fake.field_groups.values()]
    assert [r["$ref"] for r in schema_body["allOf"]] == ["https://ns.adobe.com/xdm/context/profile", *group_ids]
    descriptor = json.loads(fake.calls("POST", "/tenant/descriptors")[0]["body"])
    schema = next(iter(fake.schemas.values()))
    assert descriptor == {"@type": "xdm:descriptorIdentity", "xdm:sourceSchema": schema["$id"], "xdm:sourceVersion": 1,
                          "xdm:sourceProperty": "/_acme/userid", "xdm:namespace": "ECID",
                          "xdm:property": "xdm:code", "xdm:isPrimary": True}
    union = fake.calls("PATCH", "/tenant/schemas/")[0]
    assert union["path"].endswith(f"/tenant/schemas/{schema['meta:altId']}")  # as described: no trailing slash
    assert json.loads(union["body"]) == [{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}]
    created = json.loads(fake.calls("POST", "/catalog/dataSets")[0]["body"])
    assert created["schemaRef"]["id"] == schema["$id"]
    assert created["tags"] == {"unifiedProfile": ["enabled:true"], "unifiedIdentity": ["enabled:true"]}
    assert created["fileDescription"]["format"] == "parquet"
    assert (dataset.name, dataset.table, dataset.profile_enabled) == ("cmle_profiles", "cmle_profiles_flat", True)


def test_the_tenant_is_read_from_the_registry_stats(fake, sleeps):
    assert make_aep(tenant_id="").tenant() == "acme"
    assert fake.calls("GET", "/schemaregistry/stats$")  # the described path (aepp's helper adds a slash)


def test_registry_pages_by_title_with_orderby(aep, fake):
    """The registry refuses `start` without `orderby` (start is the last title of the previous page)."""
    aep.ensure_dataset(PROFILES)
    title = next(iter(fake.field_groups.values()))["title"]
    earlier = {"$id": "https://ns.adobe.com/acme/mixins/0", "meta:altId": "_acme.mixins.0", "version": "1.0",
               "title": "A first page without it"}
    fake.inject("GET", "/tenant/fieldgroups$", 200, body={
        "results": [earlier], "_page": {"orderby": "title", "next": "https://platform.adobe.io/next", "count": 1},
        "_links": {"next": None}})
    assert aep.services().catalog.by_title("fieldgroups", title)["title"] == title
    pages = fake.calls("GET", "/tenant/fieldgroups$")[-2:]
    assert pages[0]["query"] == {"property": f"title=={title}", "orderby": "title"}
    assert pages[1]["query"] == {"property": f"title=={title}", "orderby": "title", "start": earlier["title"]}


def test_second_ensure_dataset_creates_nothing(aep, fake):
    first = aep.ensure_dataset(PROFILES)
    writes = len([r for r in fake.requests if r["method"] != "GET"])
    second = aep.ensure_dataset(PROFILES)
    assert second == first
    assert len([r for r in fake.requests if r["method"] != "GET"]) == writes
    aep.ensure_dataset(PROPENSITY_SCORES)  # shares the identity field group: looked up, not created again
    assert [g["title"] for g in fake.field_groups.values()].count("aep_assets CMLE profile identity") == 1


def test_existing_dataset_without_profile_tag_is_enabled_with_json_patch(aep, fake):
    aep.ensure_dataset(PROFILES)
    dataset_id = next(iter(fake.datasets))
    del fake.datasets[dataset_id]["tags"]["unifiedProfile"]
    assert aep.ensure_dataset(PROFILES).profile_enabled
    patch = fake.calls("PATCH", f"/dataSets/{dataset_id}")[0]
    assert patch["headers"]["Content-Type"] == "application/json-patch+json"


def test_event_schema_uses_standard_web_and_direct_marketing_groups(aep, fake):
    aep.ensure_dataset(EXPERIENCE_EVENTS)
    refs = [r["$ref"] for r in json.loads(fake.calls("POST", "/tenant/schemas")[0]["body"])["allOf"]]
    assert refs[:3] == ["https://ns.adobe.com/xdm/context/experienceevent",
                        "https://ns.adobe.com/xdm/context/experienceevent-directmarketing",
                        "https://ns.adobe.com/xdm/context/experienceevent-web"]


def test_query_service_view_text_is_spark_sql_with_dotted_xdm_paths():
    text = xdm.flat_view_sql(EXPERIENCE_EVENTS.name, "cmle_experience_events", "acme", "spark")
    assert "_acme.userid AS userid" in text and "web.webPageDetails.URL AS page_url" in text
    assert "_ACP_BATCHID AS _acp_batchid" in text
    parsed = sqlglot.parse_one(text, read="spark")
    assert parsed.find(sqlglot.exp.Create) is not None
    assert AEPPlatform(org_id=ORG_ID, client_id=CLIENT_ID, client_secret="x", scopes=SCOPES,
                       sandbox=SANDBOX).dialect == "spark"


# --- batch ingestion ----------------------------------------------------------------------------
def test_ingest_uploads_xdm_parquet_completes_and_waits(aep, fake, tmp_path, sleeps):
    dataset = aep.ensure_dataset(EXPERIENCE_EVENTS)
    batch = aep.ingest_batch(dataset, EXPERIENCE_EVENTS, [events_file(tmp_path)], idempotency_key="k1")
    create = json.loads(fake.calls("POST", r"/import/batches$")[0]["body"])
    assert create["datasetId"] == dataset.id and create["inputFormat"]["format"] == "parquet"
    assert create["tags"] == {"aepAssetsIdempotencyKey": ["k1"]}
    put = fake.calls("PUT", "/files/")[0]
    assert put["path"] == f"/data/foundation/import/batches/{batch.id}/datasets/{dataset.id}/files/part-00000.parquet"
    uploaded = pq.read_table(io.BytesIO(put["body"]))
    assert set(uploaded.column_names) == {"_id", "_acme", "eventType", "timestamp", "producedBy", "web"}
    assert uploaded.column("web")[0].as_py() == {"webPageDetails": {"name": "home", "URL": "https://example.com/"}}
    complete = fake.calls("POST", f"/import/batches/{batch.id}$")[0]
    assert complete["query"] == {"action": "COMPLETE"}
    assert (batch.status, batch.record_count, batch.idempotency_key) == ("success", 4, "k1")
    assert len(fake.calls("GET", f"/catalog/batches/{batch.id}")) == 2 and sleeps  # polled with a wait
    for call in (r for r in fake.requests if r["path"].startswith("/data/")):  # every platform call, uploads too
        headers = call["headers"]
        assert headers["Authorization"] == f"Bearer {fake.tokens[0]}", call["path"]
        assert (headers["x-api-key"], headers["x-gw-ims-org-id"], headers["x-sandbox-name"]) == (
            CLIENT_ID, ORG_ID, SANDBOX), call["path"]
    rows = aep.query(f"SELECT event_id, userid, event_type, page_url, _acp_batchid FROM {dataset.table} "
                     "ORDER BY event_id").to_pylist()
    assert rows[0] == {"event_id": "e0", "userid": "12345678901234567890123456789012345678",
                       "event_type": "web.webpagedetails.pageViews", "page_url": "https://example.com/",
                       "_acp_batchid": batch.id}


def test_same_idempotency_key_twice_is_a_noop(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    first = aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="same")
    again = aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="same")
    assert again.id == first.id
    assert len(fake.calls("POST", r"/import/batches$")) == 1
    lookup = fake.calls("GET", r"/catalog/batches$")[-1]["query"]
    assert lookup["tags"] == "aepAssetsIdempotencyKey:same" and lookup["status"] == "success"


def test_bad_file_fails_before_any_http_call(aep, fake, tmp_path):
    dataset_stub = type("D", (), {"id": "x", "name": "cmle_profiles"})()
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"userid": ["a", "a"]}), path)
    with pytest.raises(BatchIngestionError, match="rejected before upload.*missing column"):
        aep.ingest_batch(dataset_stub, PROFILES, [path], idempotency_key="k")
    assert fake.requests == []


def test_a_profile_in_two_files_of_one_batch_fails_before_any_http_call(aep, fake, tmp_path):
    dataset_stub = type("D", (), {"id": "x", "name": "cmle_profiles"})()
    files = [profiles_file(tmp_path, 3, "a.parquet"), profiles_file(tmp_path, 2, "b.parquet")]
    with pytest.raises(BatchIngestionError, match=r"duplicate 'userid' values across the files \(2 repeated\)"):
        aep.ingest_batch(dataset_stub, PROFILES, files, idempotency_key="k")
    assert fake.requests == []


def test_failed_batch_reports_the_platform_errors(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    with psycopg.connect(fake.conninfo, autocommit=True) as conn:  # make the platform's mapping fail
        conn.execute("ALTER TABLE cmle_profiles ADD COLUMN required_field text NOT NULL")
    with pytest.raises(BatchIngestionError) as raised:
        aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="k")
    assert "INGEST-1212-400" in str(raised.value) and "Mapping failed" in str(raised.value)
    assert raised.value.batch.status == "failed" and "required_field" in raised.value.batch.error


def test_large_file_goes_through_the_chunked_api(fake, sleeps, tmp_path):
    aep = make_aep(large_file_bytes=1000, chunk_bytes=700)
    dataset = aep.ensure_dataset(PROFILES)
    batch = aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path, n=40)], idempotency_key="big")
    file_path = f"/import/batches/{batch.id}/datasets/{dataset.id}/files/part-00000.parquet"
    assert [c["query"] for c in fake.calls("POST", file_path)] == [{"action": "INITIALIZE"}, {"action": "COMPLETE"}]
    chunks = fake.calls("PATCH", file_path)
    assert len(chunks) >= 2 and chunks[0]["headers"]["Content-Range"].startswith("bytes 0-699/")
    assert fake.calls("PUT", "/files/") == [] and batch.record_count == 40


def test_upload_error_aborts_the_batch_and_is_raised(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    fake.inject("PUT", "/files/", 400, {"title": "Bad Request", "detail": "File too large for small-file upload"})
    with pytest.raises(BatchIngestionError, match="failed during upload.*File too large"):
        aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="k")
    assert fake.calls("POST", r"/import/batches/\w+$")[-1]["query"] == {"action": "ABORT"}


def test_completed_batches_pages_filters_and_orders_by_completion(aep, fake):
    dataset = aep.ensure_dataset(PROFILES)
    for i in range(130):
        fake.batches[f"b{i:03d}"] = {"id": f"b{i:03d}", "status": "success" if i % 10 else "failed",
                                     "created": 1000 + i, "completed": 5000 - i,
                                     "relatedObjects": [{"type": "dataSet", "id": dataset.id}], "tags": {},
                                     "errors": [] if i % 10 else [{"code": "X", "description": "bad rows"}]}
    batches = aep.completed_batches(dataset, completed_after_ms=4890)
    assert len(batches) == 111 and [b.completed_ms for b in batches] == sorted(b.completed_ms for b in batches)
    pages = fake.calls("GET", r"/catalog/batches$")
    assert [p["query"]["start"] for p in pages] == ["0", "100"]
    assert pages[0]["query"]["property"] == "completed>=4890" and pages[0]["query"]["status"] == "success,failed"
    assert next(b for b in batches if b.status == "failed").error == "X: bad rows"
    assert len(aep.completed_batches(dataset, completed_after_ms=0, limit=5)) == 5


# --- Query Service over psycopg (the embedded PostgreSQL) -------------------------------------------
def test_query_returns_arrow_with_types(aep, fake):
    table = aep.query("SELECT 1::bigint AS n, 2.5::float8 AS x, 'a'::text AS s, 3.25::numeric AS d, "
                      "TIMESTAMPTZ '2025-01-06 00:00:00+00' AS t, NULL::text AS missing")
    assert table.schema.types[:5] == [pa.int64(), pa.float64(), pa.string(), pa.float64(),
                                      pa.timestamp("us", tz="UTC")]
    assert table.to_pylist()[0]["t"] == T0
    assert aep.query("SELECT 1 AS n WHERE FALSE").num_rows == 0
    assert len(fake.calls("GET", "/connection_parameters")) == 1  # one connection, reused


def test_query_service_connection_requires_tls(fake, sleeps):
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


# --- export through a Flow Service dataflow -----------------------------------------------------------
def test_export_runs_the_dataflow_and_writes_a_manifest(fake, sleeps, moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="cmle-exports")
    storage = S3Storage(bucket="cmle-exports", prefix="team", endpoint_url=moto_endpoint, region_name="us-east-1")
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY,
                   export_not_ready_wait_seconds=60)
    dataset = aep.create_table_as("cmle_training", "SELECT 1 AS userid, 0 AS label UNION ALL SELECT 2, 1")

    def write_export(flow, dataset_id):  # what AEP's dataflow does: gzip parquet under {path}/{id}/exportTime=...
        target = next(c for c in fake.connections.values() if c["id"] == flow["targetConnectionIds"][0])
        rows = aep.query("SELECT userid, label FROM cmle_training ORDER BY userid")
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, compression="gzip")
        key = f"{target['params']['path']}/{dataset_id}/exportTime=202501061230/part-00000-tid-42-c000.gz.parquet"
        s3.put_object(Bucket=target["params"]["bucketName"], Key=key, Body=buffer.getvalue())

    fake.on_export = write_export
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


def test_a_failed_export_run_raises_adobe_errors(fake, sleeps, moto_endpoint, monkeypatch):
    """The run's outcome is metrics.statusSummary.status; a failed run also has completedAtUTC, which
    made it pass as a success when the outcome was read from a status field runs do not have."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket="cmle-failed")
    storage = S3Storage(bucket="cmle-failed", endpoint_url=moto_endpoint, region_name="us-east-1")
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


# --- audiences ----------------------------------------------------------------------------------------
def test_audiences_are_upserted_by_name_evaluated_and_deleted(aep, fake, tmp_path):
    fake.segments["foreign"] = {"id": "foreign", "name": "Someone else's", "description": "not ours",
                                "expression": {"type": "PQL", "format": "pql/text", "value": "true"},
                                "schema": {"name": "_xdm.context.profile"}}
    fake.segment_count = lambda segment: 42
    scores = aep.ensure_dataset(PROPENSITY_SCORES)
    high = aep.upsert_audience("Propensity - high", "Likely", 0.2, 0.5, scores)
    body = json.loads(fake.calls("POST", "/segment/definitions")[0]["body"])
    assert body["expression"] == {"type": "PQL", "format": "pql/text",
                                  "value": "_acme.propensity >= 0.2 and _acme.propensity < 0.5"}
    assert body["schema"] == {"name": "_xdm.context.profile"} and body["evaluationInfo"]["batch"]["enabled"]
    assert json.loads(fake.calls("POST", "/segment/jobs")[0]["body"]) == [{"segmentId": high.id}]
    assert (high.lower, high.upper, high.description) == (0.2, 0.5, "Likely")
    assert aep.upsert_audience("Propensity - high", "Likely", 0.2, 0.5, scores) == high
    assert fake.calls("PATCH", "/segment/definitions/") == []
    moved = aep.upsert_audience("Propensity - high", "Likely", 0.25, 0.5, scores)
    assert moved.id == high.id and moved.lower == 0.25
    assert fake.calls("PATCH", "/segment/definitions/")[0]["path"].endswith(high.id)
    assert len(fake.calls("POST", "/segment/definitions")) == 1
    assert [a.name for a in aep.audiences()] == ["Propensity - high"]
    assert aep.audience_size(moved, scores) == 42
    aep.delete_audience(moved)
    assert aep.audiences() == [] and "foreign" in fake.segments


def test_a_failed_segment_job_raises_adobe_errors(aep, fake, sleeps):
    scores = aep.ensure_dataset(PROPENSITY_SCORES)
    fake.job_outcome = "FAILED"
    audience = aep.upsert_audience("Propensity - high", "Likely", 0.2, 0.5, scores)
    with pytest.raises(AEPError, match=r"FAILED: 0090000009 Error while evaluating segment expression"):
        aep.audience_size(audience, scores)


def test_audience_members_and_activation_files_come_from_query_service(fake, sleeps, tmp_path):
    aep = make_aep()
    scores = aep.ensure_dataset(PROPENSITY_SCORES)
    aep.ingest_batch(scores, PROPENSITY_SCORES, [scores_file(tmp_path, [0.1, 0.3, 0.6])], idempotency_key="s1")
    aep.ingest_batch(scores, PROPENSITY_SCORES, [scores_file(tmp_path, [0.35], "newer.parquet", T0 + timedelta(1))],
                     idempotency_key="s2")
    people = [{"userid": f"u{i}", "email": f"user{i}@example.com", "first_name": f"First{i}", "last_name": "Last",
               "country": "FR", "city": "Lyon", "created_at": T0} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(people, schema=PROFILES.schema), tmp_path / "people.parquet")
    aep.ingest_batch(aep.ensure_dataset(PROFILES), PROFILES, [tmp_path / "people.parquet"], idempotency_key="p1")
    audience = aep.upsert_audience("Propensity - high", "Likely", 0.2, 0.5, scores)
    members = aep.audience_members(audience, scores)
    assert members.to_pylist() == [  # the latest score and the current profile of each member
        {"userid": "u0", "email": "user0@example.com", "first_name": "First0", "last_name": "Last", "propensity": 0.35},
        {"userid": "u1", "email": "user1@example.com", "first_name": "First1", "last_name": "Last", "propensity": 0.3}]
    storage = LocalStorage(root=str(tmp_path / "storage"))
    manifest = aep.activate_audience(audience, scores, storage, T0)
    assert manifest.rows == 2 and manifest.prefix.startswith(audiences.activation_parent(audience.name))
    aep.activate_audience(audience, scores, storage, T0 + timedelta(hours=1))
    assert len(storage.complete_writes(audiences.activation_parent(audience.name))) == 1


# --- aep-check: read-only calls a user runs first ---------------------------------------------------------
def test_aep_check_reports_every_service_and_a_missing_permission(aep, fake, aep_contracts):
    from aep_assets.aep_check import report, run_checks

    results = run_checks(aep, aep_contracts)
    assert [problem for _, problem in results] == [None] * len(results)
    assert {probe.service for probe, _ in results} == {
        "IMS", "Schema Registry", "Catalog", "Query Service", "Segmentation", "Flow Service"}
    assert all(call["method"] == "GET" for call in fake.requests if call["path"].startswith("/data/"))
    fake.inject("GET", "/segment/definitions$", 403, body={
        "error_code": "403027", "message": "User region is missing"}, headers={"x-request-id": "req-9"})
    text = report(run_checks(aep, aep_contracts))
    assert "FAIL Segmentation" in text and "403027" in text and "req-9" in text
    assert text.splitlines()[-1].startswith("7 of 8 answered")


# --- secrets ------------------------------------------------------------------------------------------
def test_no_secret_in_logs_exceptions_or_output(fake, sleeps, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY)
    texts = []
    fake.inject("GET", "/catalog/dataSets", 429, headers={"Retry-After": "1"})
    dataset = aep.ensure_dataset(PROFILES)
    fake.expire_tokens()
    aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path)], idempotency_key="k")
    fake.inject("POST", "/flowservice/connections", 400,
                {"title": "Invalid auth params", "detail": f"s3SecretKey {S3_SECRET_KEY} does not match pattern"})
    with pytest.raises(AEPError) as raised:
        aep.export_dataset(aep.create_table_as("t1", "SELECT 1 AS a"), S3Storage(bucket="b-x"), T0)
    texts.append(str(raised.value))
    with pytest.raises(AEPError) as raised:
        make_aep(client_secret=CLIENT_SECRET + "x").find_dataset("x")
    texts.append(str(raised.value))
    with pytest.raises(AEPError) as raised:
        make_aep(query_sslmode="require").query("SELECT 1")
    texts.append(str(raised.value))
    out = capsys.readouterr()
    texts += [record.getMessage() for record in caplog.records] + [out.out, out.err]
    secrets = [CLIENT_SECRET, S3_SECRET_KEY, *fake.tokens, *fake.qs_tokens]
    assert len(fake.tokens) >= 2 and fake.qs_tokens
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "***" in texts[0]  # the echoed S3 secret was redacted


# --- the whole graph in AEP mode --------------------------------------------------------------------
def test_whole_graph_materializes_in_aep_mode(fake, sleeps, moto_endpoint, tracking, monkeypatch):
    """Every asset and job against the fake platform, Query Service = the embedded PostgreSQL, storage = S3.
    With the read limit at 500 rows and 400 scores per file, the 1,000-profile batches are scored the way
    a 20M-profile batch is: features read back through a dataset export, scores in several files."""
    from aep_assets.definitions import build_definitions
    from aep_assets.main import run_all

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="cmle-graph")
    storage = S3Storage(bucket="cmle-graph", prefix="aep", endpoint_url=moto_endpoint,
                                 region_name="us-east-1")
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY,
                   interactive_rows=500)
    monkeypatch.setattr(guardrails, "SCORES_ROWS_PER_FILE", 400)

    def write_export(flow, dataset_id):
        target = next(c for c in fake.connections.values() if c["id"] == flow["targetConnectionIds"][0])
        table = next(d for i, d in fake.datasets.items() if i == dataset_id)["tags"]["adobe/pqs/table"][0]
        rows = aep.query(f"SELECT * FROM {table}").drop_columns(["_acp_batchid"])
        buffer = io.BytesIO()
        pq.write_table(rows, buffer, compression="gzip")
        s3.put_object(Bucket="cmle-graph", Key=f"{target['params']['path']}/{dataset_id}/exportTime=202501061230/"
                      "part-00000-tid-7-c000.gz.parquet", Body=buffer.getvalue())

    def segment_count(segment):  # what the evaluation job counts: latest scores inside the PQL interval
        audience = audience_of(segment)
        latest = current_records_sql(PROPENSITY_SCORES, "cmle_propensity_scores_flat")
        profiles = current_records_sql(PROFILES, "cmle_profiles_flat")
        return aep.query(audiences.members_sql("postgres", latest, profiles, audience.lower, audience.upper)).num_rows

    fake.on_export, fake.segment_count = write_export, segment_count
    defs = build_definitions({"platform": aep, "storage": storage, "mlflow_tracking": tracking})
    instance_config = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())  # as make run
    with dg.instance_for_test(overrides=instance_config) as instance:
        timings = run_all(defs, instance, {
            "load_synthetic_data_job": {"ops": {"synthetic_data": {"config": {"profiles": 2000, "batches": 2}}}},
            # the model's quality is tested elsewhere; here the gate only needs to let a champion through
            "train_propensity_model_job": {"ops": {"propensity_model": {"config": {
                "max_trials": 1, "auc_floor": 0.5, "max_oracle_gap": 0.5}}}}})
        print("AEP-mode graph timings:", timings)
        for key in ("aep_profiles", "aep_experience_events", "training_features", "training_export",
                    "propensity_model", "propensity_audiences", "audience_activations"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        sizes = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("propensity_audiences"), "propensity_audiences_sizes"))
        assert sizes.event.dagster_event.event_specific_data.passed
        # AEP mode's own log is in the runs' event logs (dagster.yaml's managed_python_loggers)
        messages = [e.user_message for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
        assert any(m.startswith("created dataset cmle_profiles") for m in messages)
        assert any(re.match(r"waiting for batch \w+: \d+ s so far, next look in \d+ s", m) for m in messages)
    profiles = aep.query("SELECT COUNT(*) AS n FROM cmle_profiles_flat")["n"][0].as_py()
    scores = aep.query("SELECT COUNT(DISTINCT userid) AS n FROM cmle_propensity_scores_flat")["n"][0].as_py()
    assert profiles == scores == 2000
    assert fake.flows and fake.jobs and storage.list_keys("cmle/activation")
    plan = guardrails.plan_scoring(1000, interactive_rows=500, rows_per_file=400)
    assert (plan.feature_exports, plan.score_files, plan.score_batches) == (1, 3, 1)
    batches = platform_batches(aep, "cmle_profiles")
    exports = [f["name"] for f in fake.flows.values() if "cmle_bulk_scoring_features_" in f["name"]]
    assert len(exports) == len(batches) * plan.feature_exports
    scores_id = aep.find_dataset("cmle_propensity_scores").id
    score_batches = [b for b in fake.batches.values() if b["relatedObjects"][0]["id"] == scores_id]
    assert len(score_batches) == len(batches) * plan.score_batches
    uploads = [c for c in fake.calls("PUT", "/files/") if f"/datasets/{scores_id}/" in c["path"]]
    assert len(uploads) == len(batches) * plan.score_files
    scratch = aep.find_dataset(exports[0].split()[2])
    assert not storage.list_keys(f"cmle/egress/{scratch.id}")  # read back, then removed


def platform_batches(aep: AEPPlatform, dataset: str) -> list[str]:
    return [b.id for b in aep.completed_batches(aep.find_dataset(dataset)) if b.status == "success"]


# --- live suite (real sandbox; skipped without credentials) --------------------------------------------
live = pytest.mark.skipif(not all(os.environ.get(v) for v in (
    "AEP_ORG_ID", "AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_SCOPES", "AEP_SANDBOX_NAME")),
    reason="needs AEP_ORG_ID, AEP_CLIENT_ID, AEP_CLIENT_SECRET, AEP_SCOPES, AEP_SANDBOX_NAME")


@pytest.fixture
def live_aep() -> AEPPlatform:
    resource = AEPPlatform.from_env()
    with dg.build_resources({"platform": resource}) as built:
        yield built.platform


@pytest.mark.aep_live
@live
def test_live_token_tenant_and_query_service(live_aep):
    assert live_aep.tenant()
    assert live_aep.query("SELECT 1 AS one")["one"][0].as_py() == 1


@pytest.mark.aep_live
@live
def test_live_ensure_dataset_is_idempotent(live_aep):
    first = live_aep.ensure_dataset(PROFILES)
    assert live_aep.ensure_dataset(PROFILES) == first
    assert live_aep.find_dataset(PROFILES.name) == first
