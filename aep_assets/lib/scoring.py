"""Scoring a profile batch of any size: feature rows come in chunks, scores go out as file parts.

A profile batch in a real sandbox can hold tens of millions of profiles. Memory stays at one chunk of
features and scores, plus one float per profile for the deciles (a decile is the profile's rank within
its scoring run, so every score must be known before any decile is): a first pass predicts each chunk
and writes its scores to a local file, a second pass reads that file back in chunks and adds the decile.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from aep_assets.lib import modeling
from aep_assets.lib.datasets import PROPENSITY_SCORES, identity_hashes, repeated_identities
from aep_assets.lib.features import AS_OF_COLUMN, ID_COLUMN

CHUNK_ROWS = 250_000
SCORES_SCHEMA = PROPENSITY_SCORES.schema


@dataclass
class ScoredBatch:
    """The scores of one profile batch, before their deciles: a local file and every propensity."""

    path: Path
    propensity: np.ndarray
    null_userids: int
    duplicate_userids: int

    @property
    def rows(self) -> int:
        return int(self.propensity.size)


def score_chunks(chunks: Iterable[pa.RecordBatch], predict: Callable[[pl.DataFrame], np.ndarray],
                 model: tuple[str, str], profile_batch: str, folder: Path) -> ScoredBatch:
    """Pass one: predict every chunk of feature rows and write its scores (no decile yet) to a file."""
    path = Path(tempfile.mkstemp(prefix="scores-", suffix=".parquet", dir=folder)[1])
    no_decile = pa.schema([f for f in SCORES_SCHEMA if f.name != "decile"])
    propensities, identities, null_userids = [], [], 0
    with pq.ParquetWriter(path, no_decile, compression="zstd") as writer:
        for chunk in chunks:
            frame = pl.from_arrow(pa.Table.from_batches([chunk]))
            if not frame.height:
                continue
            propensity = np.asarray(predict(frame), dtype=np.float64)
            writer.write_table(_chunk_table(frame, propensity, model, profile_batch, no_decile))
            propensities.append(propensity)
            null_userids += frame[ID_COLUMN].null_count()
            identities.append(identity_hashes(frame[ID_COLUMN]))
    return ScoredBatch(path, np.concatenate(propensities) if propensities else np.empty(0), null_userids,
                       repeated_identities(identities))


def _chunk_table(frame: pl.DataFrame, propensity: np.ndarray, model: tuple[str, str], profile_batch: str,
                 schema: pa.Schema) -> pa.Table:
    rows = frame.height
    as_of = frame[AS_OF_COLUMN].to_arrow().cast(pa.timestamp("us")).cast(pa.timestamp("us", "UTC"))
    return pa.table({
        "userid": frame[ID_COLUMN].to_arrow().cast(pa.string()), "propensity": pa.array(propensity, pa.float64()),
        "model_name": pa.repeat(pa.scalar(model[0]), rows).cast(pa.string()),
        "model_version": pa.repeat(pa.scalar(model[1]), rows).cast(pa.string()),
        "as_of": as_of, "profile_batch": pa.repeat(pa.scalar(profile_batch), rows).cast(pa.string()),
    }, schema=schema)


def problems(scored: ScoredBatch, profiles_in_batch: int) -> list[str]:
    """What is wrong with a batch's scores, if anything: the contract downstream relies on."""
    found = []
    if scored.rows != profiles_in_batch:
        found.append(f"{scored.rows} scores for {profiles_in_batch} profiles")
    nulls = int(np.isnan(scored.propensity).sum())
    if nulls or scored.null_userids:
        found.append(f"{nulls + scored.null_userids} null scores")
    values = scored.propensity[~np.isnan(scored.propensity)]
    if values.size and not bool(np.all((values >= 0) & (values <= 1))):
        found.append(f"scores outside [0, 1] (min {values.min()}, max {values.max()})")
    if scored.duplicate_userids:
        found.append("duplicate userids")
    return found


def with_deciles(scored: ScoredBatch, chunk_rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """Pass two: the scores file read back in chunks, each row with its decile in the whole batch."""
    deciles = modeling.deciles_of(scored.propensity)
    offset = 0
    for chunk in pq.ParquetFile(scored.path).iter_batches(batch_size=chunk_rows):
        decile = pa.array(deciles[offset:offset + chunk.num_rows], pa.int32())
        offset += chunk.num_rows
        columns = {name: chunk.column(name) for name in chunk.schema.names} | {"decile": decile}
        yield pa.RecordBatch.from_arrays([columns[f.name] for f in SCORES_SCHEMA], schema=SCORES_SCHEMA)


def summary(profile_batch: str, scored: ScoredBatch, psi: float | None, path: str, seconds: float) -> dict:
    """One row of the scoring run's table in the UI."""
    return {"profile_batch": profile_batch, "profiles": scored.rows,
            "mean_propensity": float(scored.propensity.mean()) if scored.rows else 0.0,
            "psi_vs_previous": psi, "path": path, "seconds": round(seconds, 3)}
