"""AEP mode's Schema Registry and Catalog against the fake platform (conftest's `fake`, `aep`, `make_aep`):
the XDM field groups, schemas, identity descriptors and profile-enabled datasets `ensure_dataset` makes
once, and batch ingestion (validation before upload, small and chunked files, idempotency keys, platform
errors, the completed batches of a dataset)."""

from __future__ import annotations

import io
import json

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES
from aep_assets.resources.aep import xdm
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.resources.platform import BatchIngestionError
from aep_assets.testing.fake_aep import CLIENT_ID, ORG_ID, SANDBOX, SCOPES
from aep_assets_tests.factories import events_file, profiles_file

USERID = "12345678901234567890123456789012345678"


# --- XDM setup ----------------------------------------------------------------------------------
def test_ensure_dataset_creates_field_groups_schema_identity_and_profile_dataset(fake, sleeps, make_aep):
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


def test_the_tenant_is_read_from_the_registry_stats(fake, sleeps, make_aep):
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
    events = events_file(tmp_path / "events.parquet", 4, userid=[USERID] * 4,
                         event_type=["web.webpagedetails.pageViews"] * 4, page_name=["home"] * 4,
                         page_url=["https://example.com/"] * 4)
    batch = aep.ingest_batch(dataset, EXPERIENCE_EVENTS, [events], idempotency_key="k1")
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
    assert rows[0] == {"event_id": "e0", "userid": USERID,
                       "event_type": "web.webpagedetails.pageViews", "page_url": "https://example.com/",
                       "_acp_batchid": batch.id}


def test_same_idempotency_key_twice_is_a_noop(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    profiles = tmp_path / "profiles.parquet"
    first = aep.ingest_batch(dataset, PROFILES, [profiles_file(profiles, range(3))], idempotency_key="same")
    again = aep.ingest_batch(dataset, PROFILES, [profiles_file(profiles, range(3))], idempotency_key="same")
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
    files = [profiles_file(tmp_path / "a.parquet", range(3)), profiles_file(tmp_path / "b.parquet", range(2))]
    with pytest.raises(BatchIngestionError, match=r"duplicate 'userid' values across the files \(2 repeated\)"):
        aep.ingest_batch(dataset_stub, PROFILES, files, idempotency_key="k")
    assert fake.requests == []


def test_failed_batch_reports_the_platform_errors(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    with psycopg.connect(fake.conninfo, autocommit=True) as conn:  # make the platform's mapping fail
        conn.execute("ALTER TABLE cmle_profiles ADD COLUMN required_field text NOT NULL")
    with pytest.raises(BatchIngestionError) as raised:
        aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "p.parquet", range(3))], idempotency_key="k")
    assert "INGEST-1212-400" in str(raised.value) and "Mapping failed" in str(raised.value)
    assert raised.value.batch.status == "failed" and "required_field" in raised.value.batch.error


def test_large_file_goes_through_the_chunked_api(fake, sleeps, tmp_path, make_aep):
    aep = make_aep(large_file_bytes=1000, chunk_bytes=700)
    dataset = aep.ensure_dataset(PROFILES)
    profiles = profiles_file(tmp_path / "profiles.parquet", range(40))
    batch = aep.ingest_batch(dataset, PROFILES, [profiles], idempotency_key="big")
    file_path = f"/import/batches/{batch.id}/datasets/{dataset.id}/files/part-00000.parquet"
    assert [c["query"] for c in fake.calls("POST", file_path)] == [{"action": "INITIALIZE"}, {"action": "COMPLETE"}]
    chunks = fake.calls("PATCH", file_path)
    assert len(chunks) >= 2 and chunks[0]["headers"]["Content-Range"].startswith("bytes 0-699/")
    assert fake.calls("PUT", "/files/") == [] and batch.record_count == 40


def test_upload_error_aborts_the_batch_and_is_raised(aep, fake, tmp_path):
    dataset = aep.ensure_dataset(PROFILES)
    fake.inject("PUT", "/files/", 400, {"title": "Bad Request", "detail": "File too large for small-file upload"})
    with pytest.raises(BatchIngestionError, match="failed during upload.*File too large"):
        aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "p.parquet", range(3))], idempotency_key="k")
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
