"""HTTP under aepp for AEP mode: OAuth server-to-server token, TLS, bounded retries, redacted errors.

aepp 0.6.0 keeps a `requests.Session` per service object, passes `verify=False` on every call, fetches
IMS tokens with `verify=False`, retries through urllib3 without Retry-After, and returns 4xx bodies as
dicts. `AEPSession` replaces that session on every aepp connector we create:

- TLS verification is always on (the system CA store or `REQUESTS_CA_BUNDLE`), whatever aepp passes;
- the IMS token is ours (`TokenProvider`, fetched with TLS on); aepp never sees the client secret;
- 429 and connection errors before the request was sent are retried for every method; 5xx and read
  timeouts only for idempotent methods (a POST that timed out after Adobe acted would be sent again:
  `AEPMaybeApplied`, the caller looks it up first); with exponential backoff and full jitter, honouring
  `Retry-After`, a bounded number of times; a 401 refreshes the token once and repeats the request;
- any final status >= 400 raises `AEPError`, whose text names the method, path, status, Adobe's error
  title and request id, with every known secret replaced by `***`. Headers are never logged.

Also here, for every service module of the package: `paged`, the one loop over AEP's paged list
endpoints; `error_text`, Adobe's error objects as one line; `json_headers`, the content type of writes.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

log = logging.getLogger("aep_assets.aep")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")


def pause(seconds: float) -> None:
    """Every wait in AEP mode goes through here (tests replace it)."""
    time.sleep(seconds)


def gateway_url(environment: str) -> str:
    return "https://platform.adobe.io" if environment == "prod" else f"https://platform-{environment}.adobe.io"


def ims_url(environment: str) -> str:
    return "https://ims-na1.adobelogin.com" if environment == "prod" else "https://ims-na1-stg1.adobelogin.com"


def ims_token_url(environment: str) -> str:
    """Where OAuth server-to-server credentials get an access token."""
    return f"{ims_url(environment)}/ims/token/v3"


class Redactor:
    """Replaces every registered secret (client secret, tokens, S3 keys) in text with `***`."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *values: str | None) -> None:
        with self._lock:
            self._secrets.update(v for v in values if v and len(v) >= 6)

    def __call__(self, text: object) -> str:
        out = str(text)
        for secret in sorted(self._secrets, key=len, reverse=True):
            out = out.replace(secret, "***")
        return out


class AEPError(RuntimeError):
    """An Experience Platform call failed for good; the text holds no secret."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "", request_id: str | None = None):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.request_id = request_id


class AEPMaybeApplied(AEPError):
    """A request that is not idempotent got no definite answer (a 5xx, a read timeout): Adobe may have
    acted on it. It is not repeated blindly; the caller looks (by name, tag or key) before trying again."""


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def describe_error_body(response: requests.Response) -> str:
    """Adobe's error fields (title/detail/message/error_description/report), short; else the text start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        parts = [str(body[key]) for key in ("error_code", "errorCode", "code", "title", "type", "error", "message",
                                            "errorMessage", "detail", "error_description") if body.get(key)]
        report = body.get("report")
        if isinstance(report, dict) and report.get("detailed-message"):
            parts.append(str(report["detailed-message"]))
        if parts:
            return "; ".join(dict.fromkeys(parts))[:1000]
    return str(body)[:1000]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries for 429/5xx/connection errors
    backoff_seconds: float = 1.0  # first backoff ceiling; doubles each attempt
    max_backoff_seconds: float = 60.0
    max_retry_after_seconds: float = 300.0  # a longer Retry-After fails instead of stalling a run

    def delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** attempt)
        jittered = random.uniform(0, ceiling)
        return max(jittered, retry_after) if retry_after is not None else jittered


def retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class TokenProvider:
    """An IMS access token for OAuth server-to-server credentials, refreshed before it expires."""

    def __init__(self, environment: str, client_id: str, client_secret: str, scopes: str,
                 redact: Redactor, policy: RetryPolicy, timeout: float = 60.0):
        self.url = ims_token_url(environment)
        self._form = {"grant_type": "client_credentials", "client_id": client_id,
                      "client_secret": client_secret, "scope": scopes.replace(" ", "")}
        self._redact = redact
        self._policy = policy
        self._timeout = timeout
        self._session = requests.Session()
        self._session.mount("https://", HTTPAdapter(max_retries=0))
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        redact.add(client_secret)

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.time() > self._expires_at - 300:
                self._fetch()
            return self._token

    def refresh(self, stale: str | None = None) -> str:
        """A new token, unless another thread already replaced `stale`."""
        with self._lock:
            if stale is None or self._token == stale:
                self._fetch()
            return self._token

    def _fetch(self) -> None:
        for attempt in range(self._policy.attempts):
            try:
                response = self._session.post(self.url, data=self._form, timeout=self._timeout, verify=_verify())
            except requests.RequestException as error:
                if attempt + 1 >= self._policy.attempts:
                    raise AEPError(f"IMS token request failed: {type(error).__name__}: {self._redact(error)}") from None
                pause(self._policy.delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt + 1 < self._policy.attempts:
                pause(self._policy.delay(attempt, retry_after_seconds(response)))
                continue
            break
        if response.status_code != 200:
            raise AEPError(f"IMS token request failed: HTTP {response.status_code}: "
                           f"{self._redact(describe_error_body(response))} (check AEP_CLIENT_ID, "
                           "AEP_CLIENT_SECRET and AEP_SCOPES)", status=response.status_code)
        body = response.json()
        self._token = body["access_token"]
        self._expires_at = time.time() + float(body.get("expires_in", 3600))
        self._redact.add(self._token)
        log.info("IMS access token obtained (valid %.0f min)", float(body.get("expires_in", 3600)) / 60)


def _verify() -> bool | str:
    """TLS verification, always on: the CA bundle from the environment if one is set, else True."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


class AEPSession(requests.Session):
    """The session installed into aepp's connectors (and used directly for uploads)."""

    def __init__(self, tokens: TokenProvider, identity_headers: dict[str, str], gateway: str,
                 redact: Redactor, policy: RetryPolicy, timeout: tuple[float, float] = (15.0, 300.0)):
        super().__init__()
        self.mount("https://", HTTPAdapter(max_retries=0))  # retries are ours, not urllib3's
        self.mount("http://", HTTPAdapter(max_retries=0))
        self.tokens = tokens
        self.identity_headers = dict(identity_headers)
        self.gateway_host = urlsplit(gateway).netloc
        self.redact = redact
        self.policy = policy
        self.default_timeout = timeout

    def request(self, method, url, **kwargs):  # noqa: D401 - requests' signature
        kwargs["verify"] = _verify()  # aepp passes verify=False on every call: never honour it
        if not kwargs.get("timeout"):
            kwargs["timeout"] = self.default_timeout
        headers = dict(kwargs.pop("headers", None) or {})
        parts = urlsplit(url)
        to_platform, path = parts.netloc == self.gateway_host, parts.path
        refreshed, attempt = False, 0
        while True:
            token = self.tokens.token()
            if to_platform:
                headers.update(self.identity_headers)
                headers["Authorization"] = f"Bearer {token}"
            try:
                response = super().request(method, url, headers=headers, **kwargs)
            except requests.RequestException as error:
                attempt += 1
                self._may_retry_error(method, path, error, attempt)
                continue
            if response.status_code == 401 and to_platform and not refreshed:
                log.info("%s %s -> 401, refreshing the access token once", method, path)
                self.tokens.refresh(stale=token)
                refreshed = True
                continue
            if response.status_code in RETRY_STATUSES and self._may_retry_status(method, path, response, attempt):
                attempt += 1
                continue
            break
        if response.status_code >= 400:
            raise self.error(method, path, response)
        return response

    def _may_retry_error(self, method: str, path: str, error: requests.RequestException, attempt: int) -> None:
        """Wait before the next try, or raise: a request that may have reached Adobe (a read timeout, a
        connection dropped after sending) is tried again only if repeating it cannot duplicate anything."""
        summary = f"{type(error).__name__}: {self.redact(error)}"
        if not never_sent(error) and method.upper() not in IDEMPOTENT:
            raise AEPMaybeApplied(f"{method} {path}: {summary}; Adobe may have acted on it, so it is not "
                                  "repeated blindly")
        if attempt >= self.policy.attempts:
            raise AEPError(f"{method} {path} failed after {attempt} attempts: {summary}") from None
        delay = self.policy.delay(attempt - 1, None)
        log.warning("%s %s: %s, retry %d in %.1f s", method, path, type(error).__name__, attempt, delay)
        pause(delay)

    def _may_retry_status(self, method: str, path: str, response: requests.Response, attempt: int) -> bool:
        """429: Adobe did not act, any method is tried again. 5xx: only an idempotent one; for others
        Adobe may have acted (AEPMaybeApplied, the caller looks first)."""
        if response.status_code != 429 and method.upper() not in IDEMPOTENT:
            raise AEPMaybeApplied(str(self.error(method, path, response)) + "; Adobe may have acted on it, so "
                                  "it is not repeated blindly", status=response.status_code)
        wait = retry_after_seconds(response)
        if attempt + 1 >= self.policy.attempts or (wait is not None and wait > self.policy.max_retry_after_seconds):
            return False
        delay = self.policy.delay(attempt, wait)
        log.warning("%s %s -> %d, retry %d in %.1f s", method, path, response.status_code, attempt + 1, delay)
        pause(delay)
        return True

    def error(self, method: str, path: str, response: requests.Response) -> AEPError:
        """The final answer as an error: Adobe's error text and request id, no secret."""
        detail = self.redact(describe_error_body(response))
        request_id = response.headers.get("x-request-id") or response.headers.get("x-adobe-request-id")
        return AEPError(f"{method} {path} -> HTTP {response.status_code}: {detail}"
                        + (f" (Adobe request id {request_id})" if request_id else ""),
                        status=response.status_code, detail=detail, request_id=request_id)


def never_sent(error: requests.RequestException) -> bool:
    """True when the request cannot have reached Adobe: the connection was never made."""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError) and error.args:
        reason = getattr(error.args[0], "reason", error.args[0])
        return isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.NameResolutionError))
    return False


def paged(fetch: Callable[[Any, int], tuple[list[T], Any]], *, first: Any = 0, page_size: int = 100,
          limit: int | None = None) -> Iterator[T]:
    """Every item of an AEP list endpoint, page after page, fetched only as far as the caller reads.

    `fetch(start, size)` asks for at most `size` items from `start` and returns them with the start of the
    next page, or None after the last page: `offset_next` for endpoints paged by offset (Catalog,
    Segmentation); the Schema Registry pages by the last title instead. `limit` caps the items read.
    """
    start, seen = first, 0
    while limit is None or seen < limit:
        size = page_size if limit is None else min(page_size, limit - seen)
        items, start = fetch(start, size)
        yield from items
        seen += len(items)
        if start is None:
            return


def offset_next(start: int, items: list, size: int) -> int | None:
    """The next `start` of an endpoint paged by `start` and `limit`: a full page may have a successor."""
    return start + len(items) if len(items) == size else None


def error_text(errors: list[dict] | None, between: str = " ") -> str:
    """Adobe's error objects as one line, "code text; ...": each service names the text differently
    (`message`, Catalog's `description`, segmentation's `msg`)."""
    return "; ".join(between.join(str(part) for part in (e.get("code"), e.get("description") or e.get("msg")
                                                          or e.get("message")) if part) for e in errors or [])


def json_headers(header: dict) -> dict:
    """aepp's service headers with the JSON content type the descriptions require on writes."""
    return {**header, "Content-Type": "application/json"}
