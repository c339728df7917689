"""The fake Schema Registry: tenant field groups, schemas and identity descriptors.

Part of `FakeAEP`; its state is `field_groups`, `schemas` and `descriptors`.
"""

from __future__ import annotations

import secrets

from aep_assets.testing.fake_aep.credentials import GATEWAY, ORG_ID, TENANT
from aep_assets.testing.fake_aep.state import FakeState

REGISTRY = "/data/foundation/schemaregistry"


class FakeSchemaRegistry(FakeState):
    """Schema Registry routes and handlers."""

    ROUTES = (
        ("GET", rf"{REGISTRY}/stats/?", "stats"),
        ("GET", rf"{REGISTRY}/tenant/(fieldgroups|schemas)/?", "list_titled"),
        ("POST", rf"{REGISTRY}/tenant/fieldgroups/?", "create_field_group"),
        ("POST", rf"{REGISTRY}/tenant/schemas/?", "create_schema"),
        ("PATCH", rf"{REGISTRY}/tenant/schemas/([^/]+)/?", "patch_schema"),
        ("GET", rf"{REGISTRY}/tenant/descriptors/?", "list_descriptors"),
        ("POST", rf"{REGISTRY}/tenant/descriptors/?", "create_descriptor"),
    )

    def stats(self, **_):
        return 200, {"imsOrg": ORG_ID, "tenantId": TENANT, "counts": {"schemas": len(self.schemas)},
                     "recentlyCreatedResources": [], "recentlyUpdatedResources": [], "classUsage": []}

    def list_titled(self, kind, query, headers, **_):
        """Pages by `orderby` as the registry does: `start` (the last value of the previous page) needs it."""
        if "start" in query and "orderby" not in query:
            return 400, {"type": "/placeholder/type/uri", "status": 400, "title": "BadRequestError",
                         "detail": "start cannot be used without orderby"}
        store = self.field_groups if kind == "fieldgroups" else self.schemas
        title = query.get("property", "").removeprefix("title==")
        found = sorted((i for i in store.values() if i["title"] == title), key=lambda i: i["title"])
        found = [i for i in found if "start" not in query or i["title"] > query["start"]]
        limit = int(query.get("limit", self.registry_page_size))
        page, rest = found[:limit], found[limit:]
        following = f"{GATEWAY}{REGISTRY}/tenant/{kind}?orderby=title&start=" if rest else None
        return 200, {"results": page, "_page": {"orderby": "title", "next": following, "count": len(page)},
                     "_links": {"next": following}}

    def create_field_group(self, body, **_):
        group = registry_resource(body, "mixins")
        self.field_groups[group["$id"]] = group
        return 201, group

    def create_schema(self, body, **_):
        schema = registry_resource(body, "schemas")
        schema["meta:class"] = body["allOf"][0]["$ref"]
        self.schemas[schema["$id"]] = schema
        return 201, schema

    def patch_schema(self, alt_id, body, **_):
        schema = next(s for s in self.schemas.values() if s["meta:altId"] == alt_id)
        for op in body:
            assert op["op"] == "add" and op["path"] == "/meta:immutableTags"
            schema["meta:immutableTags"] = op["value"]
        return 200, schema

    def list_descriptors(self, query, **_):
        wanted = query.get("property", "").removeprefix("xdm:sourceSchema==")
        return 200, {"xdm:descriptorIdentity": [d for d in self.descriptors if d["xdm:sourceSchema"] == wanted]}

    def create_descriptor(self, body, **_):
        descriptor = {**body, "meta:containerId": "tenant", "@id": secrets.token_hex(20)}
        self.descriptors.append(descriptor)
        return 201, descriptor


def registry_resource(body: dict, kind: str) -> dict:
    """A created tenant resource as the registry returns it: the body with its ids and meta fields."""
    hex_id = secrets.token_hex(16)
    return {**body, "$id": f"https://ns.adobe.com/{TENANT}/{kind}/{hex_id}",
            "meta:altId": f"_{TENANT}.{kind}.{hex_id}", "meta:containerId": "tenant", "version": "1.0",
            "meta:resourceType": kind, "meta:tenantNamespace": f"_{TENANT}"}
