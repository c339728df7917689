"""The Experience Platform interface the assets talk to, and the records it returns.

Two implementations: `LocalPlatform` (embedded PostgreSQL, the default) and `AEPPlatform`
(Adobe's APIs through aepp, Query Service over psycopg). Assets only use the methods here.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from aep_assets.lib import audiences, merge, sql
from aep_assets.lib.datasets import PROFILES, PROPENSITY_SCORES, BatchValidationError, DatasetSpec, conform
from aep_assets.resources.storage import Manifest, Storage


@dataclass(frozen=True)
class Dataset:
    id: str
    name: str
    table: str
    profile_enabled: bool
    created_ms: int


@dataclass(frozen=True)
class Batch:
    id: str
    dataset_id: str
    status: str  # loading | success | failed
    created_ms: int
    completed_ms: int | None
    record_count: int | None
    error: str | None
    idempotency_key: str | None


@dataclass(frozen=True)
class Audience:
    id: str
    name: str
    description: str
    expression: str  # PQL, as the Segmentation service stores it
    lower: float
    upper: float
    created_ms: int
    updated_ms: int


class BatchIngestionError(RuntimeError):
    """A batch failed; it is marked failed with this message and the dataset is unchanged."""

    def __init__(self, message: str, batch: Batch | None = None):
        super().__init__(message)
        self.batch = batch


class Platform(dg.ConfigurableResource, ABC):
    """Catalog, batch ingestion, Query Service, dataset export, segmentation and destinations."""

    @property
    @abstractmethod
    def dialect(self) -> sql.Dialect:
        """The SQL dialect of this platform's Query Service."""

    @abstractmethod
    def ensure_dataset(self, spec: DatasetSpec) -> Dataset:
        """The dataset named `spec.name`, created (with its schema) only if it does not exist."""

    @abstractmethod
    def find_dataset(self, name: str) -> Dataset | None:
        """Look a dataset up by name in the catalog."""

    @abstractmethod
    def ingest_batch(self, dataset: Dataset, spec: DatasetSpec, files: Sequence[Path], *,
                     idempotency_key: str, refresh_statistics: bool = True) -> Batch:
        """Land parquet files as one batch: whole and `success`, or absent and `failed`.

        A successful batch with the same idempotency key makes this a no-op returning it. A caller landing
        many batches at once passes refresh_statistics=False and calls `refresh_statistics` after the last.
        """

    def refresh_statistics(self, dataset: Dataset) -> None:
        """Planner statistics of the dataset brought up to date (a platform that keeps its own: nothing)."""

    @abstractmethod
    def completed_batches(self, dataset: Dataset, *, completed_after_ms: int = 0, limit: int | None = None
                          ) -> list[Batch]:
        """Batches that reached success or failed at or after `completed_after_ms`, oldest first.

        The sensor's view: ordered by completion, so a batch still loading when the sensor looked
        is found once it completes.
        """

    @abstractmethod
    def query(self, text: str) -> pa.Table:
        """Run a SELECT through Query Service; the result as Arrow (small results only)."""

    @abstractmethod
    def stream(self, select: str, storage: Storage, name: str) -> Iterator[pa.RecordBatch]:
        """The rows of a SELECT in record batches, however many there are: memory stays at one batch.
        A platform may route many rows through cloud storage (a scratch dataset `name`, exported)."""

    @abstractmethod
    def create_table_as(self, name: str, select: str) -> Dataset:
        """CTAS registered as a dataset; re-running replaces the table and keeps the dataset."""

    @abstractmethod
    def replace_slices(self, dataset: Dataset, key_column: str, keys: Sequence[str], select: str) -> dict[str, int]:
        """Replace the rows of `dataset` whose `key_column` is one of `keys` by the result of `select`
        (whose rows all have one of `keys`), each key atomically; returns the new rows per key."""

    @abstractmethod
    def export_dataset(self, dataset: Dataset, storage: Storage, export_time: datetime,
                       order_by: str | None = None) -> Manifest:
        """The dataset as gzip parquet under `cmle/egress/{dataset.id}/exportTime=.../` in storage, in the
        order of the column `order_by` where the platform can (AEP's export cannot: readers must check)."""

    @abstractmethod
    def upsert_audience(self, name: str, description: str, lower: float, upper: float,
                        scores: Dataset) -> Audience:
        """An audience of profiles whose latest propensity is in [lower, upper); updated in place by name."""

    @abstractmethod
    def audiences(self) -> list[Audience]:
        """Every audience this project manages."""

    @abstractmethod
    def delete_audience(self, audience: Audience) -> None:
        """Remove an audience this project no longer configures."""

    @abstractmethod
    def audience_size(self, audience: Audience, scores: Dataset) -> int:
        """How many profiles the audience holds now (the segment job's count in AEP)."""

    @abstractmethod
    def activate_audience(self, audience: Audience, scores: Dataset, storage: Storage,
                          export_time: datetime) -> Manifest:
        """Export the members to the file destination under cmle/activation/{audience}/, replacing older exports."""

    # --- shared behaviour ---------------------------------------------------------------------
    @property
    def concurrent_ingestions(self) -> int:
        """How many batches of one dataset may be ingested at the same time."""
        return 1

    def current_records(self, dataset: Dataset, spec: DatasetSpec) -> sql.Fragment:
        """The profile view of a merged dataset as a subquery: per identity, its current record (the
        profile of a userid, the latest score of a profile), whatever the batches that sent them."""
        return merge.current_records_sql(spec, dataset.table)

    def current_profiles(self) -> sql.Fragment:
        """The current profile per userid, as a subquery."""
        return self.current_records(self.find_dataset_or_fail(PROFILES.name), PROFILES)

    def audience_members_sql(self, audience: Audience, scores: Dataset) -> str:
        """The audience's current members: userid, contact attributes (the current profile) and propensity."""
        return audiences.members_sql(self.dialect, self.current_records(scores, PROPENSITY_SCORES),
                                     self.current_profiles(), audience.lower, audience.upper)

    def audience_members(self, audience: Audience, scores: Dataset) -> pa.Table:
        """The audience's current members as a table (small audiences: read over the Query Service wire)."""
        return self.query(self.audience_members_sql(audience, scores))

    def ensure_table(self, name: str, like_select: str) -> Dataset:
        """A dataset with the columns of `like_select` and no rows, created once (for replace_slices)."""
        return self.find_dataset(name) or self.create_table_as(
            name, f"SELECT * FROM ({like_select}) AS shape WHERE FALSE")

    def audience_sizes(self, selected: list[Audience], scores: Dataset) -> dict[str, int]:
        """Sizes of several audiences (implementations may count them in one pass)."""
        return {audience.name: self.audience_size(audience, scores) for audience in selected}

    def activate_audiences(self, selected: list[Audience], scores: Dataset, storage: Storage,
                           export_time: datetime) -> dict[str, Manifest]:
        """Activate several audiences (implementations may read the scores once for all)."""
        return {a.name: self.activate_audience(a, scores, storage, export_time) for a in selected}

    @staticmethod
    def write_activation(storage: Storage, audience: Audience, members: Iterable[pa.RecordBatch],
                         export_time: datetime) -> Manifest:
        """Members under cmle/activation/{audience}/exportTime=.../; the audience's previous export is
        removed only once the new one is complete, or kept instead of it when the members are the same."""
        prefix = f"{audiences.activation_parent(audience.name)}/exportTime={export_time:%Y%m%d%H%M%S}"
        batches = (batch.cast(audiences.MEMBERS_SCHEMA) for batch in members)
        return storage.write_parquet_parts(prefix, batches, schema=audiences.MEMBERS_SCHEMA, compression="zstd",
                                           suffix=".parquet", keep=1)

    def render(self, name: str, **params: object) -> str:
        """`sql/{name}.sql` in this platform's dialect."""
        return sql.render(name, self.dialect, **params)

    def find_dataset_or_fail(self, name: str) -> Dataset:
        """The dataset named `name`; LookupError if its asset was never materialized."""
        return existing(self.find_dataset(name), name)

    def latest_event_time(self, events: Dataset) -> datetime:
        """The newest event in the platform: the end of what is observed."""
        answer = self.query(self.render("latest_event_time", events=sql.Identifier(events.table)))
        latest = answer["latest"][0].as_py()
        if latest is None:
            raise ValueError(f"the experience event dataset {events.table} has no events")
        return latest.astimezone(timezone.utc)

    def timeline_end(self, events: Dataset) -> datetime:
        """The day after the newest event (the synthetic timeline ends at midnight UTC)."""
        latest = self.latest_event_time(events)
        return latest.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)

    def inputs_version(self, text: str, inputs: list[Dataset]) -> str:
        """What a CTAS result depends on: its SQL and the successful batches of the datasets it reads."""
        digest = hashlib.sha256(text.encode())
        for dataset in inputs:
            batches = sorted(b.id for b in self.completed_batches(dataset) if b.status == "success")
            digest.update(f"\n{dataset.id}:{','.join(batches)}".encode())
        return digest.hexdigest()[:32]

    def profiles_per_batch(self, current_profiles: sql.Fragment, keys: Sequence[str]) -> dict[str, int]:
        """How many current profiles each of these batches last touched (0 for an unknown batch)."""
        counted = self.query(self.render("profiles_per_batch", profiles=current_profiles,
                                         profile_batches=list(keys)))
        found = dict(zip(counted["profile_batch"].to_pylist(), counted["profiles"].to_pylist(), strict=True))
        return {key: int(found.get(key, 0)) for key in keys}


def existing(dataset: Dataset | None, name: str) -> Dataset:
    """A dataset found by name, or LookupError: the asset that creates it has not been materialized."""
    if dataset is None:
        raise LookupError(f"dataset {name!r} does not exist in the platform yet: materialize its asset first")
    return dataset


def conformed_file(path: Path, spec: DatasetSpec) -> pa.Table:
    """One file of a batch, read and conformed to the dataset; BatchValidationError names what does not fit."""
    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for unreadable files
        raise BatchValidationError(f"file {path}: not a readable parquet file ({error})") from error
    return conform(table, spec, f"file {path}")


def export_prefix(dataset: Dataset, export_time: datetime) -> str:
    """The reference's dataset-export layout."""
    return f"cmle/egress/{dataset.id}/exportTime={export_time:%Y%m%d%H%M%S}"


def export_parent(dataset: Dataset) -> str:
    return f"cmle/egress/{dataset.id}"
