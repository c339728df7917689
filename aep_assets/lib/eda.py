"""Exploratory summaries of the experience events from pre-aggregated Query Service results.

The platform returns per-week event counts by type and the number of users per combination of
event types (a bitmask per user); the funnel and the pairwise co-occurrence are computed here from
those few hundred rows, so the events are read in two passes whatever their number.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from aep_assets.lib import sql
from aep_assets.lib.features import feature_columns
from aep_assets.lib.sql import Fragment


def type_bit(types: Sequence[str]) -> Fragment:
    """SQL giving each event type its bit (1 << position in `types`), 0 for any other type."""
    if not 0 < len(types) <= 62:
        raise ValueError(f"need 1 to 62 event types for a 64-bit mask, got {len(types)}")
    whens = " ".join(f"WHEN {sql.literal(name)} THEN {1 << i}" for i, name in enumerate(types))
    return Fragment(f"CASE event_type {whens} ELSE 0 END")


def cooccurrence(combinations: pl.DataFrame, types: Sequence[str]) -> np.ndarray:
    """users[i, j] = users with events of both type i and type j; the diagonal = users per type."""
    masks = combinations["type_mask"].cast(pl.Int64).to_numpy()
    users = combinations["users"].cast(pl.Int64).to_numpy()
    has = ((masks[:, None] >> np.arange(len(types))) & 1).astype(np.int64)  # combination x type
    return (has * users[:, None]).T @ has


def funnel(weekly: pl.DataFrame, pairs: np.ndarray, types: Sequence[str]) -> pl.DataFrame:
    """Events and distinct users per event type, most frequent first."""
    events = dict(weekly.group_by("event_type").agg(pl.col("events").sum()).iter_rows())
    return (pl.DataFrame({"event_type": list(types), "events": [int(events.get(t, 0)) for t in types],
                          "users": np.diag(pairs).astype(np.int64)})
            .filter(pl.col("events") > 0).sort("events", descending=True))


def feature_label_correlations(sample: pl.DataFrame) -> pl.DataFrame:
    """Pearson correlation of each feature with the label; missing recencies count as 'long ago'."""
    columns = feature_columns(sample.columns)
    filled = sample.select([pl.col(c).cast(pl.Float64).fill_null(pl.col(c).cast(pl.Float64).max() * 2).fill_null(0)
                            for c in columns] + [pl.col("label").cast(pl.Float64)])
    values = filled.select([pl.corr(c, "label").alias(c) for c in columns]).row(0) if columns else []
    return (pl.DataFrame({"feature": columns, "correlation": values}).fill_nan(0.0).fill_null(0.0)
            .sort(pl.col("correlation").abs(), descending=True))
