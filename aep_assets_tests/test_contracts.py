"""The contract checks themselves: Adobe's shapes pass, an invented or a dropped field does not, a
request off the description does not; and the public testing aid, used as a developer would use it."""

import json
import secrets
import subprocess

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aep_assets.lib.datasets import PROFILES
from aep_assets.resources.platform import Platform
from aep_assets.testing import ContractViolation, contracts, fake_aep_platform
from aep_assets.testing.contracts import GATEWAY, Contracts, SpecsMissing
from aep_assets.testing.exchange import Exchange
from aep_assets.testing.fake_aep import CLIENT_ID, ORG_ID, SANDBOX

HEADERS = {"Authorization": "Bearer t", "x-api-key": CLIENT_ID, "x-gw-ims-org-id": ORG_ID,
           "x-sandbox-name": SANDBOX}
SEGMENT = {"id": "s1", "expression": {"type": "PQL", "format": "pql/text", "value": "true"},
           "mergePolicy": {"id": "m1", "version": 1}}
JOB = {"id": "j1", "status": "SUCCEEDED", "segments": [{"segmentId": "s1", "segment": SEGMENT}],
       "metrics": {"totalTime": {"startTimeInMs": 1, "endTimeInMs": 2, "totalTimeInMs": 1},
                   "profileSegmentationTime": {"startTimeInMs": 1, "endTimeInMs": 2, "totalTimeInMs": 1},
                   "segmentedProfileCounter": {"s1": 42}}}


def answer(method: str, path: str, body: object, status: int = 200, request: object = None,
           query: str = "") -> Exchange:
    url = f"{GATEWAY}{path}" + (f"?{query}" if query else "")
    headers = {**HEADERS, **({"Content-Type": "application/json"} if request is not None else {})}
    return Exchange(method, url, headers, json.dumps(request).encode() if request is not None else None, status,
                    {"Content-Type": "application/json"}, json.dumps(body).encode())


def test_an_answer_in_adobe_shape_passes(aep_contracts):
    assert aep_contracts.check(answer("GET", "/data/core/ups/segment/jobs/j1", JOB)) == []


def test_an_invented_field_is_refused(aep_contracts):
    invented = {**JOB, "metrics": {**JOB["metrics"], "recordCount": 42}}
    problems = aep_contracts.check(answer("GET", "/data/core/ups/segment/jobs/j1", invented))
    assert problems and "$.metrics.recordCount is not declared" in problems[0]


def test_a_dropped_required_field_is_refused(aep_contracts):
    dropped = {**JOB, "metrics": {k: v for k, v in JOB["metrics"].items() if k != "profileSegmentationTime"}}
    problems = aep_contracts.check(answer("GET", "/data/core/ups/segment/jobs/j1", dropped))
    assert problems and "'profileSegmentationTime' is a required property" in " ".join(problems)


def test_a_request_off_the_description_is_refused(aep_contracts):
    listed = answer("GET", "/data/foundation/catalog/dataSets", {}, query="name=x&requestDataSource=true")
    assert any("query parameter 'requestDataSource' is not declared" in p for p in aep_contracts.check(listed))
    no_such = answer("GET", "/data/foundation/catalog/nowhere", {})
    assert aep_contracts.check(no_such) == [
        "catalog.yaml: no operation GET /data/foundation/catalog/nowhere"]
    schedule = {"name": "f", "flowSpec": {"id": "x"}, "sourceConnectionIds": ["s"], "targetConnectionIds": ["t"],
                "transformations": [], "scheduleParams": {"interval": 24, "timeUnit": "hour", "startTime": 1}}
    created = answer("POST", "/data/foundation/flowservice/flows", {"id": "f1", "etag": "e"}, 201, schedule)
    assert any("24 is not one of [1, 3, 6, 9, 12]" in p for p in aep_contracts.check(created))


def test_the_missing_descriptions_are_named(tmp_path):
    with pytest.raises(SpecsMissing, match=str(tmp_path / "nowhere")):
        Contracts(folder=tmp_path / "nowhere")


def test_a_scratch_clone_finds_the_descriptions_beside_its_origin(tmp_path, monkeypatch):
    """`git clone . $(mktemp -d)` has no ../shared of its own: the folder beside the origin is used."""
    origin, specs = tmp_path / "work" / "main", tmp_path / "work" / "shared" / "aep-openapi"
    specs.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    clone = tmp_path / "scratch" / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    monkeypatch.delenv("AEP_ASSETS_OPENAPI_DIR", raising=False)
    monkeypatch.setattr(contracts, "REPO_ROOT", clone)
    assert contracts.spec_folder() == specs
    monkeypatch.setattr(contracts, "REPO_ROOT", origin)
    assert contracts.spec_folder() == specs
    monkeypatch.setenv("AEP_ASSETS_OPENAPI_DIR", str(tmp_path / "elsewhere"))
    assert contracts.spec_folder() == tmp_path / "elsewhere"


@dg.asset
def profile_count(platform: Platform) -> dg.MaterializeResult:
    """A user's own asset over the platform resource: how many profiles the profile dataset holds."""
    dataset = platform.find_dataset_or_fail(PROFILES.name)
    return dg.MaterializeResult(metadata={"profiles": platform.query(
        f"SELECT COUNT(*) AS n FROM {dataset.table}")["n"][0].as_py()})


def test_a_developer_tests_an_asset_against_the_fake(aep_query_service, aep_contracts, tmp_path):
    """The README's example: the production AEPPlatform against the fake, every exchange checked."""
    rows = [{"userid": f"{10**37 + i}", "email": f"u{i}@example.com", "first_name": "A", "last_name": "B",
             "country": "FR", "city": "Lyon", "created_at": None} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows, schema=PROFILES.schema), tmp_path / "profiles.parquet")
    with fake_aep_platform(aep_query_service, contracts=aep_contracts) as (platform, fake):
        dataset = platform.ensure_dataset(PROFILES)
        platform.ingest_batch(dataset, PROFILES, [tmp_path / "profiles.parquet"], idempotency_key="p1")
        result = dg.materialize([profile_count], resources={"platform": platform})
        assert result.asset_materializations_for_node("profile_count")[0].metadata["profiles"].value == 3
        assert fake.calls("POST", "/import/batches") and fake.waits  # batch polling waited, without sleeping


def test_a_broken_exchange_fails_the_block(aep_query_service, aep_contracts):
    with pytest.raises(ContractViolation, match="is not declared"):
        with fake_aep_platform(aep_query_service, contracts=aep_contracts) as (platform, fake):
            fake.datasets[secrets.token_hex(12)] = {"name": "cmle_profiles", "invented": True}
            platform.find_dataset("cmle_profiles")


def test_the_fake_outside_pytest_starts_empty_each_time_and_drops_its_database(embedded_server, aep_contracts):
    """`with fake_aep_platform() as (platform, fake)`, as the README shows it, twice on the same server: each
    use creates its datasets anew in a database of its own, removed at the end."""
    import psycopg

    def fake_databases() -> set[str]:
        with psycopg.connect(embedded_server.ensure_running().conninfo) as conn:
            return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'aep_fake_%'")}

    before = fake_databases()
    for _ in range(2):
        with fake_aep_platform(contracts=aep_contracts) as (platform, fake):
            assert platform.ensure_dataset(PROFILES).name == PROFILES.name
            assert len(fake.datasets) == 1
    assert fake_databases() == before
