"""Checks of one exchange against one described operation: parameters, bodies, undeclared fields."""

from __future__ import annotations

from dataclasses import dataclass

import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from aep_assets.testing import overrides
from aep_assets.testing.exchange import Exchange

SAMPLED_ITEMS = 50  # items of a long array checked for undeclared fields (the first ones)


@dataclass
class _Response:
    """An answer in the shape openapi-core reads."""

    data: bytes
    status_code: int
    content_type: str
    headers: dict


def openapi_request(exchange: Exchange) -> RequestsOpenAPIRequest:
    prepared = requests.Request(exchange.method, exchange.url, headers=exchange.headers).prepare()
    prepared.body = exchange.body
    return RequestsOpenAPIRequest(prepared)


def request_problems(api: OpenAPI, document: dict, template: str, operation: dict, exchange: Exchange,
                     strict: bool) -> list[str]:
    problems = []
    declared = {p["name"] for p in _parameters(document, template, operation) if p.get("in") == "query"}
    problems += [f"query parameter {name!r} is not declared" for name in sorted(set(exchange.query) - declared)]
    try:
        api.validate_request(openapi_request(exchange))
    except Exception as error:  # openapi-core raises one of many OpenAPIError subclasses
        problems.append(f"request: {_describe(error)}")
    body = exchange.request_json()
    schema = _body_schema(operation.get("requestBody"), document, exchange.content_type)
    if strict and body is not None and schema is not None:
        problems += [f"request body: {p}" for p in undeclared(body, schema, document)]
    return problems


def response_problems(api: OpenAPI, document: dict, operation: dict, exchange: Exchange, strict: bool) -> list[str]:
    answers = {code: _resolve(answer, document) for code, answer in operation.get("responses", {}).items()}
    answer = answers.get(str(exchange.status)) or answers.get(f"{str(exchange.status)[0]}XX") or answers.get("default")
    if answer is None:
        return [] if exchange.status >= 400 else [f"status {exchange.status} is not declared ({sorted(answers)})"]
    if not answer.get("content"):
        if exchange.status >= 400:
            return [f"error body: {p}" for p in overrides.check_undescribed_error(exchange.response_json())]
        return [] if not exchange.response_body else [f"a body where the description declares none: "
                                                        f"{exchange.response_body[:80]!r}"]
    problems = []
    try:
        api.validate_response(openapi_request(exchange), _Response(
            exchange.response_body, exchange.status, exchange.response_content_type or "application/json",
            exchange.response_headers))
    except Exception as error:
        problems.append(f"response: {_describe(error)}")
    body = exchange.response_json()
    schema = _body_schema(answer, document, exchange.response_content_type)
    if strict and body is not None and schema is not None:
        problems += [f"response body: {p}" for p in undeclared(body, schema, document)]
    return problems


def _parameters(document: dict, template: str, operation: dict) -> list[dict]:
    shared = document["paths"][template].get("parameters", [])
    return [_resolve(p, document) for p in [*shared, *operation.get("parameters", [])]]


def _body_schema(container: dict | None, document: dict, content_type: str) -> dict | None:
    if not container:
        return None
    content = _resolve(container, document).get("content", {})
    media = content.get(content_type.split(";")[0].strip()) or next(
        (v for k, v in content.items() if "json" in k), None)
    return media.get("schema") if media else None


def _resolve(node: dict, document: dict) -> dict:
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        target = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
        seen += 1
        if seen > 50:
            raise ValueError("a $ref cycle")
    return node


def _describe(error: Exception) -> str:
    """openapi-core's error with the schema errors under it, the innermost of an anyOf included."""
    details = [str(error)[:200]]
    inner: BaseException | None = error
    while inner is not None:
        for cause in getattr(inner, "schema_errors", None) or []:
            for each in _leaves(cause)[:8]:  # under an anyOf: what each branch said
                details.append(f"{'/'.join(map(str, each.absolute_path)) or '$'}: {each.message[:300]}")
        inner = inner.__cause__
    return " | ".join(dict.fromkeys(details))


def _leaves(error) -> list:
    return [leaf for child in error.context for leaf in _leaves(child)] if error.context else [error]


def undeclared(value: object, schema: dict, document: dict, where: str = "$") -> list[str]:
    """Fields of `value` that `schema` does not declare, at any depth (`allOf`, `oneOf` and `anyOf`
    contribute their properties; an object schema without properties, or with additionalProperties
    set, is open)."""
    schema = _resolve(schema, document)
    if isinstance(value, dict):
        properties, extra = _declared(schema, document)
        problems = []
        for key, item in value.items():
            if key in properties:
                problems += undeclared(item, properties[key], document, f"{where}.{key}")
            elif isinstance(extra, dict):
                problems += undeclared(item, extra, document, f"{where}.{key}")
            elif extra is False:
                problems.append(f"{where}.{key} is not declared")
        return problems
    if isinstance(value, list):
        items = _items(schema, document)
        if items is None:
            return []
        return [p for index, item in enumerate(value[:SAMPLED_ITEMS])
                for p in undeclared(item, items, document, f"{where}[{index}]")]
    return []


def _declared(schema: dict, document: dict) -> tuple[dict, dict | bool]:
    """(properties, what other keys may be: a schema, True for anything, False for nothing)."""
    properties: dict = {}
    extra: dict | bool = False
    parts = [schema]
    while parts:
        part = _resolve(parts.pop(), document)
        for name, declared in part.get("properties", {}).items():
            name = "$ref" if name == "$ref " else name  # the Schema Registry's spelling of the XDM keyword
            # declared by several parts of a composition: a value may use what any of them declares
            properties[name] = {"anyOf": [properties[name], declared]} if name in properties else declared
        additional = part.get("additionalProperties")
        if additional not in (None, False):
            extra = additional if isinstance(additional, dict) and additional else True
        for key in ("allOf", "oneOf", "anyOf"):
            parts.extend(part.get(key, []))
    if not properties and extra is False:
        extra = True  # a free-form object: nothing declared, nothing to refuse
    return properties, extra


def _items(schema: dict, document: dict) -> dict | None:
    """The schema of an array's items; where several parts of a composition describe them, all of them."""
    found, parts = [], [schema]
    while parts:
        part = _resolve(parts.pop(), document)
        if "items" in part:
            found.append(part["items"])
        for key in ("allOf", "oneOf", "anyOf"):
            parts.extend(part.get(key, []))
    return None if not found else found[0] if len(found) == 1 else {"allOf": found}
