"""Synthetic customers and their behaviour: the outside source whose batches land in the platform."""

from datetime import datetime, timezone

import dagster as dg
import polars as pl
from pydantic import Field

from aep_assets.lib import synthetic
from aep_assets.lib.features import DEFAULT_CUTOFF_DAYS_BEFORE_END, DEFAULT_HORIZON_DAYS
from aep_assets.lib.source_files import (
    check_same_population,
    configured_end,
    population_of,
    source_folder,
    timeline_of,
)
from aep_assets.metadata import OWNERS, preview, row_count, table
from aep_assets.settings import SettingError, checked_profiles, default_profiles


class SyntheticDataConfig(dg.Config):
    """Size and shape of the synthetic population (the reference: 100k users in 10 batches)."""

    profiles: int = Field(default=0, description="Profiles to generate; 0 means $AEP_ASSETS_PROFILES (100000).")
    batches: int = Field(default=10, description="Profile batches, each landing as one platform batch.")
    seed: int = Field(default=42, description="Same seed, same data.")
    timeline_end: str = Field(default="", description="ISO date the 10-week timeline ends; empty: the end of the "
                                                      "population already in this home, else today 00:00 UTC.")
    weeks: int = Field(default=10)
    cutoff_days_before_end: float = Field(default=DEFAULT_CUTOFF_DAYS_BEFORE_END,
                                          description="Observation cutoff of the ground truth (oracle).")
    horizon_days: float = Field(default=DEFAULT_HORIZON_DAYS, description="Label horizon of the ground truth.")

    def generator_config(self) -> synthetic.SyntheticConfig:
        profiles = checked_profiles(self.profiles, "synthetic_data's profiles") if self.profiles else default_profiles()
        if self.batches < 1 or profiles < self.batches:
            raise SettingError(f"synthetic_data's batches must be between 1 and the number of profiles "
                               f"({profiles}), got {self.batches}")
        return synthetic.SyntheticConfig(
            profiles=profiles, batches=self.batches, seed=self.seed, end=configured_end(self.timeline_end),
            weeks=self.weeks, cutoff_days_before_end=self.cutoff_days_before_end, horizon_days=self.horizon_days)


@dg.multi_asset(
    specs=[
        dg.AssetSpec("synthetic_profiles", group_name="synthetic", owners=OWNERS, kinds={"python", "parquet"},
                     description="Synthetic customer profiles (names, email, ECID-style userid, location), "
                                 "one parquet file per profile batch, as a CRM would drop them."),
        dg.AssetSpec("synthetic_experience_events", group_name="synthetic", owners=OWNERS, kinds={"python", "parquet"},
                     description="Ten weeks of email, web, commerce, advertising and decisioning events of "
                                 "those profiles, with conversions (web.formFilledOut) from the reference's "
                                 "propensity process, and the generator's ground truth for the oracle AUC."),
    ],
)
def synthetic_data(context: dg.AssetExecutionContext, config: SyntheticDataConfig):
    """Generate profiles and events batch by batch (bounded memory) and publish them in one swap."""
    generator_config = config.generator_config()
    timeline = timeline_of(generator_config)
    folder = source_folder()
    population = population_of(generator_config)
    check_same_population(folder, population)
    staging = folder.staging()
    profile_counts, event_frames, truth_frames = [], [], []
    started = datetime.now(timezone.utc)
    for batch in range(generator_config.batches):
        data = synthetic.generate_batch(generator_config, batch)
        folder.write_batch(staging, batch, data, timeline)
        profile_counts.append(data.profiles.height)
        event_frames.append(data.events.group_by("event_type").len())
        truth_frames.append(data.truth.select("converted_before_cutoff", "converted_in_horizon"))
        if batch == 0:
            first = data
        elapsed = (datetime.now(timezone.utc) - started).total_seconds()
        eta = elapsed / (batch + 1) * (generator_config.batches - batch - 1)
        context.log.info(f"generated batch {batch + 1}/{generator_config.batches}: {data.profiles.height} profiles, "
                         f"{data.events.height} events; ETA {eta:.0f} s")
    folder.publish(staging, timeline, population)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()

    per_type = (pl.concat(event_frames).group_by("event_type").agg(pl.col("len").sum().alias("events"))
                .sort("events", descending=True))
    events_total = int(per_type["events"].sum())
    truth = pl.concat(truth_frames)
    converted = int(per_type.filter(pl.col("event_type") == synthetic.TARGET_EVENT)["events"].sum())
    profiles_total = sum(profile_counts)
    common = {"timeline": f"{timeline.start:%Y-%m-%d} to {timeline.end:%Y-%m-%d}",
              "folder": dg.MetadataValue.path(str(folder.current)), "batches": generator_config.batches,
              "seed": generator_config.seed}
    yield dg.MaterializeResult(asset_key="synthetic_profiles", metadata={
        **common, **row_count(profiles_total),
        "profiles_per_batch": dg.MetadataValue.json(profile_counts),
        "preview": preview(first.profiles.drop("batch")),
    })
    yield dg.MaterializeResult(asset_key="synthetic_experience_events", metadata={
        **common, **row_count(events_total),
        "events_per_profile": round(events_total / max(profiles_total, 1), 2),
        "conversion_rate": round(converted / max(profiles_total, 1), 4),
        "horizon_conversion_rate": round(float(truth.filter(~pl.col("converted_before_cutoff"))
                                               ["converted_in_horizon"].mean() or 0.0), 4),
        "events_per_type": table(per_type),
        "generation_seconds": round(seconds, 2),
        "events_per_second": round(events_total / max(seconds, 1e-9)),
        "preview": preview(first.events.drop("batch")),
    })
