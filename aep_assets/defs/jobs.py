"""The jobs a person or the automation launches: load the source, train, rescore, land a new batch."""

import time

import dagster as dg
from pydantic import Field

from aep_assets.defs.synthetic import SyntheticDataConfig
from aep_assets.lib import synthetic
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES
from aep_assets.lib.source_files import configured_end, file_digest, source_folder, timeline_of
from aep_assets.resources.platform import Platform

load_synthetic_data_job = dg.define_asset_job(
    "load_synthetic_data_job",
    selection=["synthetic_profiles", "synthetic_experience_events", "aep_profiles", "aep_experience_events"],
    description="Generate the synthetic population and land it in the platform's datasets.")

train_propensity_model_job = dg.define_asset_job(
    "train_propensity_model_job",
    selection=["training_features", "eda_summary", "training_export", "propensity_model"],
    description="Rebuild the training table from the platform, export it, train, evaluate and gate a model.")

rescore_profile_batch_job = dg.define_asset_job(
    "rescore_profile_batch_job",
    selection=dg.AssetSelection.assets("scoring_features", "propensity_scores", "aep_propensity_scores",
                                       "propensity_audiences", "audience_activations"),
    # A chain of five short steps: in one process a sensor-launched run loads Python, Dagster, the code
    # and the model once instead of once per step (each load costs seconds, the 10k-batch work about 5 s).
    # Pools still apply: the in-process executor claims the instance's concurrency slots too. This also
    # overrides AEP_ASSETS_EXECUTOR=k8s: the steps share the run's pod.
    executor_def=dg.in_process_executor,
    description="Score one profile batch (or a range, in one run) with the champion, ingest the scores, "
                "then refresh the audiences and their activation.")


class SimulateBatchConfig(dg.Config):
    profiles: int = Field(default=10_000, description="Profiles in the new batch.")
    seed: int = Field(default=42, description="Seed of the population (the same as the initial load's).")


@dg.op(description="Generate a new profile batch with its events and land both through the platform's "
                   "batch ingestion, as an outside source would; the sensor notices it.")
def land_profile_batch(context: dg.OpExecutionContext, config: SimulateBatchConfig, platform: Platform):
    folder = source_folder()
    landed = folder.root / "landed"
    initial_batches = (folder.population() or {}).get("batches", SyntheticDataConfig().batches)
    index = initial_batches + len(list((landed / "profiles").glob("batch=*.parquet")))
    generator_config = synthetic.SyntheticConfig(profiles=config.profiles, batches=1, seed=config.seed,
                                                 end=configured_end(""))
    started = time.monotonic()
    data = synthetic.generate_batch(generator_config, index)
    files = folder.write_batch(landed, index, data, timeline_of(generator_config))
    events_ds = platform.ensure_dataset(EXPERIENCE_EVENTS)
    profiles_ds = platform.ensure_dataset(PROFILES)
    # Events first: when the profile batch appears (what the sensor watches), its events are there.
    events_batch = platform.ingest_batch(events_ds, EXPERIENCE_EVENTS, [files["events"]],
                                         idempotency_key=file_digest(files["events"]))
    profile_batch = platform.ingest_batch(profiles_ds, PROFILES, [files["profiles"]],
                                          idempotency_key=file_digest(files["profiles"]))
    context.log.info(f"landed profile batch {profile_batch.id} ({profile_batch.record_count} profiles) and "
                     f"event batch {events_batch.id} ({events_batch.record_count} events) in "
                     f"{time.monotonic() - started:.1f} s")
    context.add_output_metadata({"profile_batch": profile_batch.id, "profiles": profile_batch.record_count,
                                 "events": events_batch.record_count})


@dg.job(description="Land one new synthetic profile batch (and its events) in the platform, as an outside "
                    "source would; new_profile_batch_sensor then re-scores it.")
def simulate_profile_batch_job():
    land_profile_batch()


JOBS = [load_synthetic_data_job, train_propensity_model_job, rescore_profile_batch_job, simulate_profile_batch_job]
