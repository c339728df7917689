"""Schedules for periodic retraining and a full rescore, their times from the environment (UTC cron)."""

import os

import dagster as dg

from aep_assets.defs.jobs import rescore_profile_batch_job, train_propensity_model_job
from aep_assets.defs.sensors import all_batches_request
from aep_assets.settings import SettingError


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


def configured_schedules() -> list[dg.ScheduleDefinition]:
    """AEP_ASSETS_RETRAIN_CRON (default Mondays 03:00) and AEP_ASSETS_RESCORE_CRON (default daily 04:00)."""
    retrain, rescore = (os.environ.get("AEP_ASSETS_RETRAIN_CRON", "0 3 * * 1"),
                        os.environ.get("AEP_ASSETS_RESCORE_CRON", "0 4 * * *"))
    try:
        return build_schedules(retrain, rescore)
    except dg.DagsterInvalidDefinitionError as error:
        raise SettingError(f"AEP_ASSETS_RETRAIN_CRON ({retrain!r}) and AEP_ASSETS_RESCORE_CRON ({rescore!r}) must be "
                           f"5-field cron expressions such as '0 3 * * 1' (UTC): {error}") from None
