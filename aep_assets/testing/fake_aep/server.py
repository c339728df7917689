"""`FakeAEP`: the fake platform behind https://platform.adobe.io and IMS, served through `responses` under
aepp's `requests`.

It authenticates each request as Adobe does (a token it issued, the organization, client and sandbox
headers), replays the faults a test injected, routes the rest to the service handlers (one module per
service), and checks every exchange against Adobe's API descriptions when given `contracts`.
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import parse_qs, urlsplit

import responses

from aep_assets.testing.contracts import Contracts
from aep_assets.testing.exchange import Exchange
from aep_assets.testing.fake_aep.catalog import FakeCatalog
from aep_assets.testing.fake_aep.credentials import CLIENT_ID, CLIENT_SECRET, GATEWAY, IMS_TOKEN_URL, ORG_ID, SANDBOX
from aep_assets.testing.fake_aep.flows import FakeFlowService
from aep_assets.testing.fake_aep.query_service import FakeQueryService
from aep_assets.testing.fake_aep.registry import FakeSchemaRegistry
from aep_assets.testing.fake_aep.segmentation import FakeSegmentation

SERVICES = (FakeSchemaRegistry, FakeCatalog, FakeQueryService, FakeSegmentation, FakeFlowService)


class FakeAEP(FakeSchemaRegistry, FakeCatalog, FakeQueryService, FakeSegmentation, FakeFlowService):
    """The platform behind https://platform.adobe.io and IMS, for one test."""

    def __init__(self, rsps: responses.RequestsMock, conninfo: str, address, contracts: Contracts | None = None):
        super().__init__(conninfo, address)
        self.rsps, self.contracts = rsps, contracts
        self.violations: list[str] = []  # what the exchanges broke of Adobe's contracts
        self.routes = [(method, pattern, getattr(self, handler))
                       for service in SERVICES for method, pattern, handler in service.ROUTES]
        rsps.add_callback(responses.POST, IMS_TOKEN_URL, callback=self.ims)
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            rsps.add_callback(method, re.compile(re.escape(GATEWAY) + r"/.*"), callback=self.dispatch)

    def inject(self, method: str, path: str, status: int = 0, body: object = None, headers: dict | None = None,
               times: int = 1, error: Exception | None = None, acted: bool = False) -> None:
        """The next `times` requests matching method and path regex get this answer, or raise `error` in the
        client (a timeout, a refused connection); `acted`: the platform did the work before the answer was
        lost (a 5xx or read timeout after the effect)."""
        self.faults.append({"method": method, "path": re.compile(path), "status": status, "times": times,
                            "body": body if body is not None else {"title": "Injected", "status": status},
                            "headers": headers or {}, "error": error, "acted": acted})

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def calls(self, method: str | None = None, path: str = "") -> list[dict]:
        return [r for r in self.requests if (method is None or r["method"] == method) and re.search(path, r["path"])]

    def ims(self, request):
        return self._checked(request, *self._ims(request))

    def _ims(self, request):
        form = parse_qs(request.body if isinstance(request.body, str) else request.body.decode())
        self.requests.append({"method": "POST", "path": "/ims/token/v3", "form": form, "headers": request.headers})
        if form.get("client_secret") != [CLIENT_SECRET] or form.get("grant_type") != ["client_credentials"]:
            return 401, {}, json.dumps({"error": "invalid_client",
                                        "error_description": "invalid client_secret parameter"})
        token = f"eyFAKE-ims-access-token-{len(self.tokens) + 1}-{secrets.token_hex(8)}"
        self.tokens.append(token)
        self.valid_tokens.add(token)
        return 200, {}, json.dumps({"access_token": token, "token_type": "bearer", "expires_in": 86399})

    def dispatch(self, request):
        return self._checked(request, *self._dispatch(request))

    def _checked(self, request, status: int, headers: dict, text: str):
        """The answer, after checking the exchange against Adobe's contract."""
        if self.contracts is not None:
            body = request.body.encode() if isinstance(request.body, str) else request.body
            self.violations += self.contracts.check(Exchange(
                request.method, request.url, dict(request.headers), body, status,
                {"Content-Type": "application/json", **headers}, text.encode() if isinstance(text, str) else text))
        return status, headers, text

    def _dispatch(self, request):
        parts = urlsplit(request.url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = request.body
        record = {"method": request.method, "path": parts.path, "query": query, "headers": dict(request.headers),
                  "body": body}
        self.requests.append(record)
        for fault in self.faults:
            if fault["times"] and fault["method"] == request.method and fault["path"].search(parts.path):
                fault["times"] -= 1
                if fault["acted"]:
                    self._route(request, parts, query, body)
                if fault["error"] is not None:
                    raise fault["error"]
                return fault["status"], fault["headers"], json.dumps(fault["body"])
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self.valid_tokens:
            return 401, {}, json.dumps({"error_code": "401013", "message": "Oauth token is not valid"})
        expected = {"x-api-key": CLIENT_ID, "x-gw-ims-org-id": ORG_ID, "x-sandbox-name": SANDBOX}
        wrong = [k for k, v in expected.items() if request.headers.get(k) != v]
        if wrong:
            return 403, {}, json.dumps({"error_code": "403010", "message": f"bad headers {wrong}"})
        return self._route(request, parts, query, body)

    def _route(self, request, parts, query: dict, body):
        """The handler's answer to an authenticated request."""
        for method, pattern, handler in self.routes:
            match = re.fullmatch(pattern, parts.path)
            if method == request.method and match:
                parsed = body
                if isinstance(body, (str, bytes)) and "json" in request.headers.get("Content-Type", ""):
                    parsed = json.loads(body)
                status, payload = handler(*match.groups(), query=query, body=parsed, headers=request.headers)
                text = payload if isinstance(payload, str) else json.dumps(payload)
                return status, {"Content-Type": "application/json"}, text
        return 404, {}, json.dumps({"title": "Not Found", "detail": f"{request.method} {parts.path}"})

