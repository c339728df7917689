"""The new-batch sensor through a real Dagster instance and the real local platform; and the
whole loop with the real daemon: a landed batch is scored and reaches the audiences by itself."""

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import pytest

from aep_assets.definitions import build_definitions
from aep_assets.lib.cursor import BatchCursor
from aep_assets.lib.datasets import PROFILES
from aep_assets.resources.platform import BatchIngestionError
from aep_assets_tests.factories import profiles_file


def evaluate(defs, instance, cursor=None, records: list | None = None):
    """One tick of the sensor; what it logs goes to `records` (log records) when given."""
    sensor = defs.resolve_sensor_def("new_profile_batch_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    if records is not None:
        handler = logging.Handler()
        handler.emit = records.append
        context.log.addHandler(handler)
    return sensor(context), context


@pytest.fixture
def sensor_setup(platform, storage, tracking):
    defs = build_definitions({"platform": platform, "storage": storage, "mlflow_tracking": tracking})
    with dg.instance_for_test() as instance:
        yield defs, instance, platform, platform.ensure_dataset(PROFILES)


def land(platform, dataset, path, ids, key):
    return platform.ingest_batch(dataset, PROFILES, [profiles_file(path, ids)], idempotency_key=key)


def test_a_new_batch_gives_exactly_one_run_request(sensor_setup, tmp_path):
    defs, instance, platform, dataset = sensor_setup
    batch = land(platform, dataset, tmp_path / "a.parquet", range(20), "a")
    result, _ = evaluate(defs, instance)
    assert [(r.run_key, r.partition_key) for r in result.run_requests] == [(batch.id, batch.id)]
    assert result.dynamic_partitions_requests[0].partition_keys == [batch.id]
    again, _ = evaluate(defs, instance, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason) or not again.run_requests
    assert BatchCursor.parse(result.cursor) == BatchCursor(batch.completed_ms, (batch.id,))


def test_batches_sharing_a_millisecond_are_all_requested_once(sensor_setup, tmp_path):
    defs, instance, platform, dataset = sensor_setup
    batches = [land(platform, dataset, tmp_path / f"{i}.parquet", range(i * 10, i * 10 + 10), str(i)) for i in range(3)]
    platform.execute(f"UPDATE catalog.batches SET completed_ms = {batches[0].completed_ms}")
    first, _ = evaluate(defs, instance)
    seen = [r.run_key for r in first.run_requests]
    # another batch completes in the same millisecond after the tick
    late = land(platform, dataset, tmp_path / "late.parquet", range(100, 110), "late")
    platform.execute(f"UPDATE catalog.batches SET completed_ms = {batches[0].completed_ms} WHERE id = '{late.id}'")
    second, _ = evaluate(defs, instance, cursor=first.cursor)
    assert sorted(seen) == sorted(b.id for b in batches)
    assert [r.run_key for r in second.run_requests] == [late.id]


def test_failed_batches_are_skipped_and_known_partitions_not_rescored(sensor_setup, tmp_path):
    defs, instance, platform, dataset = sensor_setup
    known = land(platform, dataset, tmp_path / "known.parquet", range(5), "known")
    instance.add_dynamic_partitions("profile_batches", [known.id])
    with pytest.raises(BatchIngestionError) as failure:
        land(platform, dataset, tmp_path / "dup.parquet", [1, 1], "dup")
    records = []
    result, context = evaluate(defs, instance, records=records)
    assert isinstance(result, dg.SkipReason) and "1 failed, 1 already scored" in result.skip_message
    # the operator reads why it failed, the platform's own error, not only its id
    warning = next(r.getMessage() for r in records if "skipping failed profile batch" in r.getMessage())
    assert failure.value.batch.id in warning and "duplicate 'userid' values" in warning
    assert BatchCursor.parse(context.cursor).after_ms > 0  # moved past what it deliberately skipped
    fresh = land(platform, dataset, tmp_path / "fresh.parquet", range(50, 55), "fresh")
    result, _ = evaluate(defs, instance, cursor=context.cursor)
    assert [r.run_key for r in result.run_requests] == [fresh.id]


def test_a_tick_is_bounded_and_the_rest_waits(sensor_setup, tmp_path):
    from aep_assets.defs.sensors import MAX_BATCHES_PER_TICK

    defs, instance, platform, dataset = sensor_setup
    ids = [land(platform, dataset, tmp_path / f"{i}.parquet", range(i * 3, i * 3 + 3), f"b{i}").id
           for i in range(MAX_BATCHES_PER_TICK + 2)]
    first, _ = evaluate(defs, instance)
    second, _ = evaluate(defs, instance, cursor=first.cursor)
    assert [r.run_key for r in first.run_requests] == ids[:MAX_BATCHES_PER_TICK]
    assert [r.run_key for r in second.run_requests] == ids[MAX_BATCHES_PER_TICK:]


@pytest.mark.parametrize("promoted", [True, False])
def test_a_promotion_rescores_every_batch_once_and_a_kept_champion_nothing(promoted):
    """champion_promoted_sensor on a real training-job run: a stand-in propensity_model reports the
    metadata the real asset reports (`promoted`), so the sensor's decision is what is tested."""
    from aep_assets.defs.partitions import profile_batches
    from aep_assets.defs.sensors import champion_promoted_sensor
    from aep_assets.metadata import RANGE_END, RANGE_START

    @dg.asset(name="training_features")
    def features_table():
        return dg.MaterializeResult()

    @dg.asset(name="propensity_model", deps=[features_table])
    def trained_model():
        return dg.MaterializeResult(metadata={"promoted": promoted})

    job = dg.define_asset_job("train_propensity_model_job", selection=[features_table, trained_model])
    defs = dg.Definitions(assets=[features_table, trained_model], jobs=[job])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(profile_batches.name, ["b1", "b2", "b3"])
        result = defs.resolve_job_def("train_propensity_model_job").execute_in_process(instance=instance)
        run = instance.get_run_by_id(result.run_id)
        success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
        context = dg.build_run_status_sensor_context(sensor_name="champion_promoted_sensor", dagster_event=success,
                                                     dagster_instance=instance, dagster_run=run)
        outcome = champion_promoted_sensor(context)
        if not promoted:
            assert isinstance(outcome, dg.SkipReason)
            return
        assert isinstance(outcome, dg.RunRequest)
        assert outcome.run_key == f"champion-{run.run_id}"  # one rescore per promotion, however often evaluated
        assert (outcome.tags[RANGE_START], outcome.tags[RANGE_END]) == ("b1", "b3")
        # a later run of the job that only rebuilt the features (a subset launched from the UI): no promotion
        later = defs.resolve_job_def("train_propensity_model_job").execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("training_features")])
        later_success = next(e for e in later.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
        stale = dg.build_run_status_sensor_context(
            sensor_name="champion_promoted_sensor", dagster_event=later_success, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(later.run_id))
        assert isinstance(champion_promoted_sensor(stale), dg.SkipReason)


@pytest.mark.slow
def test_the_daemon_rescores_a_landed_batch_by_itself(monkeypatch):
    """make run's state, a running dagster-daemon, then simulate_profile_batch_job: the sensor's run
    scores the new profiles, ingests them and refreshes the audiences with nobody clicking."""
    home = Path(tempfile.mkdtemp(prefix="daemon-", dir=os.environ["AEP_ASSETS_HOME"].rsplit("/aep-home", 1)[0]))
    home.chmod(0o755)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    shutil.copy(Path(__file__).parents[1] / "dagster.yaml", dagster_home / "dagster.yaml")
    monkeypatch.setenv("AEP_ASSETS_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    from aep_assets.main import run_all

    defs = build_definitions()
    platform = defs.resources["platform"]
    daemon = None
    try:
        with dg.DagsterInstance.get() as instance:
            run_all(defs, instance, {
                "load_synthetic_data_job": {"ops": {"synthetic_data": {"config": {"profiles": 2000, "batches": 2}}}}})
            daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-m",
                                       "aep_assets.definitions"], cwd=Path(__file__).parents[1],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            landed_at = time.monotonic()
            # Two batches land back to back: two rescore runs, in parallel, must not interfere.
            for _ in range(2):
                defs.resolve_job_def("simulate_profile_batch_job").execute_in_process(
                    instance=instance, run_config={"ops": {"land_profile_batch": {"config": {"profiles": 500}}}})
            profiles = platform.find_dataset(PROFILES.name)
            new_batches = [b.id for b in platform.completed_batches(profiles)[-2:]]
            deadline = time.monotonic() + 300
            runs = {}
            while time.monotonic() < deadline:
                for batch_id in new_batches:
                    records = instance.get_run_records(dg.RunsFilter(job_name="rescore_profile_batch_job",
                                                                     tags={"dagster/partition": batch_id}))
                    runs[batch_id] = [r.dagster_run for r in records]
                if all(runs.get(b) and runs[b][0].is_finished for b in new_batches):
                    break
                time.sleep(2)
            assert all(runs.get(b) for b in new_batches), f"the daemon's sensor requested no run: {runs}"
            assert all(len(runs[b]) == 1 for b in new_batches), "a batch was rescored more than once"
            statuses = {b: runs[b][0].status for b in new_batches}
            assert all(s == dg.DagsterRunStatus.SUCCESS for s in statuses.values()), statuses
            seconds = time.monotonic() - landed_at
            for batch_id in new_batches:
                scored = platform.query(
                    "SELECT COUNT(DISTINCT s.userid) AS n FROM cmle_propensity_scores s JOIN cmle_profiles p "
                    f"ON p.userid = s.userid WHERE p._acp_batchid = '{batch_id}'")["n"][0].as_py()
                assert scored == 500
            audiences = instance.get_latest_materialization_event(dg.AssetKey("propensity_audiences"))
            assert audiences.run_id in {runs[b][0].run_id for b in new_batches}
            assert audiences.asset_materialization.metadata["scored_profiles"].value == 3000
            print(f"landing to scores in the platform: {seconds:.1f} s")
    finally:
        if daemon is not None:
            os.killpg(daemon.pid, 15)
            daemon.wait(timeout=30)
        platform.server.remove()
