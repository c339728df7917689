"""Pytest fixtures over `aep_assets.testing`: `pytest_plugins = ["aep_assets.testing.pytest_plugin"]`.

- `aep_contracts`: Adobe's API descriptions, loaded once; without them the tests that need them skip,
  naming the folder, and fail instead under CI=true.
- `aep_query_service`: the PostgreSQL database that plays Query Service (a new database on the embedded
  server; override it to use your own).
- `aep_fake_platform`: (platform, fake), a production AEPPlatform wired to a fresh fake; the test fails
  if any exchange broke Adobe's contract.
"""

from __future__ import annotations

import os

import pytest

from aep_assets.resources.embedded_postgres import EmbeddedPostgres
from aep_assets.testing import fake_aep_platform, scratch_query_service
from aep_assets.testing.contracts import Contracts, SpecsMissing


@pytest.fixture(scope="session")
def aep_contracts() -> Contracts:
    try:
        return Contracts()
    except SpecsMissing as missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} (CI runs the contract tests; they never skip there)")
        pytest.skip(str(missing))


@pytest.fixture
def aep_query_service():
    """The fake's Query Service: a new database of the embedded server, dropped after the test."""
    server = scratch_query_service()
    yield server
    EmbeddedPostgres.drop_database(server.address())


@pytest.fixture
def aep_fake_platform(aep_query_service, aep_contracts):
    with fake_aep_platform(aep_query_service, contracts=aep_contracts) as (platform, fake):
        yield platform, fake
