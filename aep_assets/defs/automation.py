"""Jobs, the new-batch sensor and the schedules that keep propensity scores fresh without anyone clicking."""

import time

import dagster as dg
from pydantic import Field

from aep_assets.defs.partitions import profile_batches
from aep_assets.defs.synthetic import SyntheticDataConfig, configured_end, source_folder
from aep_assets.lib import synthetic
from aep_assets.lib.cursor import BatchCursor, plan_tick
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES
from aep_assets.lib.source_files import file_digest, timeline_of
from aep_assets.resources.platform import Platform

MAX_BATCHES_PER_TICK = 5
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

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
    selection=["scoring_features", "propensity_scores", "aep_propensity_scores", "propensity_audiences",
               "audience_activations"],
    partitions_def=profile_batches,
    # A chain of five short steps: in one process a sensor-launched run loads Python, Dagster, the code
    # and the model once instead of once per step (each load costs seconds, the 10k-batch work about 5 s).
    # Pools still apply: the in-process executor claims the instance's concurrency slots too. This also
    # overrides AEP_ASSETS_EXECUTOR=k8s: the steps share the run's pod.
    executor_def=dg.in_process_executor,
    description="Score one profile batch (or a range, in one run) with the champion, ingest the scores, "
                "then refresh the audiences and their activation.")


def all_batches_request(instance: dg.DagsterInstance, run_key: str | None) -> dg.RunRequest | dg.SkipReason:
    """One run over every known profile batch (the assets take the range in a single run)."""
    keys = instance.get_dynamic_partitions(profile_batches.name)
    if not keys:
        return dg.SkipReason("no profile batches yet")
    return dg.RunRequest(run_key=run_key, tags={RANGE_START: keys[0], RANGE_END: keys[-1]})


@dg.sensor(job=rescore_profile_batch_job, minimum_interval_seconds=15,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the platform catalog: each new successful batch of the profile dataset gets a "
                       "partition and a rescore run (run_key = batch id); failed batches are skipped, at most "
                       f"{MAX_BATCHES_PER_TICK} per tick.")
def new_profile_batch_sensor(context: dg.SensorEvaluationContext, platform: Platform):
    """New profiles get scores, and reach the audiences, without anyone clicking."""
    dataset = platform.find_dataset(PROFILES.name)
    if dataset is None:
        return dg.SkipReason(f"dataset {PROFILES.name} does not exist yet")
    cursor = BatchCursor.parse(context.cursor)
    known = set(context.instance.get_dynamic_partitions(profile_batches.name))
    batches = platform.completed_batches(dataset, completed_after_ms=cursor.after_ms,
                                         limit=MAX_BATCHES_PER_TICK * 4 + len(cursor.ids_at_ms))
    plan = plan_tick(cursor, batches, known.__contains__, MAX_BATCHES_PER_TICK)
    errors = {b.id: b.error for b in batches}
    for batch_id in plan.failed:
        context.log.warning(f"skipping failed profile batch {batch_id}: {errors.get(batch_id) or 'no error given'}")
    if not plan.requested:
        context.update_cursor(plan.cursor.serialize())
        return dg.SkipReason(f"no new profile batches ({len(plan.failed)} failed, "
                             f"{len(plan.already_known)} already scored)")
    context.log.info(f"requesting rescore of {plan.requested}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=key, partition_key=key) for key in plan.requested],
        dynamic_partitions_requests=[profile_batches.build_add_request(plan.requested)],
        cursor=plan.cursor.serialize())


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[train_propensity_model_job],
                      request_job=rescore_profile_batch_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      description="When a training run promoted a new champion, re-scores every profile batch "
                                  "with it in one run.")
def champion_promoted_sensor(context: dg.RunStatusSensorContext):
    """Scores always come from the current champion."""
    record = context.instance.get_latest_materialization_event(dg.AssetKey("propensity_model"))
    materialization = record.asset_materialization if record else None
    if (record is None or record.run_id != context.dagster_run.run_id
            or not materialization.metadata.get("promoted", dg.MetadataValue.bool(False)).value):
        return dg.SkipReason("the training run did not promote a new champion")
    return all_batches_request(context.instance, run_key=f"champion-{context.dagster_run.run_id}")


def build_schedules(retrain_cron: str, rescore_cron: str) -> list[dg.ScheduleDefinition]:
    retrain = dg.ScheduleDefinition(
        name="retrain_propensity_model_schedule", job=train_propensity_model_job, cron_schedule=retrain_cron,
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Periodic retraining; a new version becomes champion only through the gate, and a "
                    "promotion triggers a full rescore (champion_promoted_sensor).")

    @dg.schedule(name="full_rescore_schedule", job=rescore_profile_batch_job, cron_schedule=rescore_cron,
                 execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
                 description="Periodic full rescore: every profile batch in one run, so scores follow the "
                             "profiles' newest events even without new batches.")
    def full_rescore_schedule(context: dg.ScheduleEvaluationContext):
        return all_batches_request(context.instance, run_key=None)

    return [retrain, full_rescore_schedule]


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
