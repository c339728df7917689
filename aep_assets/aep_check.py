"""`make aep-check`: the first thing to run against a real sandbox. Read-only calls, one per service the
project uses, reporting per service whether the credentials, the permissions and the endpoints answer,
and whether the answers have the shapes the contract suite expects (when Adobe's API descriptions are
available). Nothing is created, changed or deleted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from aep_assets.resources.aep import http
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.settings import SettingError


@dataclass(frozen=True)
class Probe:
    service: str
    what: str  # the call, as a person would check it by hand
    call: Callable[[AEPPlatform], object]


def _get(service: str, path: str, params: dict | None = None) -> Callable[[AEPPlatform], object]:
    def call(platform: AEPPlatform) -> object:
        api = platform.api()
        client = getattr(api, service)
        return client.connector.getData(f"{client.endpoint}{path}", params=params)
    return call


def _query_service(platform: AEPPlatform) -> object:
    return platform.query("SELECT 1 AS one")["one"][0].as_py()


PROBES = (
    Probe("IMS", "POST /ims/token/v3 (client credentials)", lambda p: p.api().tokens.token() and "token"),
    Probe("Schema Registry", "GET /data/foundation/schemaregistry/stats", _get("schema", "/stats")),
    Probe("Catalog", "GET /data/foundation/catalog/dataSets?limit=1", _get("catalog", "/dataSets", {"limit": 1})),
    Probe("Catalog", "GET /data/foundation/catalog/batches?limit=1", _get("catalog", "/batches", {"limit": 1})),
    Probe("Query Service", "GET /data/foundation/query/connection_parameters",
          _get("query", "/connection_parameters")),
    Probe("Query Service", "SELECT 1 over the PostgreSQL protocol (sslmode=require)", _query_service),
    Probe("Segmentation", "GET /data/core/ups/segment/definitions?limit=1",
          _get("segmentation", "/segment/definitions", {"limit": 1})),
    Probe("Flow Service", "GET /data/foundation/flowservice/flows?limit=1", _get("flow", "/flows", {"limit": 1})),
)


def run_checks(platform: AEPPlatform, contracts=None) -> list[tuple[Probe, str | None]]:
    """Each probe with None when it answered as expected, else why not (Adobe's error with its request id,
    or how the answer differs from Adobe's API description when `contracts` are given)."""
    results = []
    for probe in PROBES:
        seen: list[str] = []
        hook = _contract_hook(contracts, seen) if contracts is not None else None
        session = platform.api().session
        if hook:
            session.hooks["response"].append(hook)
        try:
            probe.call(platform)
            results.append((probe, "; ".join(seen) or None))
        except http.AEPError as error:
            results.append((probe, str(error)))
        except Exception as error:  # a connection problem, a TLS problem: reported, not raised
            results.append((probe, f"{type(error).__name__}: {platform.redact(error)}"))
        finally:
            if hook:
                session.hooks["response"].remove(hook)
    return results


def _contract_hook(contracts, seen: list[str]):
    """A requests response hook that checks each answer against Adobe's API descriptions."""
    from aep_assets.testing.exchange import Exchange

    def check(response, **_):
        request = response.request
        body = request.body.encode() if isinstance(request.body, str) else request.body
        seen.extend(contracts.check(Exchange(request.method, request.url, dict(request.headers), body,
                                             response.status_code, dict(response.headers), response.content)))
    return check


def report(results: list[tuple[Probe, str | None]]) -> str:
    lines = []
    for probe, problem in results:
        lines.append(f"{'ok  ' if problem is None else 'FAIL'} {probe.service:<16}{probe.what}")
        if problem:
            lines.append(f"     {problem}")
    failed = sum(1 for _, problem in results if problem)
    lines.append(f"{len(results) - failed} of {len(results)} answered" + (
        "; see docs/aep_mode.md (permissions) for what each failure needs" if failed else ""))
    return "\n".join(lines)


def main() -> int:
    try:
        platform = AEPPlatform.from_env()
    except SettingError as error:
        print(f"aep_assets: {error}", file=sys.stderr)
        return 2
    results = run_checks(platform, _contracts())
    print(report(results))
    platform.teardown_after_execution(None)
    return 0 if all(problem is None for _, problem in results) else 1


def _contracts():
    """Adobe's API descriptions, to compare the answers with, when they are installed."""
    try:
        from aep_assets.testing.contracts import Contracts, SpecsMissing
    except ImportError:  # the 'testing' extra is not installed: answers are not compared
        return None
    try:
        return Contracts()
    except SpecsMissing as missing:
        print(f"(answers not compared with Adobe's API descriptions: {missing})")
        return None


if __name__ == "__main__":
    sys.exit(main())
