"""One Experience Platform sandbox as this process talks to it.

`AEPClients` are aepp's service objects, built from a per-instance `ConnectObject`
(`aepp.configure(..., connectInstance=True)`), each with our `AEPSession` installed (see `http`).
`Sandbox` adds what every service module shares: the tenant id, waiting for Adobe's asynchronous work
(batches, queries, segment jobs, export runs), and creating things without ever creating them twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from aep_assets.lib import names
from aep_assets.resources.aep import http
from aep_assets.resources.aep.http import AEPMaybeApplied, AEPSession, Redactor, RetryPolicy, TokenProvider, log
from aep_assets.settings import SettingError

if TYPE_CHECKING:
    from aep_assets.resources.aep.platform import AEPPlatform

T = TypeVar("T")

AEPP_TOKEN = "issued-by-aep_assets"  # aepp's own token slot; AEPSession sets the real header per request


class AEPConfigError(SettingError):
    """AEP mode is missing configuration; the message names what to set."""


class AEPClients:
    """aepp service objects sharing one ConnectObject and one AEPSession."""

    def __init__(self, platform: AEPPlatform):
        import aepp
        from aepp import catalog, destinationinstanceservice, flowservice, ingestion, queryservice, schema, segmentation

        self.redact = Redactor()
        policy = RetryPolicy(attempts=platform.http_attempts, backoff_seconds=platform.http_backoff_seconds)
        self.tokens = TokenProvider(platform.environment, platform.client_id, platform.client_secret,
                                    platform.scopes, self.redact, policy)
        self.redact.add(platform.export_s3_secret_access_key)
        self.gateway = http.gateway_url(platform.environment)
        self.session = AEPSession(self.tokens, {"x-api-key": platform.client_id,
                                                "x-gw-ims-org-id": platform.org_id,
                                                "x-sandbox-name": platform.sandbox},
                                  self.gateway, self.redact, policy)
        # aepp never gets the client secret: it holds a placeholder token, AEPSession sets the real one.
        self.connect = aepp.configure(org_id=platform.org_id, client_id=platform.client_id, scopes=platform.scopes,
                                      sandbox=platform.sandbox, environment=platform.environment, retry=0,
                                      connectInstance=True, accesstoken=AEPP_TOKEN)
        config = self.connect.getConfigObject()
        config["connectionType"] = "oauthV2"
        config["date_limit"] = 2 ** 62  # aepp must never try to fetch a token itself (it would skip TLS)

        def service(cls, endpoint_key: str):
            client = cls(config=self.connect)
            client.connector.session = self.session
            client.connector.retry = 0
            client.endpoint = self.gateway + aepp.config.endpoints[endpoint_key]
            return client

        self.schema = service(schema.Schema, "schemas")
        self.catalog = service(catalog.Catalog, "catalog")
        self.ingestion = service(ingestion.DataIngestion, "ingestion")
        self.query = service(queryservice.QueryService, "query")
        self.segmentation = service(segmentation.Segmentation, "segmentation")
        self.flow = service(flowservice.FlowService, "flow")
        self.destinations = service(destinationinstanceservice.DestinationInstanceService, "destinationInstance")


class Sandbox:
    """The clients, the resource's settings (`config`, read only) and the disciplines shared by the services."""

    def __init__(self, config: AEPPlatform):
        self.config = config
        self.dialect = config.dialect
        self.api = AEPClients(config)
        self.redact = self.api.redact
        self._tenant: str | None = None

    def tenant(self) -> str:
        """The tenant id (without '_') that namespaces our XDM fields: configured, or the Schema Registry's."""
        if self._tenant is None:
            registry = self.api.schema
            tenant = self.config.tenant_id or registry.connector.getData(f"{registry.endpoint}/stats")["tenantId"]
            self._tenant = tenant.lstrip("_")
            names.identifier(self._tenant, "tenant id")
        return self._tenant

    def wait(self, what: str, check: Callable[[], T | None]) -> T:
        """Poll `check` with backoff until it returns a value, or raise TimeoutError; each wait is logged
        (what, how long so far, when the next look is), so a run waiting for hours says why."""
        config = self.config
        started = time.monotonic()
        delay, deadline = config.poll_seconds, started + config.wait_timeout_seconds
        while True:
            result = check()
            if result is not None:
                return result
            if time.monotonic() + delay > deadline:
                raise TimeoutError(f"{what}: not finished after {config.wait_timeout_seconds:.0f} s")
            log.info("waiting for %s: %.0f s so far, next look in %.0f s", what, time.monotonic() - started, delay)
            http.pause(delay)
            delay = min(delay * 2, config.poll_max_seconds)

    def created(self, what: str, lookup: Callable[[], T | None], create: Callable[[], T]) -> T:
        """A create call that is never repeated blindly: when Adobe may have acted on it without a definite
        answer (AEPMaybeApplied: a 5xx, a read timeout), what it would have created is looked up (by name,
        tag or key) and taken if it is there; only if it is not is the call made again."""
        policy = self.api.session.policy  # the same attempts and backoff as every other retried call
        for attempt in range(1, policy.attempts + 1):
            try:
                return create()
            except AEPMaybeApplied as error:
                found = lookup()
                if found is not None:
                    log.warning("%s: the platform had acted on the unanswered request; using what it created", what)
                    return found
                if attempt == policy.attempts:
                    raise
                delay = policy.delay(attempt - 1, None)
                log.warning("%s: %s; nothing was created, trying again in %.1f s", what, error, delay)
                http.pause(delay)
        raise AssertionError("unreachable")
