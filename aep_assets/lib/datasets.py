"""The platform datasets of the workflow, as XDM-like specs, and the validation of an incoming batch.

A spec says what the platform accepts: columns and Arrow types, the identity column (ECID
namespace, primary), whether identities are unique within a batch (profile records), allowed
values (event types), and which timestamp must not lie in the future. The same spec drives the
local PostgreSQL DDL and the XDM schema in AEP mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from aep_assets.lib.synthetic import EVENT_TYPES

TIMESTAMP = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    schema: pa.Schema
    identity: str = "userid"
    profile_enabled: bool = False
    unique_identity: bool = False
    allowed_values: dict[str, frozenset[str]] = field(default_factory=dict)
    not_in_future: str | None = None
    # Profile merge (lib/merge.py): readers see one current record per identity, the one with the latest
    # values of `merge_by`, then of the batch; the dataset itself keeps every batch.
    merged: bool = False
    merge_by: tuple[str, ...] = ()
    description: str = ""


PROFILES = DatasetSpec(
    name="cmle_profiles",
    description="CMLE synthetic customer profiles (XDM Individual Profile)",
    schema=pa.schema([
        ("userid", pa.string()), ("email", pa.string()), ("first_name", pa.string()),
        ("last_name", pa.string()), ("country", pa.string()), ("city", pa.string()),
        ("created_at", TIMESTAMP),
    ]),
    profile_enabled=True,
    unique_identity=True,
    not_in_future="created_at",
    merged=True,  # a later batch re-sending a known userid updates that profile
)

EXPERIENCE_EVENTS = DatasetSpec(
    name="cmle_experience_events",
    description="CMLE synthetic experience events (XDM ExperienceEvent)",
    schema=pa.schema([
        ("event_id", pa.string()), ("userid", pa.string()), ("event_type", pa.string()),
        ("timestamp", TIMESTAMP), ("produced_by", pa.string()), ("page_name", pa.string()),
        ("page_url", pa.string()), ("campaign_id", pa.string()),
    ]),
    profile_enabled=True,
    allowed_values={"event_type": frozenset(EVENT_TYPES)},
    not_in_future="timestamp",
)

PROPENSITY_SCORES = DatasetSpec(
    name="cmle_propensity_scores",
    description="Propensity scores per profile (the reference's _{tenant}.propensity), profile-enabled",
    schema=pa.schema([
        ("userid", pa.string()), ("propensity", pa.float64()), ("decile", pa.int32()),
        # as_of: the point in time of the features the score comes from (the newest event when scored)
        ("model_name", pa.string()), ("model_version", pa.string()), ("as_of", TIMESTAMP),
        ("profile_batch", pa.string()),
    ]),
    profile_enabled=True,
    unique_identity=True,
    merged=True,
    merge_by=("as_of",),
)

ALL = (PROFILES, EXPERIENCE_EVENTS, PROPENSITY_SCORES)

# Datasets made by Query Service SQL (CTAS), not ingested: the point-in-time training table, and the current
# features of every profile, replaced per profile batch.
TRAINING_DATASET = "cmle_training_features"
SCORING_DATASET = "cmle_scoring_features"


class BatchValidationError(ValueError):
    """A batch does not fit its dataset; the message names the batch source and the problem."""


def conform(table: pa.Table, spec: DatasetSpec, source: str, now: datetime | None = None) -> pa.Table:
    """The table with the spec's columns in order and types, or a BatchValidationError naming `source`."""
    problems: list[str] = []
    if table.num_rows == 0:
        raise BatchValidationError(f"{source}: empty batch (0 rows) for dataset {spec.name}")
    missing = [name for name in spec.schema.names if name not in table.column_names]
    if missing:
        raise BatchValidationError(f"{source}: missing column(s) {missing} required by dataset {spec.name}")
    columns = []
    for target in spec.schema:
        column = table.column(target.name)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if column.type != target.type:
            if not _castable(column.type, target.type):
                problems.append(f"column {target.name!r} has type {column.type}, expected {target.type}")
                columns.append(column)
                continue
            column = column.cast(target.type)
        columns.append(column)
    if problems:
        raise BatchValidationError(f"{source}: " + "; ".join(problems))
    conformed = pa.Table.from_arrays(columns, schema=spec.schema)

    identity = conformed.column(spec.identity)
    problems += _identity_problems(identity, spec.identity)
    if spec.unique_identity:
        distinct = pc.count_distinct(identity).as_py()
        if distinct != conformed.num_rows - identity.null_count:
            problems.append(f"duplicate {spec.identity!r} values within the batch "
                            f"({conformed.num_rows - distinct} repeated)")
    for column_name, allowed in spec.allowed_values.items():
        values = pc.unique(conformed.column(column_name)).to_pylist()
        unknown = sorted(str(v) for v in values if v not in allowed)
        if unknown:
            problems.append(f"unknown {column_name} value(s) {unknown[:5]}")
    if spec.not_in_future:
        latest = pc.max(conformed.column(spec.not_in_future)).as_py()
        limit = now or datetime.now(timezone.utc)
        if latest is not None and latest > limit:
            problems.append(f"{spec.not_in_future} in the future (latest {latest.isoformat()})")
    if problems:
        raise BatchValidationError(f"{source}: " + "; ".join(problems))
    return conformed


def identity_hashes(values: pl.Series) -> np.ndarray:
    """64-bit hashes of the non-null identities of one file or chunk: what finding identities repeated
    across many of them keeps in memory (8 bytes a row, not the strings)."""
    return values.drop_nulls().hash(seed=0).to_numpy()


def repeated_identities(hashes: list[np.ndarray]) -> int:
    """How many identities repeat an earlier one, over the `identity_hashes` of several files or chunks."""
    joined = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    return int(joined.size - np.unique(joined).size)


def check_unique_across_files(spec: DatasetSpec, hashes: list[np.ndarray], files: Sequence[Path]) -> None:
    """A BatchValidationError when an identity repeats across a batch's files (`hashes`: the
    `identity_hashes` of each file), where the dataset wants one record per identity in a batch."""
    repeated = repeated_identities(hashes)
    if repeated:
        raise BatchValidationError(f"batch files {[str(p) for p in files]}: duplicate {spec.identity!r} values "
                                   f"across the files ({repeated} repeated)")


def _identity_problems(identity: pa.ChunkedArray, name: str) -> list[str]:
    """Rows that cannot be merged into a profile: identity null, empty or blank, in some rows or in all."""
    rows = len(identity)
    null = identity.null_count
    blank = int(pc.sum(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(identity)), 0), min_count=0).as_py())
    if not null + blank:
        return []
    how = " and ".join(f"{count} {kind}" for count, kind in ((null, "null"), (blank, "empty or blank")) if count)
    if null + blank == rows:
        return [f"no row has an identity: column {name!r} is missing in all {rows} row(s) ({how})"]
    return [f"{null + blank} of {rows} row(s) without identity {name!r} ({how})"]


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Only lossless widenings; a string where a number is expected is an error, not a guess."""
    if pa.types.is_null(source):  # a column of nulls only: its values are checked, not its type
        return True
    if pa.types.is_timestamp(target):
        return pa.types.is_timestamp(source)
    if pa.types.is_floating(target):
        return pa.types.is_floating(source) or pa.types.is_integer(source)
    if pa.types.is_integer(target):
        return pa.types.is_integer(source)
    if pa.types.is_string(target):
        return pa.types.is_string(source) or pa.types.is_large_string(source)
    return False
