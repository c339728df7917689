"""The whole asset graph in AEP mode: every asset and job materialized against the fake platform
(conftest's `fake`, `make_aep`), Query Service played by the embedded PostgreSQL, storage on moto's S3."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import dagster as dg
import pyarrow as pa
import yaml

from aep_assets.lib import audiences, guardrails
from aep_assets.lib.datasets import PROFILES, PROPENSITY_SCORES
from aep_assets.lib.merge import current_records_sql
from aep_assets.resources.aep.platform import AEPPlatform
from aep_assets.resources.aep.segmentation import audience_of
from aep_assets.testing.fake_aep import S3_ACCESS_KEY, S3_SECRET_KEY
from aep_assets_tests.factories import dataset_export_writer


def test_whole_graph_materializes_in_aep_mode(fake, sleeps, moto_endpoint, s3_bucket, tracking, monkeypatch,
                                              make_aep):
    """Every asset and job against the fake platform, Query Service = the embedded PostgreSQL, storage = S3.
    With the read limit at 500 rows and 400 scores per file, the 1,000-profile batches are scored the way
    a 20M-profile batch is: features read back through a dataset export, scores in several files."""
    from aep_assets.definitions import build_definitions
    from aep_assets.main import run_all

    storage = s3_bucket("cmle-graph", prefix="aep")
    aep = make_aep(export_s3_access_key_id=S3_ACCESS_KEY, export_s3_secret_access_key=S3_SECRET_KEY,
                   interactive_rows=500)
    monkeypatch.setattr(guardrails, "SCORES_ROWS_PER_FILE", 400)
    fake.on_export = dataset_export_writer(fake, moto_endpoint, partial(exported_rows, fake, aep))
    fake.segment_count = partial(segment_count, aep)
    defs = build_definitions({"platform": aep, "storage": storage, "mlflow_tracking": tracking})
    instance_config = yaml.safe_load((Path(__file__).parents[1] / "dagster.yaml").read_text())  # as make run
    with dg.instance_for_test(overrides=instance_config) as instance:
        timings = run_all(defs, instance, {
            "load_synthetic_data_job": {"ops": {"synthetic_data": {"config": {"profiles": 2000, "batches": 2}}}},
            # the model's quality is tested elsewhere; here the gate only needs to let a champion through
            "train_propensity_model_job": {"ops": {"propensity_model": {"config": {
                "max_trials": 1, "auc_floor": 0.5, "max_oracle_gap": 0.5}}}}})
        print("AEP-mode graph timings:", timings)
        for key in ("aep_profiles", "aep_experience_events", "training_features", "training_export",
                    "propensity_model", "propensity_audiences", "audience_activations"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        sizes = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("propensity_audiences"), "propensity_audiences_sizes"))
        assert sizes.event.dagster_event.event_specific_data.passed
        # AEP mode's own log is in the runs' event logs (dagster.yaml's managed_python_loggers)
        messages = [e.user_message for run in instance.get_runs() for e in instance.all_logs(run.run_id)]
        assert any(m.startswith("created dataset cmle_profiles") for m in messages)
        assert any(re.match(r"waiting for batch \w+: \d+ s so far, next look in \d+ s", m) for m in messages)
    profiles = aep.query("SELECT COUNT(*) AS n FROM cmle_profiles_flat")["n"][0].as_py()
    scores = aep.query("SELECT COUNT(DISTINCT userid) AS n FROM cmle_propensity_scores_flat")["n"][0].as_py()
    assert profiles == scores == 2000
    assert fake.flows and fake.jobs and storage.list_keys("cmle/activation")
    plan = guardrails.plan_scoring(1000, interactive_rows=500, rows_per_file=400)
    assert (plan.feature_exports, plan.score_files, plan.score_batches) == (1, 3, 1)
    batches = platform_batches(aep, "cmle_profiles")
    exports = [f["name"] for f in fake.flows.values() if "cmle_bulk_scoring_features_" in f["name"]]
    assert len(exports) == len(batches) * plan.feature_exports
    scores_id = aep.find_dataset("cmle_propensity_scores").id
    score_batches = [b for b in fake.batches.values() if b["relatedObjects"][0]["id"] == scores_id]
    assert len(score_batches) == len(batches) * plan.score_batches
    uploads = [c for c in fake.calls("PUT", "/files/") if f"/datasets/{scores_id}/" in c["path"]]
    assert len(uploads) == len(batches) * plan.score_files
    scratch = aep.find_dataset(exports[0].split()[2])
    assert not storage.list_keys(f"cmle/egress/{scratch.id}")  # read back, then removed


def exported_rows(fake, aep: AEPPlatform, dataset_id: str) -> pa.Table:
    """What a dataset export holds: the rows of the dataset's Query Service table."""
    table = next(d for i, d in fake.datasets.items() if i == dataset_id)["tags"]["adobe/pqs/table"][0]
    return aep.query(f"SELECT * FROM {table}").drop_columns(["_acp_batchid"])


def segment_count(aep: AEPPlatform, segment: dict) -> int:
    """What the evaluation job counts: the latest scores inside the segment's PQL interval."""
    audience = audience_of(segment)
    latest = current_records_sql(PROPENSITY_SCORES, "cmle_propensity_scores_flat")
    profiles = current_records_sql(PROFILES, "cmle_profiles_flat")
    return aep.query(audiences.members_sql("postgres", latest, profiles, audience.lower, audience.upper)).num_rows


def platform_batches(aep: AEPPlatform, dataset: str) -> list[str]:
    return [b.id for b in aep.completed_batches(aep.find_dataset(dataset)) if b.status == "success"]
