"""AEP mode's Segmentation service against the fake platform (conftest's `fake`, `aep`, `make_aep`): the
propensity audiences as segment definitions upserted by name, sized by evaluation jobs, their members and
activation files read from Query Service."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from aep_assets.lib import audiences
from aep_assets.lib.datasets import PROFILES, PROPENSITY_SCORES
from aep_assets.resources.aep.http import AEPError
from aep_assets.resources.storage import LocalStorage
from aep_assets_tests.factories import NOW, profiles_file, scores_file


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


def test_audience_members_and_activation_files_come_from_query_service(fake, sleeps, tmp_path, make_aep):
    aep = make_aep()
    scores = aep.ensure_dataset(PROPENSITY_SCORES)
    aep.ingest_batch(scores, PROPENSITY_SCORES, [scores_file(tmp_path / "scores.parquet", [0.1, 0.3, 0.6])],
                     idempotency_key="s1")
    newer = scores_file(tmp_path / "newer.parquet", [0.35], as_of=NOW + timedelta(1))
    aep.ingest_batch(scores, PROPENSITY_SCORES, [newer], idempotency_key="s2")
    people = profiles_file(tmp_path / "people.parquet", range(3), userid=[f"u{i}" for i in range(3)],
                           email=[f"user{i}@example.com" for i in range(3)],
                           first_name=[f"First{i}" for i in range(3)], last_name=["Last"] * 3)
    aep.ingest_batch(aep.ensure_dataset(PROFILES), PROFILES, [people], idempotency_key="p1")
    audience = aep.upsert_audience("Propensity - high", "Likely", 0.2, 0.5, scores)
    members = aep.audience_members(audience, scores)
    assert members.to_pylist() == [  # the latest score and the current profile of each member
        {"userid": "u0", "email": "user0@example.com", "first_name": "First0", "last_name": "Last", "propensity": 0.35},
        {"userid": "u1", "email": "user1@example.com", "first_name": "First1", "last_name": "Last", "propensity": 0.3}]
    storage = LocalStorage(root=str(tmp_path / "storage"))
    manifest = aep.activate_audience(audience, scores, storage, NOW)
    assert manifest.rows == 2 and manifest.prefix.startswith(audiences.activation_parent(audience.name))
    aep.activate_audience(audience, scores, storage, NOW + timedelta(hours=1))
    assert len(storage.complete_writes(audiences.activation_parent(audience.name))) == 1
