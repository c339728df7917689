"""The synthetic source system's files: one parquet file per profile batch, as an outside system
would drop them, plus the generator's ground truth (kept apart from the platform: evaluation only).

Layout under `$AEP_ASSETS_HOME/synthetic/current/`: `profiles/batch=NNNNN.parquet`,
`events/batch=NNNNN.parquet`, `truth/batch=NNNNN.parquet`, `timeline.json`, `population.json`. A new generation is
written beside it and swapped in with one rename, so readers never see a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from aep_assets.lib.processes import alive
from aep_assets.lib.synthetic import SyntheticConfig, SyntheticData
from aep_assets.settings import SettingError, assets_home, iso_datetime


@dataclass(frozen=True)
class Timeline:
    start: datetime
    end: datetime
    cutoff: datetime
    horizon_end: datetime

    def to_json(self) -> str:
        return json.dumps({k: v.isoformat() for k, v in self.__dict__.items()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Timeline:
        return cls(**{k: datetime.fromisoformat(v) for k, v in json.loads(text).items()})


def timeline_of(config: SyntheticConfig) -> Timeline:
    return Timeline(config.start, config.end, config.cutoff, config.cutoff + timedelta(days=config.horizon_days))


def population_of(config: SyntheticConfig) -> dict:
    """What identifies a synthetic population: the same values generate the same users and events, byte
    for byte (the label window only changes the ground truth, which never lands in the platform)."""
    return {"profiles": config.profiles, "batches": config.batches, "seed": config.seed, "weeks": config.weeks,
            "end": config.end.isoformat()}


def write_parquet(frame: pl.DataFrame, path: Path, compression: str = "zstd") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(frame.to_arrow(), path, compression=compression)
    return path


class SourceFolder:
    """`root` is `$AEP_ASSETS_HOME/synthetic`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.current = self.root / "current"

    def staging(self) -> Path:
        """A fresh folder to generate into; the staging folders of generators killed midway are removed."""
        for leftover in [*self.root.glob(".staging-*"), *self.root.glob(".retired-*")]:
            pid = leftover.name.rsplit("-", 1)[1]
            if pid.isdigit() and (int(pid) == os.getpid() or not alive(int(pid))):
                shutil.rmtree(leftover)
        path = self.root / f".staging-{os.getpid()}"
        path.mkdir(parents=True)
        return path

    def write_batch(self, folder: Path, batch: int, data: SyntheticData, timeline: Timeline) -> dict[str, Path]:
        name = f"batch={batch:05d}.parquet"
        truth = data.truth.with_columns(pl.lit(timeline.cutoff).dt.cast_time_unit("us").alias("cutoff"))
        return {
            "profiles": write_parquet(data.profiles.drop("batch"), folder / "profiles" / name),
            "events": write_parquet(data.events.drop("batch"), folder / "events" / name),
            "truth": write_parquet(truth, folder / "truth" / name),
        }

    def publish(self, staging: Path, timeline: Timeline, population: dict) -> None:
        """Swap a finished staging folder in as `current`."""
        (staging / "timeline.json").write_text(timeline.to_json())
        (staging / "population.json").write_text(json.dumps(population, indent=2, sort_keys=True))
        retired = self.root / f".retired-{os.getpid()}"
        if self.current.exists():
            os.replace(self.current, retired)
        os.replace(staging, self.current)
        if retired.exists():
            shutil.rmtree(retired)

    def files(self, kind: str) -> list[Path]:
        folder = self.current / kind
        if not folder.exists():
            raise FileNotFoundError(f"no synthetic {kind} under {folder}: materialize the synthetic assets first")
        return sorted(folder.glob("batch=*.parquet"))

    def population(self) -> dict | None:
        """The population the current files were generated as (None: none yet, or an older home)."""
        path = self.current / "population.json"
        return json.loads(path.read_text()) if path.exists() else None

    def timeline(self) -> Timeline:
        return Timeline.from_json((self.current / "timeline.json").read_text())

    def truth(self) -> pl.DataFrame:
        """Ground truth of every batch generated so far (initial load and simulated batches)."""
        paths = self.files("truth") + sorted((self.root / "landed" / "truth").glob("batch=*.parquet"))
        return pl.concat([pl.read_parquet(p) for p in paths]) if paths else pl.DataFrame()


def file_digest(path: Path) -> str:
    """Content hash: the idempotency key of a file-based batch."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_folder() -> SourceFolder:
    """The synthetic source system of this home."""
    return SourceFolder(assets_home() / "synthetic")


def configured_end(value: str) -> datetime:
    """The configured end of the timeline; empty: the end of the population this home already holds (a
    re-run, even on another day, regenerates the same one), else the start of today (UTC), so that events
    never lie in the future."""
    if value:
        return iso_datetime(value, "synthetic_data's timeline_end")
    recorded = source_folder().population()
    if recorded:
        return datetime.fromisoformat(recorded["end"])
    return datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def check_same_population(folder: SourceFolder, wanted: dict) -> None:
    """Refuse to generate a different population into a home that already holds one: its batches would
    land beside the old ones and the platform would hold two populations under the same ids."""
    recorded = folder.population()
    if recorded is None or recorded == wanted:
        return
    changed = ", ".join(f"{k} {recorded[k]} -> {wanted[k]}" for k in sorted(wanted) if recorded.get(k) != wanted[k])
    raise SettingError(f"the home {assets_home()} holds another synthetic population ({changed}): use a new "
                       "AEP_ASSETS_HOME for it, or `make clean` to remove everything in this one first")
