"""The live suite: the token, Query Service and dataset setup against a real AEP sandbox, run with
`pytest -m aep_live` and skipped unless AEP_ORG_ID, AEP_CLIENT_ID, AEP_CLIENT_SECRET, AEP_SCOPES and
AEP_SANDBOX_NAME are set."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from aep_assets.lib.datasets import PROFILES
from aep_assets.resources.aep.platform import AEPPlatform

live = pytest.mark.skipif(not all(os.environ.get(v) for v in (
    "AEP_ORG_ID", "AEP_CLIENT_ID", "AEP_CLIENT_SECRET", "AEP_SCOPES", "AEP_SANDBOX_NAME")),
    reason="needs AEP_ORG_ID, AEP_CLIENT_ID, AEP_CLIENT_SECRET, AEP_SCOPES, AEP_SANDBOX_NAME")


@pytest.fixture
def live_aep() -> AEPPlatform:
    """The AEPPlatform of the environment's credentials, as a Dagster run would build it."""
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
