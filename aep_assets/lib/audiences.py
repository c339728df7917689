"""Audiences by propensity interval: the configured tiers and their reach."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from aep_assets.lib import names, sql

# What an activation file holds per member: what a destination needs to reach the person.
MEMBERS_SCHEMA = pa.schema([("userid", pa.string()), ("email", pa.string()), ("first_name", pa.string()),
                           ("last_name", pa.string()), ("propensity", pa.float64())])


@dataclass(frozen=True)
class Interval:
    name: str
    lower: float
    upper: float
    description: str = ""

    def __post_init__(self):
        names.audience_name(self.name)
        if not (0.0 <= self.lower < self.upper <= 1.000001):
            raise ValueError(f"audience {self.name!r}: interval [{self.lower}, {self.upper}) must satisfy "
                             "0 <= lower < upper <= 1")


# Tiers for a horizon conversion rate of about 5% (the synthetic default): "very high" is
# roughly five times the base rate. The reference's hand-picked range is kept for comparison.
DEFAULT_INTERVALS = (
    Interval("Propensity - very high", 0.25, 1.000001, "Most likely to convert: sales follow-up"),
    Interval("Propensity - high", 0.12, 0.25, "Likely: a targeted offer"),
    Interval("Propensity - medium", 0.05, 0.12, "Warm: nurture campaign"),
    Interval("Propensity - low", 0.0, 0.05, "Cold: suppress from paid media"),
    Interval("Propensity 0.2 to 0.93 - reference", 0.2, 0.93, "The CMLE reference's hand-picked range"),
)


def reach_table(propensity: np.ndarray, intervals: list[Interval]) -> pl.DataFrame:
    """Profiles per audience, share of scored profiles, and the cumulative reach of the tiers
    taken from the highest interval down (profiles counted once)."""
    total = len(propensity)
    rows = []
    ordered = sorted(intervals, key=lambda i: -i.lower)
    covered = np.zeros(total, dtype=bool)
    for interval in ordered:
        members = (propensity >= interval.lower) & (propensity < interval.upper)
        covered |= members
        rows.append({"audience": interval.name, "interval": f"[{interval.lower:g}, {min(interval.upper, 1):g})",
                     "profiles": int(members.sum()), "share": float(members.mean()) if total else 0.0,
                     "cumulative_reach": int(covered.sum())})
    return pl.DataFrame(rows)


def members_sql(dialect: sql.Dialect, latest: sql.Fragment, profiles: sql.Fragment, lower: float,
                upper: float) -> str:
    """Members of [lower, upper) among `latest` (the latest score per profile), with their current
    attributes from `profiles` (the current profile per userid), both subqueries."""
    return sql.transpile(sql.substitute(sql.load("audience_members"), latest_scores=latest, profiles=profiles,
                                        lower=lower, upper=upper), dialect)


def latest_propensities_sql(dialect: sql.Dialect, latest: sql.Fragment) -> str:
    return sql.transpile(sql.substitute(sql.load("latest_propensities"), latest_scores=latest), dialect)


def sizes_sql(dialect: sql.Dialect, latest: sql.Fragment, bounds: list[tuple[float, float]]) -> str:
    """One pass over the latest scores counting the members of every interval (size_0, size_1, ...)."""
    columns = ",\n    ".join(
        sql.substitute("SUM(CASE WHEN propensity >= $lower AND propensity < $upper THEN 1 ELSE 0 END)",
                       lower=lower, upper=upper) + f" AS size_{index}"
        for index, (lower, upper) in enumerate(bounds))
    return sql.transpile(sql.substitute(sql.load("audience_sizes"), latest_scores=latest,
                                        size_columns=sql.Fragment(columns)), dialect)


def latest_members_sql(dialect: sql.Dialect, latest: sql.Fragment, profiles: sql.Fragment) -> str:
    return sql.transpile(sql.substitute(sql.load("latest_members"), latest_scores=latest, profiles=profiles),
                         dialect)


def activation_parent(audience_name: str) -> str:
    return f"cmle/activation/{names.slug(audience_name)}"
