"""Where Adobe's API descriptions need a correction, and the two calls no description covers.

Each patch names the page that settles it. Everything else follows the descriptions as published.
"""

from __future__ import annotations

import copy
from urllib.parse import parse_qs

import jsonschema

from aep_assets.resources.aep import http
from aep_assets.testing.exchange import Exchange

IMS_TOKEN_URL = http.ims_token_url("prod")
ADHOC_RUN_PATH = "/data/core/activation/disflowprovider/adhocrun"
ADHOC_DATASET_ACCEPT = "application/vnd.adobe.adhoc.dataset.activation+json; version=1"


def apply(filename: str, document: dict) -> dict:
    """The description with the corrections for its file."""
    document = copy.deepcopy(document)
    for patch in PATCHES.get(filename, ()):
        patch(document)
    return document


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _catalog_validator_errors(document: dict) -> None:
    """catalog.yaml: `description: null` and an operation listing the x-api-key parameter twice, which
    OpenAPI forbids (the file's own validator errors; the Catalog API reference page renders them once)."""
    for node in _walk(document):
        if isinstance(node, dict) and "description" in node and node["description"] is None:
            node["description"] = ""
        if isinstance(node, dict) and isinstance(node.get("parameters"), list):
            seen, unique = set(), []
            for parameter in node["parameters"]:
                key = parameter.get("$ref") or (parameter.get("name"), parameter.get("in"))
                if key not in seen:
                    seen.add(key)
                    unique.append(parameter)
            node["parameters"] = unique


def _operation(document: dict, path: str, method: str) -> dict:
    return document["paths"][path][method]


def _json_schema(container: dict, schema: dict) -> None:
    container["content"] = {"application/json": {"schema": schema}}


def _registry_next_may_be_null(document: dict) -> None:
    """schema-registry.yaml: `_page.next` and `_links.next` are typed string, but the same description
    says "Contains null if this is the last or only page" and its example shows null."""
    schemas = document["components"]["schemas"]
    schemas["listResponseBasic"]["properties"]["_page"]["properties"]["next"]["nullable"] = True
    schemas["linksBasic"]["properties"]["next"]["nullable"] = True


def _registry_resource_fields(document: dict) -> None:
    """schema-registry.yaml: its own examples of schemas and field groups carry meta:class, meta:containerId
    and meta:tenantNamespace, which their schemas do not declare; its descriptor examples give
    xdm:sourceVersion as the integer 1, declared a string; and a JSON Patch `value` is any JSON value
    (RFC 6902; the "Enable a schema for Profile" guide adds the array ["union"]), declared a string."""
    schemas = document["components"]["schemas"]
    schemas["lookupResourceCore"]["properties"].update({
        name: {"type": "string"} for name in ("meta:class", "meta:containerId", "meta:tenantNamespace")})
    for node in _walk(schemas):
        if isinstance(node, dict) and isinstance(node.get("properties"), dict):
            version = node["properties"].get("xdm:sourceVersion")
            if isinstance(version, dict) and version.get("type") == "string":
                version.pop("type")
            value = node["properties"].get("value")
            if {"op", "path"} <= set(node["properties"]) and isinstance(value, dict):
                value.pop("type", None)


def _registry_identity_descriptor(document: dict) -> None:
    """schema-registry.yaml: POST /tenant/descriptors describes the fields common to every descriptor only;
    an identity descriptor adds xdm:namespace, xdm:property and xdm:isPrimary ("Descriptors endpoint" guide,
    identity descriptor; the same file's own identityDescriptorResponse)."""
    operation = _operation(document, "/tenant/descriptors", "post")
    identity = {"$ref": "#/components/schemas/identityDescriptorResponse"}
    request = operation["requestBody"]["content"]["application/json"]
    request["schema"] = {"anyOf": [request["schema"], identity]}
    created = operation["responses"]["201"]["content"]["application/json"]
    created["schema"] = {"anyOf": [created["schema"], identity]}


def _segment_definitions_list(document: dict) -> None:
    """segmentation.yaml: GET /segment/definitions is described as ONE segment definition, but the same
    page's example and the "Segment definitions endpoint" guide return {segments, page, link}."""
    page = {"type": "object", "properties": {name: {"type": "integer"} for name in (
        "totalCount", "totalPages", "pageOffset", "pageSize", "limit")} | {
        "sortField": {"type": "string"}, "sort": {"type": "string"}}}
    _json_schema(_operation(document, "/segment/definitions", "get")["responses"]["200"], {
        "type": "object", "required": ["segments"], "properties": {
            "segments": {"type": "array", "items": {"$ref": "#/components/schemas/SegmentDefinition"}},
            "page": page, "link": {"type": "object", "properties": {"next": {"type": "string"}}}}})


def _large_file_answers_201(document: dict) -> None:
    """batch-ingestion.yaml: INITIALIZE and COMPLETE of a large file are described with 200; the "Batch
    ingestion API: large files" guide answers 201 Created to both."""
    operation = _operation(document, "/batches/{batchId}/datasets/{datasetId}/files/{filePath}", "post")
    operation["responses"]["201"] = {"description": "Created (the large-file guide)"}


def _batch_formats_and_states(document: dict) -> None:
    """batch-ingestion.yaml: the request's inputFormat.format enum is JSON/Parquet/CSV but its own example
    is `json` and the response's enum is lowercase (the batch ingestion guides send "parquet"); a new
    batch's status is "loading" in the Catalog "Create a batch" example, an aborted or reverted one
    "aborted" or "deleted" (batch ingestion API guide: abort, delete a batch), all missing from the enum."""
    for node in _walk(document):
        if isinstance(node, dict) and isinstance(node.get("enum"), list):
            values = node["enum"]
            if "Parquet" in values:
                node["enum"] = values + [v.lower() for v in values if v.lower() not in values]
            if {"processing", "success", "failed"} <= set(values) and "loading" not in values:
                node["enum"] = values + ["loading", "aborted", "deleted"]


def _large_file_chunks_are_binary(document: dict) -> None:
    """batch-ingestion.yaml: a large-file chunk (PATCH) is described as multipart/form-data; the "Batch
    ingestion API: large files" guide sends the bytes as application/octet-stream with Content-Range."""
    operation = _operation(document, "/batches/{batchId}/datasets/{datasetId}/files/{filePath}", "patch")
    operation["requestBody"]["content"]["application/octet-stream"] = {"schema": {"type": "string",
                                                                                 "format": "binary"}}


def _catalog_json_patch(document: dict) -> None:
    """catalog.yaml: PATCH /dataSets/{id} describes its application/json-patch+json body as a dataset object,
    its own example (and RFC 6902) as an array of operations; and its content-type header lists only
    application/json."""
    operation = _operation(document, "/dataSets/{DATASET_ID}", "patch")
    operation["requestBody"]["content"]["application/json-patch+json"]["schema"] = {"type": "array", "items": {
        "type": "object", "required": ["op", "path"],
        "properties": {"op": {"type": "string", "enum": ["add", "remove", "replace", "move", "copy", "test"]},
                       "path": {"type": "string"}, "value": {}, "from": {"type": "string"}}}}
    for parameter in operation["parameters"]:
        resolved = parameter
        if "$ref" in parameter:
            resolved = document["components"]["parameters"][parameter["$ref"].split("/")[-1]]
            if resolved.get("name", "").lower() == "content-type":
                parameter.clear()
                parameter.update(copy.deepcopy(resolved))
                resolved = parameter
        if resolved.get("name", "").lower() == "content-type" and "enum" in resolved.get("schema", {}):
            resolved["schema"]["enum"] = [*resolved["schema"]["enum"], "application/json-patch+json"]


def _destination_flows_have_names(document: dict) -> None:
    """destinations.yaml: its dataflow objects (GET /flows items) lack `name` and `flowSpec`, which the
    flows are created with and which its own examples and the sources view (flow-service.yaml) show."""
    document["components"]["schemas"]["BaseFlowItem"]["properties"].update({
        "name": {"type": "string"},
        "flowSpec": {"type": "object", "properties": {"id": {"type": "string"}, "version": {"type": "string"}}}})


def _flow_request_versions(document: dict) -> None:
    """destinations.yaml: a dataflow request with scheduleParams is the V2 batch request (the "Export datasets
    by using the Flow Service API" guide); the V1 and streaming requests have no schedule, but nothing in
    them refuses one, so any schedule passed as V1: they refuse the fields they do not declare."""
    schemas = document["components"]["schemas"]
    for name in ("Create_Batch_Destination_Flow_Request", "Create_Streaming_Destination_Flow_Request"):
        schemas[name]["additionalProperties"] = False


def _run_activities_spelling(document: dict) -> None:
    """flow-service.yaml: a run's `activities` are spelled `activites` (the "Monitor dataflows" guide and
    the API say activities)."""
    for node in _walk(document):
        if isinstance(node, dict) and isinstance(node.get("properties"), dict) and "activites" in node["properties"]:
            node["properties"]["activities"] = node["properties"].pop("activites")


def _connections_are_listed(document: dict) -> None:
    """destinations.yaml: GET /connections ("Retrieve a list of base connections") is described as one
    connection; the list comes as {items: [...]}, as the same file's other listings and flow-service.yaml's
    GET /connections give it."""
    answer = _operation(document, "/connections", "get")["responses"]["200"]
    media = answer["content"]["application/json"]
    media["schema"] = {"type": "object", "properties": {"items": {"type": "array", "items": media["schema"]}}}


def _overlapping_one_of(document: dict) -> None:
    """destinations.yaml: its oneOf branches (batch and streaming flows, V1 and V2 flow requests) overlap,
    none forbids the other's fields and there is no discriminator, so every valid payload matches several
    branches and JSON Schema's oneOf refuses it; anyOf is what the descriptions mean."""
    for node in _walk(document):
        if isinstance(node, dict) and "oneOf" in node:
            node["anyOf"] = node.pop("oneOf")


PATCHES: dict[str, tuple] = {
    "catalog.yaml": (_catalog_validator_errors, _catalog_json_patch),
    "schema-registry.yaml": (_registry_next_may_be_null, _registry_resource_fields, _registry_identity_descriptor),
    "segmentation.yaml": (_segment_definitions_list,),
    "batch-ingestion.yaml": (_large_file_answers_201, _large_file_chunks_are_binary, _batch_formats_and_states),
    "flow-service.yaml": (_run_activities_spelling,),
    "destinations.yaml": (_overlapping_one_of, _destination_flows_have_names, _flow_request_versions,
                          _connections_are_listed),
}


# --- the IMS token: "OAuth Server-to-Server credential implementation guide" (developer.adobe.com,
# developer-console/docs/guides/authentication/ServerToServerAuthentication/implementation) -----------
IMS_TOKEN_FORM = {"grant_type", "client_id", "client_secret", "scope"}
IMS_TOKEN_RESPONSE = {"type": "object", "required": ["access_token", "token_type", "expires_in"],
                      "additionalProperties": False,
                      "properties": {"access_token": {"type": "string"}, "token_type": {"const": "bearer"},
                                     "expires_in": {"type": "integer"}}}
IMS_ERROR = {"type": "object", "required": ["error"], "additionalProperties": False,
             "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}}}


def check_ims_token(exchange: Exchange) -> list[str]:
    where = "IMS POST /ims/token/v3 (no description: the OAuth server-to-server guide)"
    body = exchange.body.decode() if isinstance(exchange.body, bytes) else (exchange.body or "")
    form = parse_qs(body, keep_blank_values=True)
    problems = [f"{where}: form field {name!r} is not in the guide" for name in sorted(set(form) - IMS_TOKEN_FORM)]
    problems += [f"{where}: form field {name!r} is missing" for name in sorted(IMS_TOKEN_FORM - set(form))]
    if form.get("grant_type") != ["client_credentials"]:
        problems.append(f"{where}: grant_type must be client_credentials")
    schema = IMS_TOKEN_RESPONSE if exchange.status == 200 else IMS_ERROR
    return problems + [f"{where} -> {exchange.status}: {p}" for p in _against(exchange.response_json(), schema)]


# --- the ad-hoc dataset export: "Export datasets by using the Flow Service API" (Experience League,
# experience-platform/destinations/api/export-datasets). ad-hoc-activation.yaml describes audience
# activation only; the dataset variant is the guide's request and answer. -------------------------------
ADHOC_DATASET_REQUEST = {
    "type": "object", "required": ["activationInfo"], "additionalProperties": False,
    "properties": {"activationInfo": {
        "type": "object", "required": ["destinations"], "additionalProperties": False,
        "properties": {"destinations": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["flowId", "datasets"], "additionalProperties": False,
            "properties": {"flowId": {"type": "string"}, "datasets": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["id"], "additionalProperties": False,
                "properties": {"id": {"type": "string"}}}}}}}}}}}
ADHOC_DATASET_RESPONSE = {
    "type": "object", "required": ["destinations"], "additionalProperties": False,
    "properties": {"destinations": {"type": "array", "items": {
        "type": "object", "required": ["flowId", "datasets"], "additionalProperties": False,
        "properties": {"flowId": {"type": "string"}, "datasets": {"type": "array", "items": {
            "type": "object", "required": ["id", "statusURL"], "additionalProperties": False,
            "properties": {"id": {"type": "string"}, "statusURL": {"type": "string"}}}}}}}}}
ADHOC_ERROR = {"type": "object", "required": ["code", "message"], "additionalProperties": False,
               "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}


def check_adhoc_export(exchange: Exchange) -> list[str]:
    where = "POST /adhocrun (dataset export: the 'Export datasets by using the Flow Service API' guide)"
    accept = next((v for k, v in exchange.headers.items() if k.lower() == "accept"), "")
    problems = [] if accept == ADHOC_DATASET_ACCEPT else [f"{where}: Accept must be {ADHOC_DATASET_ACCEPT!r}"]
    problems += [f"{where}: {p}" for p in _against(exchange.request_json(), ADHOC_DATASET_REQUEST)]
    schema = ADHOC_DATASET_RESPONSE if exchange.status == 200 else ADHOC_ERROR
    return problems + [f"{where} -> {exchange.status}: {p}" for p in _against(exchange.response_json(), schema)]


# Error answers whose operation describes no body: the gateway's own errors ("Experience Platform API
# troubleshooting guide": {error_code, message}) or the services' problem details {type, status, title,
# detail, report}.
UNDESCRIBED_ERROR = {"anyOf": [
    {"type": "object", "required": ["error_code", "message"], "additionalProperties": False,
     "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}}},
    {"type": "object", "required": ["title"], "additionalProperties": False,
     "properties": {"type": {"type": "string"}, "status": {"type": "integer"}, "title": {"type": "string"},
                    "detail": {"type": "string"}, "report": {"type": "object"}}}]}


def check_undescribed_error(body: object) -> list[str]:
    return _against(body, UNDESCRIBED_ERROR) if body is not None else []


def _against(value: object, schema: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.path)) or '$'}: {e.message}"
            for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
