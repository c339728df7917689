"""The champion as the scoring step loads it: from its copy beside the local MLflow store, always the version
the registry's alias names now, and through MLflow whenever the copy cannot be trusted or is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aep_assets.lib import modeling
from aep_assets.resources import champion_copy
from aep_assets.resources.tracking import CHAMPION, MlflowTracking, TrainingRun


def registered(tracking: MlflowTracking, seed: int) -> tuple[str, np.ndarray]:
    """A small model trained and registered as the training asset does; its version and test rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(np.int8)
    estimator = HistGradientBoostingClassifier(max_iter=5, random_state=seed).fit(x, y)
    model = modeling.TrainedModel(estimator, ["a", "b", "c"], {}, [], 0.0, 400, np.arange(400), x, y)
    run_id = tracking.log_training(TrainingRun(name=f"seed {seed}", tags={}, params={}, metrics={}))
    version, _ = tracking.register_once(run_id, model, "hist_gradient_boosting", f"fingerprint-{seed}", {})
    return version, x


def test_the_champion_loads_from_its_copy_and_follows_the_alias(tracking, monkeypatch):
    first, x = registered(tracking, 1)
    second, _ = registered(tracking, 2)
    tracking.promote(first)
    with monkeypatch.context() as patched:
        patched.setattr(MlflowTracking, "champion_version", lambda self: pytest.fail("looked up through MLflow"))
        champion = tracking.load_champion()
        assert (champion.name, champion.version, champion.features) == (tracking.registered_model_name, first,
                                                                          ["a", "b", "c"])
        tracking.promote(second)  # the alias moves: the next load is the new version
        moved = tracking.load_champion()
    assert moved.version == second
    import mlflow

    through_mlflow = mlflow.sklearn.load_model(f"models:/{tracking.registered_model_name}/{second}")
    np.testing.assert_array_equal(moved.estimator.predict_proba(x), through_mlflow.predict_proba(x))


def test_a_copy_that_does_not_match_the_registry_is_not_loaded(tracking):
    version, _ = registered(tracking, 3)
    tracking.promote(version)
    store = champion_copy.sqlite_file(tracking.store_uri())
    digest = champion_copy.aliased_version(store, tracking.registered_model_name, CHAMPION).tags[
        champion_copy.DIGEST_TAG]
    (champion_copy.copies_folder(store) / f"{digest}.pkl").write_bytes(b"not the registered model")
    assert champion_copy.load(store, digest) is None
    assert tracking.load_champion().version == version  # through MLflow


def test_a_version_registered_without_a_copy_gets_one_at_its_first_load(tracking):
    version, _ = registered(tracking, 4)
    tracking.promote(version)
    client = tracking.client()
    client.delete_model_version_tag(tracking.registered_model_name, version, champion_copy.DIGEST_TAG)
    assert tracking.load_champion().version == version  # through MLflow, which leaves the copy behind
    tags = client.get_model_version(tracking.registered_model_name, version).tags
    store = champion_copy.sqlite_file(tracking.store_uri())
    assert champion_copy.load(store, tags[champion_copy.DIGEST_TAG]) is not None


def test_a_fresh_process_scores_without_importing_mlflow(tracking, home):
    version, _ = registered(tracking, 5)
    tracking.promote(version)
    probe = ("import json, sys; from aep_assets.resources.tracking import MlflowTracking; "
             "c = MlflowTracking().load_champion(); "
             "print(json.dumps([c.version, [m for m in ('mlflow', 'skops') if m in sys.modules]]))")
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_TRACKING")}
    done = subprocess.run([sys.executable, "-c", probe], env={**env, "AEP_ASSETS_HOME": str(home)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [version, []]


def test_only_a_local_sqlite_store_has_copies(tmp_path, monkeypatch):
    assert champion_copy.sqlite_file("sqlite:////srv/mlflow/mlflow.db").name == "mlflow.db"
    monkeypatch.chdir(tmp_path)  # a relative sqlite path, as MLflow allows, to a store without MLflow's tables
    (tmp_path / "mlflow.db").touch()
    assert champion_copy.aliased_version(champion_copy.sqlite_file("sqlite:///mlflow.db"), "m", CHAMPION) is None
    for remote in ("http://mlflow:5000", "databricks", "postgresql://mlflow@db/mlflow"):
        assert champion_copy.sqlite_file(remote) is None
