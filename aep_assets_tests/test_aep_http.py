"""AEP mode's HTTP behaviour, at the level of aepp's own `requests` code against the fake platform
(conftest's `fake`, `aep`, `make_aep`, `sleeps`): configuration from the environment, the IMS token and
identity headers, retries that never repeat a request Adobe may have acted on, aep-check, and secrets kept
out of every log, error and output."""

from __future__ import annotations

import logging
import os

import dagster as dg
import pytest
import requests
import urllib3

from aep_assets.lib.datasets import PROFILES
from aep_assets.resources.aep.http import AEPError, AEPMaybeApplied
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.resources.aep.sandbox import AEPConfigError
from aep_assets.resources.storage import S3Storage
from aep_assets.testing.fake_aep import CLIENT_ID, CLIENT_SECRET, ORG_ID, S3_ACCESS_KEY, S3_SECRET_KEY, SANDBOX, SCOPES
from aep_assets_tests.factories import NOW, profiles_file


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


def test_from_env_takes_secrets_as_envvars(monkeypatch, make_aep):
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
    profiles = profiles_file(tmp_path / "profiles.parquet", range(3))
    batch = aep.ingest_batch(dataset, PROFILES, [profiles], idempotency_key="once")
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


def test_bad_client_secret_fails_clearly(fake, sleeps, make_aep):
    wrong = make_aep(client_secret="p8e-wrong-secret-value-1234")
    with pytest.raises(AEPError, match="IMS token request failed: HTTP 401: invalid_client"):
        wrong.find_dataset("cmle_profiles")


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
def test_no_secret_in_logs_exceptions_or_output(fake, sleeps, tmp_path, caplog, capsys, make_aep):
    caplog.set_level(logging.DEBUG)
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY)
    texts = []
    fake.inject("GET", "/catalog/dataSets", 429, headers={"Retry-After": "1"})
    dataset = aep.ensure_dataset(PROFILES)
    fake.expire_tokens()
    aep.ingest_batch(dataset, PROFILES, [profiles_file(tmp_path / "profiles.parquet", range(3))], idempotency_key="k")
    fake.inject("POST", "/flowservice/connections", 400,
                {"title": "Invalid auth params", "detail": f"s3SecretKey {S3_SECRET_KEY} does not match pattern"})
    with pytest.raises(AEPError) as raised:
        aep.export_dataset(aep.create_table_as("t1", "SELECT 1 AS a"), S3Storage(bucket="b-x"), NOW)
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
