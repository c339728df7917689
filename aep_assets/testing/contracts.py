"""Adobe's own API descriptions as the contract of AEP mode.

Every request the AEP platform sends to the (fake) gateway and every answer a fake gives are checked
against the OpenAPI/Swagger file of their service, from Adobe's repository AdobeDocs/
experience-platform-apis (`static/swagger-specs/`), read from a folder (`AEP_ASSETS_OPENAPI_DIR`,
default `../shared/aep-openapi` beside the repository or beside the local repository it was cloned
from), never copied into the project:

- the operation exists (method and path), its required parameters and headers are sent, and no query
  parameter is sent that the operation does not declare;
- request and response bodies match their schemas (openapi-core), and in strict mode (the specs never
  set `additionalProperties: false`) neither carries a field that its schema does not declare;
- where a spec contradicts its own examples or Adobe's guides, `overrides.py` patches it, each patch
  naming the page that settles it; the two calls no spec covers (the IMS token and the ad-hoc dataset
  export) are pinned to the guides' shapes there.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from jsonschema_path import SchemaPath
from openapi_core import Config, OpenAPI

from aep_assets.resources.aep import http
from aep_assets.settings import REPO_ROOT
from aep_assets.testing import overrides, schema_checks
from aep_assets.testing.exchange import Exchange

GATEWAY = http.gateway_url("prod")
# base path of each service on the gateway -> its description (flow service: the destinations view first,
# where the dataset-export flows are described, then the sources view)
SERVICES = (
    ("/data/foundation/schemaregistry", ("schema-registry.yaml",)),
    ("/data/foundation/catalog", ("catalog.yaml",)),
    ("/data/foundation/import", ("batch-ingestion.yaml",)),
    ("/data/foundation/query", ("query-service.yaml",)),
    ("/data/core/ups", ("segmentation.yaml",)),
    ("/data/foundation/flowservice", ("destinations.yaml", "flow-service.yaml")),
)


# libyaml's loader where PyYAML has it: the specs (1.4 MB) load about 8x faster.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def spec_folder() -> Path:
    """AEP_ASSETS_OPENAPI_DIR, else `../shared/aep-openapi` beside this checkout, else beside the local
    repository it was cloned from (a scratch clone in /tmp still finds the descriptions)."""
    if os.environ.get("AEP_ASSETS_OPENAPI_DIR"):
        return Path(os.environ["AEP_ASSETS_OPENAPI_DIR"])
    beside_checkout = REPO_ROOT.parent / "shared" / "aep-openapi"
    origin = _local_origin()
    if beside_checkout.is_dir() or origin is None:
        return beside_checkout
    return origin.parent / "shared" / "aep-openapi"


def _local_origin() -> Path | None:
    """The folder this checkout was cloned from, when that is a path on this machine."""
    found = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
                           capture_output=True, text=True, check=False)
    url = found.stdout.strip().removeprefix("file://")
    return Path(url) if url.startswith("/") and Path(url).is_dir() else None


class SpecsMissing(RuntimeError):
    """Adobe's API descriptions are not where the contract checks look for them."""


@dataclass
class Contracts:
    """The loaded descriptions; `check` returns what an exchange breaks (empty: nothing)."""

    folder: Path = field(default_factory=spec_folder)
    strict: bool = True
    loaded: dict[str, tuple[OpenAPI, dict]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.folder.is_dir():
            raise SpecsMissing(f"Adobe's API descriptions are not in {self.folder} (set AEP_ASSETS_OPENAPI_DIR to "
                               "a copy of AdobeDocs/experience-platform-apis static/swagger-specs)")

    def api(self, filename: str) -> tuple[OpenAPI, dict]:
        """The description of one service, overrides applied, as openapi-core's object and as a dict."""
        if filename not in self.loaded:
            document = _string_keys(yaml.load((self.folder / filename).read_text(), Loader=YAML_LOADER))
            if document.get("swagger") == "2.0":
                document = swagger2_to_openapi3(document)
            document = overrides.apply(filename, document)
            base = next(prefix for prefix, files in SERVICES if filename in files)
            document["servers"] = [{"url": GATEWAY + base}]
            config = Config(spec_validator_cls=None,
                            extra_media_type_deserializers={"application/json-patch+json": json.loads})
            self.loaded[filename] = (OpenAPI(SchemaPath.from_dict(document), config=config), document)
        return self.loaded[filename]

    def check(self, exchange: Exchange) -> list[str]:
        """Problems of one exchange with the gateway, each naming the operation."""
        if exchange.url.startswith(overrides.IMS_TOKEN_URL):
            return overrides.check_ims_token(exchange)
        if exchange.path == overrides.ADHOC_RUN_PATH:
            return overrides.check_adhoc_export(exchange)
        for prefix, files in SERVICES:
            if exchange.path.startswith(prefix + "/") or exchange.path == prefix:
                return self._check_described(exchange, files)
        return [f"{exchange.method} {exchange.path}: no Adobe API description covers this path"]

    def _check_described(self, exchange: Exchange, files: tuple[str, ...]) -> list[str]:
        """Against the first description that has the operation and accepts the exchange; if none accepts
        it, what the first one that has it says (Flow Service is described twice, by view)."""
        reported: list[str] | None = None
        for filename in files:
            api, document = self.api(filename)
            found = find_operation(document, exchange.method, exchange.path.removeprefix(_base(document)))
            if found is None:
                continue
            template, described = found
            where = f"{filename} {exchange.method} {template}"
            problems = [f"{where}: {p}" for p in schema_checks.request_problems(api, document, template, described,
                                                                                 exchange, self.strict)]
            problems += [f"{where} -> {exchange.status}: {p}" for p in schema_checks.response_problems(
                api, document, described, exchange, self.strict)]
            if not problems:
                return []
            reported = problems if reported is None else reported
        return reported if reported is not None else [
            f"{' / '.join(files)}: no operation {exchange.method} {exchange.path}"]


def _base(document: dict) -> str:
    return urlsplit(document["servers"][0]["url"]).path


def _string_keys(node):
    """YAML turns response codes into integers; the descriptions need them as strings."""
    if isinstance(node, dict):
        return {str(key): _string_keys(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_string_keys(value) for value in node]
    return node


def find_operation(document: dict, method: str, path: str) -> tuple[str, dict] | None:
    """(template, operation) of the path that matches, literal segments before templated ones."""
    segments = path.strip("/").split("/")
    candidates = []
    for template, item in document["paths"].items():
        parts = template.strip("/").split("/")
        if len(parts) != len(segments) or method.lower() not in item:
            continue
        if all(p == s or (p.startswith("{") and p.endswith("}")) for p, s in zip(parts, segments, strict=True)):
            literal = sum(1 for p in parts if not p.startswith("{"))
            candidates.append((literal, template, item[method.lower()]))
    if not candidates:
        return None
    _, template, operation = max(candidates, key=lambda c: c[0])
    return template, operation


def swagger2_to_openapi3(document: dict) -> dict:
    """Enough of Swagger 2.0 as OpenAPI 3.0 for validation (the Schema Registry's description)."""
    text = json.dumps(document).replace('"#/definitions/', '"#/components/schemas/')
    document = json.loads(text)
    shared = document.get("parameters", {})
    converted = {"openapi": "3.0.1", "info": document["info"], "paths": {},
                 "components": {"schemas": document.get("definitions", {}), "parameters": {}}}
    for name, parameter in shared.items():
        if parameter.get("in") != "body":
            converted["components"]["parameters"][name] = _parameter3(parameter)
    for template, item in document["paths"].items():
        converted["paths"][template] = {method: _operation3(operation, shared, document)
                                        for method, operation in item.items() if isinstance(operation, dict)}
    return converted


def _parameter3(parameter: dict) -> dict:
    schema = {k: v for k, v in parameter.items() if k in ("type", "format", "enum", "items", "default", "pattern")}
    return {k: v for k, v in parameter.items() if k in ("name", "in", "required", "description")} | {"schema": schema}


def _operation3(operation: dict, shared: dict, document: dict) -> dict:
    out = {k: v for k, v in operation.items() if k not in ("parameters", "responses", "consumes", "produces")}
    consumes = (operation.get("consumes") or document.get("consumes") or ["application/json"])[0]
    produces = (operation.get("produces") or document.get("produces") or ["application/json"])[0]
    parameters = []
    for parameter in operation.get("parameters", []):
        resolved = shared[parameter["$ref"].split("/")[-1]] if "$ref" in parameter else parameter
        if resolved.get("in") == "body":
            out["requestBody"] = {"required": bool(resolved.get("required")),
                                  "content": {consumes: {"schema": resolved.get("schema", {})}}}
        elif "$ref" in parameter:
            parameters.append({"$ref": "#/components/parameters/" + parameter["$ref"].split("/")[-1]})
        else:
            parameters.append(_parameter3(resolved))
    out["parameters"] = parameters
    out["responses"] = {code: {"description": answer.get("description") or "",
                               **({"content": {produces: {"schema": answer["schema"]}}} if "schema" in answer else {})}
                        for code, answer in operation.get("responses", {}).items()}
    return out


