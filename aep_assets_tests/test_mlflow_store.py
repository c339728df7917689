"""A new home's MLflow store starts as a copy of a migrated empty one: working, and never replacing a store."""

from __future__ import annotations

import sqlite3

from aep_assets.resources import mlflow_store
from aep_assets.resources.tracking import MlflowTracking


def test_a_copied_store_is_a_working_mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
                              artifact_location=(tmp_path / "artifacts").as_uri())
    experiment = tracking.activate()
    templates = list((tmp_path / "cache" / "aep_assets").glob("mlflow-*-empty.db"))
    assert len(templates) == 1
    client = tracking.client()
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "roc_auc", 0.8)
    client.create_registered_model("m")
    assert client.get_run(run.info.run_id).data.metrics == {"roc_auc": 0.8}
    with sqlite3.connect(templates[0]) as template:  # the template stays empty
        assert template.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_an_existing_store_is_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"someone's store")
    mlflow_store.ensure_sqlite_store(database)
    assert database.read_bytes() == b"someone's store"
    other = tmp_path / "other.db"
    other.write_bytes(b"another")
    mlflow_store.place(other, database)  # a concurrent creator that lost the race
    assert database.read_bytes() == b"someone's store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "other.db"]  # no partial copy left
