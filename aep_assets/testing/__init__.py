"""Testing aids for assets that use the AEP platform resource: a fake Experience Platform, served at the
HTTP level under aepp's own `requests` code, whose every exchange is checked against Adobe's API
descriptions (the OpenAPI/Swagger files of AdobeDocs/experience-platform-apis).

    from aep_assets.testing import fake_aep_platform

    with fake_aep_platform(query_service=LocalPlatform(database="my_test")) as (platform, fake):
        ...  # materialize your assets with resources={"platform": platform, ...}
    # leaving the block raises ContractViolation if any request or answer broke Adobe's contract

Query Service is a PostgreSQL database (the embedded one by default), so SQL runs for real; waits are
recorded in `fake.waits` instead of slept. Pytest users get the same as fixtures from
`aep_assets.testing.pytest_plugin` (`pytest_plugins = ["aep_assets.testing.pytest_plugin"]`).
The descriptions are read from AEP_ASSETS_OPENAPI_DIR (default `../shared/aep-openapi` beside the
repository, or beside the local repository it was cloned from); without them the exchanges are not
checked, and `require_contracts=True` makes that an error.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import responses

from aep_assets.resources.aep import http
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.resources.embedded_postgres import EmbeddedPostgres
from aep_assets.testing.contracts import Contracts, SpecsMissing
from aep_assets.testing.fake_aep import CLIENT_ID, CLIENT_SECRET, ORG_ID, SANDBOX, SCOPES, TENANT, FakeAEP

__all__ = ["AEPPlatformOverPostgres", "Contracts", "ContractViolation", "FakeAEP", "SpecsMissing",
           "fake_aep_platform", "fake_credentials"]


class ContractViolation(AssertionError):
    """Exchanges with the fake broke Adobe's API descriptions; the message lists them."""


class AEPPlatformOverPostgres(AEPPlatform):
    """The production AEPPlatform, whose Query Service is a PostgreSQL server in tests: the SQL it runs
    (the flat views, the project's SQL files) is rendered for PostgreSQL instead of Spark."""

    @property
    def dialect(self):
        return "postgres"


def fake_credentials(**overrides) -> dict:
    """AEPPlatform settings that the fake accepts (its organization, client, secret, sandbox, tenant)."""
    return {"org_id": ORG_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scopes": SCOPES,
            "sandbox": SANDBOX, "tenant_id": TENANT, "query_sslmode": "disable", **overrides}


@contextmanager
def fake_aep_platform(query_service=None, *, contracts: Contracts | None = None, require_contracts: bool = False,
                      **settings) -> Iterator[tuple[AEPPlatform, FakeAEP]]:
    """An AEPPlatform wired to a fresh fake platform, and the fake (to inspect calls or inject faults).

    `query_service`: a LocalPlatform whose database plays Query Service (default: a new database on the
    embedded server, dropped at the end). `settings` override AEPPlatform fields (poll intervals, retries, ...).
    """
    checks = contracts if contracts is not None else _contracts(require_contracts)
    address = (query_service or scratch_query_service()).address()
    waits: list[float] = []
    original_pause, http.pause = http.pause, waits.append
    platform = AEPPlatformOverPostgres(**fake_credentials(**settings))
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
            fake = FakeAEP(rsps, address.conninfo, address, checks)
            fake.waits = waits
            yield platform, fake
    finally:
        http.pause = original_pause
        platform.teardown_after_execution(None)
        if query_service is None:
            EmbeddedPostgres.drop_database(address)
    if fake.violations:
        raise ContractViolation("exchanges that break Adobe's API descriptions:\n"
                                + "\n".join(dict.fromkeys(fake.violations)))


def scratch_query_service():
    """A LocalPlatform on a new database of the embedded server: a fake's Query Service starts empty."""
    from aep_assets.resources.local_platform import LocalPlatform

    return LocalPlatform(database=f"aep_fake_{secrets.token_hex(4)}")


def _contracts(required: bool) -> Contracts | None:
    try:
        return Contracts()
    except SpecsMissing:
        if required:
            raise
        return None
