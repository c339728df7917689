"""Feature and label definitions shared by training and scoring: one source, so no serving skew.

Both use `sql/user_features.sql` over the current profiles (one per userid); training adds the
point-in-time label, scoring restricts the profiles to some profile batches and computes features
as of the newest event.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from aep_assets.lib import sql
from aep_assets.lib.sql import Fragment, Identifier
from aep_assets.settings import iso_datetime

ID_COLUMN = "userid"
LABEL_COLUMN = "label"
DEFAULT_HORIZON_DAYS = 14.0
DEFAULT_CUTOFF_DAYS_BEFORE_END = 14.0
AS_OF_COLUMN = "as_of"
NON_FEATURE_COLUMNS = frozenset({ID_COLUMN, LABEL_COLUMN, "profile_batch", AS_OF_COLUMN})


@dataclass(frozen=True)
class Window:
    """Observation cutoff and label horizon: features before `cutoff`, label in [cutoff, horizon_end]."""

    cutoff: datetime
    horizon_end: datetime

    @classmethod
    def before_end(cls, end: datetime, cutoff_days_before_end: float = DEFAULT_CUTOFF_DAYS_BEFORE_END,
                   horizon_days: float = DEFAULT_HORIZON_DAYS) -> Window:
        cutoff = end - timedelta(days=cutoff_days_before_end)
        return cls(cutoff, cutoff + timedelta(days=horizon_days))

    @classmethod
    def configured(cls, cutoff: str, cutoff_days_before_end: float, horizon_days: float,
                   timeline_end: Callable[[], datetime]) -> Window:
        """An ISO `cutoff` when given (UTC unless it says otherwise), else `cutoff_days_before_end` before the
        end of the timeline (asked for only then: it costs a query)."""
        if not cutoff:
            return cls.before_end(timeline_end(), cutoff_days_before_end, horizon_days)
        at = iso_datetime(cutoff, "training_features' cutoff")
        return cls(at, at + timedelta(days=horizon_days))


def _user_features(events: str, profiles: Fragment, as_of: datetime, profile_filter: str) -> Fragment:
    return Fragment(sql.substitute(sql.load("user_features"), events=Identifier(events), profiles=profiles,
                                   as_of=as_of, profile_filter=Fragment(profile_filter)))


def training_sql(dialect: sql.Dialect, events: str, profiles: Fragment, window: Window) -> str:
    """CTAS body of the training table."""
    text = sql.substitute(sql.load("training_features"),
                          user_features=_user_features(events, profiles, window.cutoff, "TRUE"),
                          events=Identifier(events), cutoff=window.cutoff, horizon_end=window.horizon_end)
    return sql.transpile(text, dialect)


def scoring_sql(dialect: sql.Dialect, events: str, profiles: Fragment, as_of: datetime,
                profile_batches: Sequence[str]) -> str:
    """Features as of `as_of` of the profiles of some profile batches, one statement for all of them."""
    profile_filter = Fragment(sql.substitute("p._acp_batchid IN $batches", batches=list(profile_batches)))
    return sql.transpile(_user_features(events, profiles, as_of, profile_filter), dialect)


def scoring_as_of(latest_event: datetime) -> datetime:
    """Scoring's point in time: the first whole second after the newest event in the platform. Features
    are as of the data, not of the wall clock: a re-run over the same events computes the same features
    (and scores), and when events stop arriving (a broken feed) profiles do not all look inactive."""
    return latest_event.replace(microsecond=0) + timedelta(seconds=1)


def feature_columns(columns: Sequence[str]) -> list[str]:
    """The model inputs among a feature table's columns, in table order."""
    return [c for c in columns if c not in NON_FEATURE_COLUMNS]
