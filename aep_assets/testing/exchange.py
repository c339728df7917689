"""One request to the gateway and the answer it got: what the contract checks read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


@dataclass
class Exchange:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    status: int
    response_headers: dict[str, str]
    response_body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.url).query, keep_blank_values=True)

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")

    @property
    def response_content_type(self) -> str:
        return next((v for k, v in self.response_headers.items() if k.lower() == "content-type"), "")

    def request_json(self) -> object:
        return _json(self.body) if "json" in self.content_type else None

    def response_json(self) -> object:
        return _json(self.response_body)


def _json(raw: bytes | str | None) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
