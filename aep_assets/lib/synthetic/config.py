"""What a synthetic population is made of (size, seed, timeline, oracle effort) and what a batch yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import polars as pl

from aep_assets.lib.holdout import HOLDOUT_FRACTION


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and timeline of a synthetic population (the reference: 100k users, 10 batches)."""

    profiles: int = 100_000
    batches: int = 10
    seed: int = 42
    end: datetime = field(kw_only=True)
    weeks: int = 10
    cutoff_days_before_end: float = 14.0
    horizon_days: float = 14.0
    oracle_draws: int = 12
    oracle_fraction: float = HOLDOUT_FRACTION  # share of users (held-out ones) with an oracle

    def __post_init__(self) -> None:
        if not isinstance(self.end, datetime) or self.end.utcoffset() is None:
            raise ValueError("end must be a timezone-aware datetime")
        object.__setattr__(self, "end", self.end.astimezone(timezone.utc))
        if self.profiles < 0 or self.batches < 1 or self.seed < 0 or self.oracle_draws < 0:
            raise ValueError("profiles, seed and oracle_draws must be >= 0 and batches >= 1")
        if self.profiles < self.batches:
            raise ValueError(f"{self.profiles} profiles cannot fill {self.batches} batches: every batch needs "
                             "at least one profile")
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise ValueError(f"oracle_fraction must be in [0, 1], got {self.oracle_fraction}")
        if self.weeks <= 0 or not 0 < self.cutoff_days_before_end < 7 * self.weeks:
            raise ValueError("need weeks > 0 and the cutoff strictly inside the timeline")
        if self.horizon_days * 86400 <= 60:
            raise ValueError("horizon_days must exceed one minute")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=self.weeks)

    @property
    def cutoff(self) -> datetime:
        return self.end - timedelta(days=self.cutoff_days_before_end)

    def batch_size(self, batch: int) -> int:
        """Users in a batch; batches past the initial K have the size of the largest initial one."""
        base, extra = divmod(self.profiles, self.batches)
        if batch < self.batches:
            return base + (batch < extra)
        return max(1, base + (extra > 0))


@dataclass
class SyntheticData:
    """Profiles, their events and the generator's ground truth (evaluation only, never ingested)."""

    profiles: pl.DataFrame
    events: pl.DataFrame
    truth: pl.DataFrame
