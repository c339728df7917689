"""Real local resources for the tests: one embedded PostgreSQL server per session, a fresh
database, storage folder and MLflow store per test that asks for them; for AEP mode, the fake platform
and AEPPlatforms wired to it."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import boto3
import pytest
import responses
from moto.server import ThreadedMotoServer

# Before any project import: everything the tests write goes to a throwaway home that the
# unprivileged PostgreSQL user can traverse (pytest's own tmp folders are private to root).
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="aep-assets-test-", dir="/tmp"))
_SESSION_HOME.chmod(0o755)
os.environ["AEP_ASSETS_HOME"] = str(_SESSION_HOME)
os.environ["DAGSTER_HOME"] = str(_SESSION_HOME / "dagster")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
(_SESSION_HOME / "dagster").mkdir()

pytest_plugins = ["aep_assets.testing.pytest_plugin"]  # aep_contracts, aep_fake_platform

from aep_assets.resources.aep import http  # noqa: E402
from aep_assets.resources.aep.platform import AEPPlatform  # noqa: E402
from aep_assets.resources.embedded_postgres import EmbeddedPostgres  # noqa: E402
from aep_assets.resources.local_platform import LocalPlatform  # noqa: E402
from aep_assets.resources.storage import LocalStorage, S3Storage  # noqa: E402
from aep_assets.resources.tracking import MlflowTracking  # noqa: E402
from aep_assets.testing import AEPPlatformOverPostgres, fake_credentials  # noqa: E402
from aep_assets.testing.fake_aep import FakeAEP  # noqa: E402
from aep_assets_tests.factories import free_port  # noqa: E402


@pytest.fixture(scope="session")
def session_home() -> Path:
    return _SESSION_HOME


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """moto's S3 as a real HTTP server on 127.0.0.1 (boto3 and dagster-aws talk to it as to AWS)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch):
    """Makes a bucket on moto's S3 server and returns an S3Storage on it; moto's test credentials and
    region are in the environment, so boto3 and dagster-aws find them as they would on AWS."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)

    def make(bucket: str, prefix: str = "aep") -> S3Storage:
        boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
        return S3Storage(bucket=bucket, prefix=prefix, endpoint_url=moto_endpoint, region_name="us-east-1")

    return make


@pytest.fixture(scope="session")
def embedded_server(session_home):
    server = EmbeddedPostgres(session_home / "postgres")
    server.ensure_running()
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def session_home_removed_at_the_end(session_home):
    """The session's home holds a whole PostgreSQL cluster (gigabytes of WAL after the big tests): removed
    once every test is done, its server stopped first."""
    yield
    EmbeddedPostgres(session_home / "postgres").remove()
    shutil.rmtree(session_home, ignore_errors=True)


@pytest.fixture
def platform(embedded_server, session_home) -> LocalPlatform:
    """A LocalPlatform on its own empty database of the session's server."""
    return LocalPlatform(home=str(session_home), database=f"test_{secrets.token_hex(4)}")


@pytest.fixture
def aep_query_service(platform) -> LocalPlatform:
    """Query Service of the fake platform (aep_assets.testing.pytest_plugin): the test's own database."""
    return platform


@pytest.fixture
def home(tmp_path_factory, monkeypatch) -> Path:
    """A per-test AEP_ASSETS_HOME for storage, synthetic files and MLflow (the server stays shared)."""
    path = Path(tempfile.mkdtemp(prefix="aep-home-", dir=_SESSION_HOME))
    path.chmod(0o755)
    monkeypatch.setenv("AEP_ASSETS_HOME", str(path))
    return path


@pytest.fixture
def storage(home) -> LocalStorage:
    return LocalStorage(root=str(home / "storage"))


@pytest.fixture
def tracking(home) -> MlflowTracking:
    return MlflowTracking()


@pytest.fixture(autouse=True)
def no_inherited_mlflow_uri(monkeypatch):
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; a later test building its resources
    from the environment would otherwise pick up an earlier test's registry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --- AEP mode: aepp's own `requests` code against the fake platform ---------------------------------
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


@pytest.fixture
def make_aep():
    """Builds AEPPlatforms with the fake's credentials and four HTTP attempts, settings overridable by
    name; their Query Service connections are closed after the test, so no database is left in use."""
    made: list[AEPPlatform] = []

    def make(**overrides) -> AEPPlatform:
        made.append(AEPPlatformOverPostgres(**fake_credentials(http_attempts=4, http_backoff_seconds=0.5,
                                                               **overrides)))
        return made[-1]

    yield make
    for resource in made:
        resource.teardown_after_execution(None)


@pytest.fixture
def aep(fake, sleeps, make_aep) -> AEPPlatform:
    """The AEPPlatform most tests use: default settings, on the fake, waits recorded."""
    return make_aep()
