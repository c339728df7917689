"""Sensors that keep propensity scores fresh without anyone clicking: new profile batches, new champions."""

import dagster as dg

from aep_assets.defs.jobs import rescore_profile_batch_job, train_propensity_model_job
from aep_assets.defs.partitions import profile_batches
from aep_assets.lib.cursor import BatchCursor, plan_tick
from aep_assets.lib.datasets import PROFILES
from aep_assets.metadata import partition_range_tags
from aep_assets.resources.platform import Platform

MAX_BATCHES_PER_TICK = 5
# The daemon evaluates sensors at most every 5 s whatever is asked: this is the soonest a landed batch is
# noticed. One catalog listing per tick (a single GET in AEP mode).
NEW_BATCH_INTERVAL_SECONDS = 5


def all_batches_request(instance: dg.DagsterInstance, run_key: str | None) -> dg.RunRequest | dg.SkipReason:
    """One run over every known profile batch (the assets take the range in a single run)."""
    keys = instance.get_dynamic_partitions(profile_batches.name)
    if not keys:
        return dg.SkipReason("no profile batches yet")
    return dg.RunRequest(run_key=run_key, tags=partition_range_tags(keys[0], keys[-1]))


@dg.sensor(job=rescore_profile_batch_job, minimum_interval_seconds=NEW_BATCH_INTERVAL_SECONDS,
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


SENSORS = [new_profile_batch_sensor, champion_promoted_sensor]
