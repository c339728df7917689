"""How the project's flat datasets map onto XDM in AEP mode.

Locally a dataset is a flat table (`userid`, `event_type`, ...). In AEP the same records are XDM:
class fields at the root (`_id`, `eventType`, `timestamp`, `producedBy`, `web.webPageDetails.*`) and
our own fields under the tenant object `_{tenant}` (`_{tenant}.userid`, `_{tenant}.propensity`, ...).

- `XDM_PATHS` maps every column of every ingested dataset to its XDM path (`{tenant}` is replaced by
  `_` + the tenant id). Tenant fields keep the flat names.
- `field_groups` / `schemas` describe the tenant field groups and the three schemas to create.
- `nest` turns a conformed flat Arrow table into the nested layout that is uploaded as parquet.
- `flat_view_sql` is the Query Service view `{table}_flat` that exposes the flat names (and
  `_acp_batchid`) again, so the project's SQL files run unchanged: `Dataset.table` of an ingested
  dataset in AEP mode is that view, not the dataset's own table.

The view reads struct fields with Query Service's dot notation; for PostgreSQL (the tests' stand-in
for Query Service, with composite types) it is rendered as `(col).field`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from aep_assets.lib import names, sql
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES, DatasetSpec

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
EVENT_STANDARD_GROUPS = ("https://ns.adobe.com/xdm/context/experienceevent-directmarketing",
                         "https://ns.adobe.com/xdm/context/experienceevent-web")
TENANT = "{tenant}"

XDM_PATHS: dict[str, dict[str, str]] = {
    EXPERIENCE_EVENTS.name: {
        "event_id": "_id", "userid": "{tenant}.userid", "event_type": "eventType", "timestamp": "timestamp",
        "produced_by": "producedBy", "page_name": "web.webPageDetails.name", "page_url": "web.webPageDetails.URL",
        "campaign_id": "{tenant}.campaign_id",
    },
    PROFILES.name: {column: f"{{tenant}}.{column}" for column in PROFILES.schema.names},
    PROPENSITY_SCORES.name: {column: f"{{tenant}}.{column}" for column in PROPENSITY_SCORES.schema.names},
}


@dataclass(frozen=True)
class FieldGroup:
    key: str
    title: str
    description: str
    xdm_class: str
    columns: tuple[str, ...]  # tenant fields, typed from the spec that owns them


@dataclass(frozen=True)
class SchemaPlan:
    title: str
    description: str
    xdm_class: str
    field_groups: tuple[str, ...]  # FieldGroup keys
    standard_groups: tuple[str, ...] = ()


def field_groups(prefix: str) -> dict[str, FieldGroup]:
    """The tenant field groups: userid (shared by profile-class schemas), person, propensity, event."""
    return {
        "identity": FieldGroup("identity", f"{prefix} CMLE profile identity",
                               "The synthetic user id (ECID-style), primary identity of profiles and scores",
                               PROFILE_CLASS, ("userid",)),
        "person": FieldGroup("person", f"{prefix} CMLE person fields", "Profile attributes of synthetic customers",
                             PROFILE_CLASS, tuple(c for c in PROFILES.schema.names if c != "userid")),
        "propensity": FieldGroup("propensity", f"{prefix} CMLE propensity",
                                 "Propensity score and the model version that produced it", PROFILE_CLASS,
                                 tuple(c for c in PROPENSITY_SCORES.schema.names if c != "userid")),
        "event": FieldGroup("event", f"{prefix} CMLE event fields", "User id and campaign of synthetic events",
                            EVENT_CLASS, ("userid", "campaign_id")),
    }


def schemas(prefix: str) -> dict[str, SchemaPlan]:
    """One schema per ingested dataset, keyed by dataset name."""
    return {
        EXPERIENCE_EVENTS.name: SchemaPlan(f"{prefix} CMLE experience events", EXPERIENCE_EVENTS.description,
                                           EVENT_CLASS, ("event",), EVENT_STANDARD_GROUPS),
        PROFILES.name: SchemaPlan(f"{prefix} CMLE profiles", PROFILES.description, PROFILE_CLASS,
                                  ("identity", "person")),
        PROPENSITY_SCORES.name: SchemaPlan(f"{prefix} CMLE propensity scores", PROPENSITY_SCORES.description,
                                           PROFILE_CLASS, ("identity", "propensity")),
    }


def column_types() -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {}
    for spec in (PROFILES, EXPERIENCE_EVENTS, PROPENSITY_SCORES):
        for field in spec.schema:
            types.setdefault(field.name, field.type)
    return types


def xdm_type(arrow_type: pa.DataType) -> dict:
    if pa.types.is_string(arrow_type):
        return {"type": "string"}
    if pa.types.is_floating(arrow_type):
        return {"type": "number"}
    if pa.types.is_int32(arrow_type):
        return {"type": "integer", "minimum": -2147483648, "maximum": 2147483647}
    if pa.types.is_integer(arrow_type):
        return {"type": "integer", "minimum": -9007199254740992, "maximum": 9007199254740992}
    if pa.types.is_boolean(arrow_type):
        return {"type": "boolean"}
    if pa.types.is_timestamp(arrow_type):
        return {"type": "string", "format": "date-time"}
    raise TypeError(f"no XDM type for Arrow type {arrow_type}")


def field_group_body(group: FieldGroup, tenant: str) -> dict:
    types = column_types()
    properties = {column: {"title": column, **xdm_type(types[column])} for column in group.columns}
    return {
        "type": "object",
        "title": group.title,
        "description": group.description,
        "meta:intendedToExtend": [group.xdm_class],
        "definitions": {"fields": {"properties": {f"_{tenant}": {"type": "object", "properties": properties}}}},
        "allOf": [{"$ref": "#/definitions/fields"}],
    }


def schema_body(plan: SchemaPlan, group_ids: list[str]) -> dict:
    refs = [plan.xdm_class, *plan.standard_groups, *group_ids]
    return {"type": "object", "title": plan.title, "description": plan.description,
            "allOf": [{"$ref": ref} for ref in refs]}


def path_of(dataset: str, column: str, tenant: str) -> list[str]:
    return XDM_PATHS[dataset][column].replace(TENANT, f"_{tenant}").split(".")


def identity_path(tenant: str) -> str:
    """`xdm:sourceProperty` of the primary identity (same in all three schemas)."""
    return f"/_{tenant}/userid"


def nest(table: pa.Table, spec: DatasetSpec, tenant: str) -> pa.Table:
    """A conformed flat table in the dataset's XDM layout (struct columns for nested paths)."""
    tree: dict = {}
    for column in spec.schema.names:
        node = tree
        *parents, leaf = path_of(spec.name, column, tenant)
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = table.column(column).combine_chunks()

    def build(node: dict) -> pa.Array:
        children = {key: build(value) if isinstance(value, dict) else value for key, value in node.items()}
        return pa.StructArray.from_arrays(list(children.values()), names=list(children.keys()))

    columns = {key: build(value) if isinstance(value, dict) else value for key, value in tree.items()}
    return pa.table(columns)


def flat_view_name(table: str) -> str:
    return names.identifier(f"{table}_flat", "Query Service view name")


def flat_view_sql(dataset: str, table: str, tenant: str, dialect: sql.Dialect) -> str:
    """`CREATE OR REPLACE VIEW {table}_flat`: the flat column names over the XDM dataset.

    Query Service reads nested fields with dots (`_acme.userid`, `web.webPageDetails.URL`); PostgreSQL
    (the tests' stand-in, with composite types) needs `(_acme).userid`.
    """
    selects = []
    for column in XDM_PATHS[dataset]:
        root, *rest = path_of(dataset, column, tenant)
        expression = root
        for part in rest:
            expression = f"({expression}).{part}" if dialect == "postgres" else f"{expression}.{part}"
        selects.append(f"{expression} AS {names.identifier(column, 'column')}")
    selects.append("_ACP_BATCHID AS _acp_batchid")
    return (f"CREATE OR REPLACE VIEW {flat_view_name(table)} AS SELECT " + ", ".join(selects)
            + f" FROM {names.identifier(table, 'Query Service table')}")
