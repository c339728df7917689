"""The whole graph materialized on real local resources: PostgreSQL, parquet files, MLflow."""

from __future__ import annotations

import secrets

import dagster as dg
import pyarrow.parquet as pq
import pytest

from aep_assets.definitions import build_definitions
from aep_assets.defs.training import propensity_model
from aep_assets.lib.datasets import EXPERIENCE_EVENTS, PROFILES, PROPENSITY_SCORES
from aep_assets.lib.merge import current_records_sql, merged_table
from aep_assets.main import run_all, summary
from aep_assets.metadata import ROW_COUNT
from aep_assets.resources.local_platform import LocalPlatform
from aep_assets.resources.platform import export_parent
from aep_assets.resources.storage import LocalStorage
from aep_assets.resources.tracking import MlflowTracking

# The production gate as it is: its rules allow for the sampling error of ~900 held-out rows.
SMALL = {"load_synthetic_data_job": {"ops": {"synthetic_data": {"config": {"profiles": 4000, "batches": 3}}}}}


@pytest.fixture(scope="module")
def pipeline(embedded_server, session_home, tmp_path_factory):
    """One end-to-end run shared by the assertions below (it is the expensive part)."""
    import os
    import tempfile
    from pathlib import Path

    home = Path(tempfile.mkdtemp(prefix="pipeline-", dir=session_home))
    home.chmod(0o755)
    previous = os.environ.get("AEP_ASSETS_HOME")
    os.environ["AEP_ASSETS_HOME"] = str(home)
    resources = {"platform": LocalPlatform(home=str(session_home), database=f"pipe_{secrets.token_hex(4)}"),
                 "storage": LocalStorage(root=str(home / "storage")), "mlflow_tracking": MlflowTracking()}
    defs = build_definitions(resources)
    with dg.instance_for_test() as instance:
        timings = run_all(defs, instance, SMALL)
        yield {"defs": defs, "instance": instance, "resources": resources, "home": home, "timings": timings}
    if previous is None:
        os.environ.pop("AEP_ASSETS_HOME", None)
    else:
        os.environ["AEP_ASSETS_HOME"] = previous


def materialized(instance, key):
    return instance.get_latest_materialization_event(dg.AssetKey(key))


def test_every_asset_is_materialized_with_metadata(pipeline):
    instance = pipeline["instance"]
    for key in ["synthetic_profiles", "synthetic_experience_events", "aep_profiles", "aep_experience_events",
                "training_features", "eda_summary", "training_export", "propensity_model",
                "propensity_audiences", "audience_activations"]:
        event = materialized(instance, key)
        assert event is not None, key
        assert event.asset_materialization.metadata, key
    keys = instance.get_dynamic_partitions("profile_batches")
    assert len(keys) == 3
    for key in ["scoring_features", "propensity_scores", "aep_propensity_scores"]:
        partitions = instance.get_materialized_partitions(dg.AssetKey(key))
        assert partitions == set(keys), key


def test_a_load_of_many_batches_refreshes_the_planner_statistics_once(pipeline):
    """Each ANALYZE samples the whole table: after each of the initial batches it cost seconds at 1M profiles.
    Without statistics on the merged profiles the scoring features' plan spilled to disk at 1M profiles."""
    platform = pipeline["resources"]["platform"]
    tables = {"aep_experience_events": platform.find_dataset_or_fail(EXPERIENCE_EVENTS.name).table,
              # the profiles as queries read them: the merged table, one current record per userid
              "aep_profiles": merged_table(platform.find_dataset_or_fail(PROFILES.name).table)}
    for asset, table in tables.items():
        with platform.connect() as conn:
            analyzed, estimated = conn.execute(
                "SELECT s.analyze_count, c.reltuples FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
                "WHERE s.relname = %s", (table,)).fetchone()
        rows = materialized(pipeline["instance"], asset).asset_materialization.metadata[ROW_COUNT].value
        assert (analyzed, estimated) == (1, rows), table


def test_every_profile_has_exactly_one_latest_score(pipeline):
    platform = pipeline["resources"]["platform"]
    profiles = platform.query(f'SELECT COUNT(*) AS n FROM "{PROFILES.name}"')["n"][0].as_py()
    scores = platform.query(f'SELECT COUNT(*) AS n, COUNT(DISTINCT userid) AS d, MIN(propensity) AS lo, '
                            f'MAX(propensity) AS hi FROM "{PROPENSITY_SCORES.name}"').to_pylist()[0]
    assert profiles == 4000
    assert scores["n"] == scores["d"] == 4000
    assert 0 <= scores["lo"] <= scores["hi"] <= 1


def test_model_is_champion_and_close_to_the_oracle(pipeline):
    meta = materialized(pipeline["instance"], "propensity_model").asset_materialization.metadata
    assert meta["promoted"].value is True and meta["gate_passed"].value is True
    assert isinstance(meta["oracle_auc"].value, float)
    assert meta["model_auc"].value > 0.6
    champion = pipeline["resources"]["mlflow_tracking"].champion_version()
    assert champion is not None and str(champion.version) == meta["registered_version"].value


def test_checks_passed(pipeline):
    instance = pipeline["instance"]
    for check in ["training_features_row_count", "training_features_label_rate", "propensity_scores_valid",
                  "propensity_audiences_sizes", "scoring_features_row_count"]:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(_asset_of(check)), check))
        assert record is not None and record.status.value == "SUCCEEDED", check


def _asset_of(check: str) -> str:
    for asset in ["training_features", "propensity_scores", "propensity_audiences", "scoring_features"]:
        if check.startswith(asset):
            return asset
    raise KeyError(check)


def test_export_and_activation_files_are_readable(pipeline):
    storage, platform = pipeline["resources"]["storage"], pipeline["resources"]["platform"]
    exports = [p for p in storage.root_path.glob("cmle/egress/*/exportTime=*/part-*.gz.parquet")]
    assert exports and pq.read_table(exports[0]).num_rows > 0
    training = platform.find_dataset("cmle_training_features")
    exported = storage.read_frame(storage.latest_complete(export_parent(training)))
    assert exported["userid"].is_sorted()  # the training step reads it without sorting a copy
    activations = list(storage.root_path.glob("cmle/activation/*/exportTime=*/_manifest.json"))
    assert len(activations) == len(platform.audiences()) == 5


def test_summary_names_auc_and_oracle(pipeline):
    text = summary(pipeline["instance"], pipeline["timings"])
    assert "model AUC" in text and "oracle AUC" in text and "cmle/activation" in text


def test_rerunning_everything_duplicates_nothing(pipeline):
    """A second full run: same datasets, batches, audiences and activation files; no second model version."""
    platform, storage = pipeline["resources"]["platform"], pipeline["resources"]["storage"]
    tracking = pipeline["resources"]["mlflow_tracking"]
    before = {
        "datasets": platform.query("SELECT name FROM catalog.datasets ORDER BY name")["name"].to_pylist(),
        "profile_batches": platform.batches(platform.find_dataset(PROFILES.name)),
        "event_rows": platform.query('SELECT COUNT(*) AS n FROM "cmle_experience_events"')["n"][0].as_py(),
        "audiences": [a.id for a in platform.audiences()],
        "versions": len(tracking.client().search_model_versions("name='cmle_propensity_model'")),
    }
    for _ in range(2):  # three runs in all
        run_all(pipeline["defs"], pipeline["instance"], SMALL)
    assert platform.query("SELECT name FROM catalog.datasets ORDER BY name")["name"].to_pylist() == before["datasets"]
    assert platform.batches(platform.find_dataset(PROFILES.name)) == before["profile_batches"]
    assert platform.query('SELECT COUNT(*) AS n FROM "cmle_experience_events"')["n"][0].as_py() == before["event_rows"]
    assert [a.id for a in platform.audiences()] == before["audiences"]
    assert len(tracking.client().search_model_versions("name='cmle_propensity_model'")) == before["versions"]
    for audience in platform.audiences():
        manifests = list(storage.root_path.glob("cmle/activation/*/exportTime=*/_manifest.json"))
        assert len(manifests) == len(before["audiences"]), audience.name
    latest = platform.query(
        "SELECT COUNT(*) AS n, COUNT(DISTINCT userid) AS d FROM (" +
        current_records_sql(PROPENSITY_SCORES, PROPENSITY_SCORES.name) + ") AS l")
    assert latest["n"][0].as_py() == latest["d"][0].as_py() == 4000
    # The merged table ingestion maintains holds exactly what the window over every score ingested says.
    scores = platform.find_dataset(PROPENSITY_SCORES.name)
    merged = platform.query(f"SELECT * FROM ({platform.current_records(scores, PROPENSITY_SCORES)}) AS m "
                            "ORDER BY userid")
    window = current_records_sql(PROPENSITY_SCORES, scores.table)
    assert merged.equals(platform.query(f"SELECT * FROM ({window}) AS w ORDER BY userid"))


def test_a_profile_update_batch_updates_profiles_and_adds_none(pipeline, tmp_path):
    """Five known userids re-sent with new emails, through the platform's batch ingestion as any later
    profile batch lands: the profile dataset keeps both records, everything downstream sees one current
    profile per userid (the latest batch wins), and those profiles now belong to the new batch's partition."""
    import polars as pl

    from aep_assets.metadata import RANGE_END, RANGE_START

    defs, instance, platform = pipeline["defs"], pipeline["instance"], pipeline["resources"]["platform"]
    storage = pipeline["resources"]["storage"]
    profiles = platform.find_dataset(PROFILES.name)
    original = platform.completed_batches(profiles)[0].id
    columns = ", ".join(PROFILES.schema.names)
    sent = pl.from_arrow(platform.query(f"SELECT {columns} FROM cmle_profiles WHERE _acp_batchid = '{original}' "
                                        "ORDER BY userid LIMIT 5"))
    updated = sent.with_columns(pl.format("updated.{}@example.org", pl.int_range(5)).alias("email"))
    updated.write_parquet(tmp_path / "update.parquet")
    batch = platform.ingest_batch(profiles, PROFILES, [tmp_path / "update.parquet"], idempotency_key="update-1")
    instance.add_dynamic_partitions("profile_batches", [batch.id])  # as new_profile_batch_sensor does
    rows_before = materialized(instance, "training_features").asset_materialization.metadata["dagster/row_count"]

    trained = defs.resolve_job_def("train_propensity_model_job").execute_in_process(
        instance=instance, raise_on_error=False)
    assert trained.success  # the row-count check counts identities, not records
    assert materialized(instance, "training_features").asset_materialization.metadata["dagster/row_count"] == \
        rows_before
    keys = instance.get_dynamic_partitions("profile_batches")
    rescored = defs.resolve_job_def("rescore_profile_batch_job").execute_in_process(
        instance=instance, tags={RANGE_START: keys[0], RANGE_END: keys[-1]}, raise_on_error=False)
    assert rescored.success

    assert platform.query('SELECT count(*) AS n FROM "cmle_profiles"')["n"][0].as_py() == 4005  # the history
    per_batch = {r["profile_batch"]: r["n"] for r in platform.query(
        "SELECT profile_batch, count(*) AS n FROM cmle_scoring_features GROUP BY 1").to_pylist()}
    assert per_batch[batch.id] == 5 and sum(per_batch.values()) == 4000
    scores_view = platform.current_records(platform.find_dataset(PROPENSITY_SCORES.name), PROPENSITY_SCORES)
    scores = platform.query(f"SELECT count(*) AS n, count(DISTINCT userid) AS d FROM ({scores_view}) AS s")
    assert scores.to_pylist() == [{"n": 4000, "d": 4000}]
    files = storage.root_path.glob("cmle/activation/*/exportTime=*/*.parquet")
    activated = pl.concat([pl.read_parquet(path) for path in files])
    emails = dict(activated.filter(pl.col("userid").is_in(sent["userid"].to_list()))
                  .select("userid", "email").unique().iter_rows())
    assert emails == dict(zip(updated["userid"], updated["email"], strict=True))


def test_a_broken_export_fails_the_gate_and_keeps_the_champion(pipeline):
    """Labels shuffled in a newer export: the blocking checks fail and the alias does not move."""
    import polars as pl

    platform, storage = pipeline["resources"]["platform"], pipeline["resources"]["storage"]
    tracking = pipeline["resources"]["mlflow_tracking"]
    champion_before = tracking.champion_version().version
    dataset = platform.find_dataset("cmle_training_features")
    frame = pl.from_arrow(storage.read_table(storage.latest_complete(export_parent(dataset))))
    shuffled = frame.with_columns(pl.col("label").shuffle(seed=1))
    storage.write_table(f"{export_parent(dataset)}/exportTime=29991231235959", shuffled.to_arrow())
    result = dg.materialize([propensity_model],
                            instance=pipeline["instance"], resources=pipeline["resources"], raise_on_error=False)
    assert not result.success
    evaluations = result.get_asset_check_evaluations()
    failed = {e.check_name for e in evaluations if not e.passed}
    assert "propensity_model_auc_floor" in failed  # the oracle is as lost as the model on shuffled labels
    assert tracking.champion_version().version == champion_before


def test_full_rescore_schedule_requests_every_batch_in_one_run(pipeline):
    from aep_assets.metadata import RANGE_END, RANGE_START

    instance = pipeline["instance"]
    schedule = pipeline["defs"].resolve_schedule_def("full_rescore_schedule")
    request = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests[0]
    keys = instance.get_dynamic_partitions("profile_batches")
    assert request.tags[RANGE_START] == keys[0] and request.tags[RANGE_END] == keys[-1]
    retrain = pipeline["defs"].resolve_schedule_def("retrain_propensity_model_schedule")
    assert retrain.cron_schedule == "0 3 * * 1" and retrain.job_name == "train_propensity_model_job"


def test_an_audience_removed_from_the_config_is_deleted_with_its_exports(pipeline):
    """Last in this module: it changes the shared run's audiences."""
    from aep_assets.defs.activation import audience_activations, propensity_audiences

    storage, platform = pipeline["resources"]["storage"], pipeline["resources"]["platform"]
    kept = {"name": "Propensity - high", "lower": 0.12, "upper": 1.0}
    result = dg.materialize([propensity_audiences, audience_activations], instance=pipeline["instance"],
                            resources=pipeline["resources"],
                            run_config={"ops": {"propensity_audiences": {"config": {"intervals": [kept]}}}})
    assert result.success
    assert [a.name for a in platform.audiences()] == ["Propensity - high"]
    folders = {p.name for p in storage.root_path.glob("cmle/activation/*")}
    assert folders == {"propensity-high"}
    assert len(list(storage.root_path.glob("cmle/activation/propensity-high/exportTime=*/_manifest.json"))) == 1
