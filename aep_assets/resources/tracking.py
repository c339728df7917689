"""MLflow tracking and model registry, local by default.

A ConfigurableResource of our own rather than dagster-mlflow's `mlflow_tracking`: that one is a
legacy function resource (`required_resource_keys`, `config_schema`) that opens one MLflow run
per Dagster run and has no registry helpers, while the model asset needs one run per
materialization, registry aliases and a typed, testable config.

The assets never touch the `mlflow` module: they load the champion, log a training run, register a
model once per training fingerprint and promote it, each through one method here. With the local
sqlite store the champion loads from its copy (`champion_copy`) without importing MLflow at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field, PrivateAttr

from aep_assets.lib import modeling
from aep_assets.lib.features import feature_columns
from aep_assets.resources import champion_copy
from aep_assets.resources.mlflow_store import ensure_sqlite_store
from aep_assets.settings import assets_home

CHAMPION = "champion"


@dataclass(frozen=True)
class Champion:
    """The registered version that carries the champion alias, loaded by version (the alias may move
    while a run uses it)."""

    name: str
    version: str
    features: list[str] | None
    estimator: object

    def scores_on(self, x: np.ndarray, features: list[str]) -> np.ndarray | None:
        """Its scores on rows of `features`, or None when it reads other features."""
        if (self.features or features) != features:
            return None
        return self.estimator.predict_proba(x)[:, 1]

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """Propensity of every row of a feature table."""
        return modeling.predict(self.estimator, frame, self.features or feature_columns(frame.columns))


@dataclass
class TrainingRun:
    """What one training leaves in the tracking store; `artifacts` are files under `evaluation/`."""

    name: str
    tags: dict[str, str]
    params: dict[str, object]
    metrics: dict[str, float]
    artifacts: dict[str, bytes] = field(default_factory=dict)


class MlflowTracking(dg.ConfigurableResource):
    """Where runs, artifacts and registered models live."""

    tracking_uri: str = Field(default="", description="Empty: sqlite store under $AEP_ASSETS_HOME/mlflow.")
    artifact_location: str = Field(default="", description="Empty: $AEP_ASSETS_HOME/mlflow/artifacts.")
    experiment_name: str = Field(default="cmle_propensity")
    registered_model_name: str = Field(default="cmle_propensity_model")
    _experiment_id: str | None = PrivateAttr(default=None)

    def store_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{assets_home() / 'mlflow' / 'mlflow.db'}"

    def activate(self):
        """Point the mlflow module at this store; the experiment id, created on first use."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow  # a slow import: only where a model is trained or loaded

        uri = self.store_uri()
        store = champion_copy.sqlite_file(uri)
        if store is not None:
            ensure_sqlite_store(store)
        mlflow.set_tracking_uri(uri)  # every call: another resource in this process may have pointed it elsewhere
        mlflow.set_registry_uri(uri)
        if self._experiment_id is None:  # one lookup per resource instance, not one per registry call
            experiment = mlflow.get_experiment_by_name(self.experiment_name)
            artifacts = self.artifact_location or (assets_home() / "mlflow" / "artifacts").as_uri()
            self._experiment_id = (experiment.experiment_id if experiment else
                                   mlflow.create_experiment(self.experiment_name, artifact_location=artifacts))
        return self._experiment_id

    def client(self):
        self.activate()
        import mlflow

        return mlflow.MlflowClient()

    def champion_uri(self) -> str:
        return f"models:/{self.registered_model_name}@{CHAMPION}"

    def champion_version(self):
        """The registered version that carries the champion alias, or None."""
        client = self.client()
        try:
            return client.get_model_version_by_alias(self.registered_model_name, CHAMPION)
        except Exception as error:  # MlflowException: no such model or alias
            if "not found" in str(error).lower() or "does not exist" in str(error).lower():
                return None
            raise

    def load_champion(self) -> Champion | None:
        """The version that carries the champion alias now, loaded by version: from its copy beside a
        local store, else through MLflow (a version registered before copies existed gets one then)."""
        store = champion_copy.sqlite_file(self.store_uri())
        if store is not None:
            aliased = champion_copy.aliased_version(store, self.registered_model_name, CHAMPION)
            digest = aliased.tags.get(champion_copy.DIGEST_TAG) if aliased else None
            estimator = champion_copy.load(store, digest) if digest else None
            if estimator is not None:
                return self._champion(aliased.version, aliased.tags, estimator)
        version = self.champion_version()
        if version is None:
            return None
        import mlflow

        estimator = mlflow.sklearn.load_model(f"models:/{version.name}/{version.version}")
        if store is not None and champion_copy.DIGEST_TAG not in version.tags:
            self.client().set_model_version_tag(version.name, version.version, champion_copy.DIGEST_TAG,
                                                champion_copy.write(store, estimator))
        return self._champion(str(version.version), version.tags, estimator)

    def _champion(self, version: str, tags: dict[str, str], estimator: object) -> Champion:
        features = json.loads(tags["features"]) if "features" in tags else None
        return Champion(self.registered_model_name, version, features, estimator)

    def log_training(self, run: TrainingRun) -> str:
        """One MLflow run with the training's tags, parameters, metrics and evaluation files; its id."""
        experiment_id = self.activate()
        import mlflow

        with mlflow.start_run(experiment_id=experiment_id, run_name=run.name) as active:
            mlflow.set_tags(run.tags)
            mlflow.log_params(run.params)
            mlflow.log_metrics(run.metrics)
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in run.artifacts.items():
                    (Path(tmp) / name).write_bytes(content)
                mlflow.log_artifacts(tmp, artifact_path="evaluation")
        return active.info.run_id

    def register_once(self, run_id: str, model: modeling.TrainedModel, algorithm: str, fingerprint: str,
                      tags: dict[str, str]) -> tuple[str, bool]:
        """The registered version of this training fingerprint, registering the model only the first
        time (the same data and config train the same model); and whether it was new."""
        client = self.client()
        same = client.search_model_versions(f"name='{self.registered_model_name}' and "
                                            f"tags.training_fingerprint='{fingerprint}'")
        if same:
            return str(same[0].version), False
        import mlflow
        import sklearn

        store = champion_copy.sqlite_file(self.store_uri())
        copy = {champion_copy.DIGEST_TAG: champion_copy.write(store, model.estimator)} if store else {}
        example = model.x_test[:100]
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.sklearn.log_model(
                model.estimator, name="model",
                signature=mlflow.models.infer_signature(example, model.estimator.predict_proba(example)[:, 1]),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],  # inference costs seconds
                skops_trusted_types=modeling.SKOPS_TRUSTED_TYPES[algorithm])
            # The tags come with the version, in one registry call: a run killed here leaves either no
            # version or one the fingerprint finds, never an untagged one that a re-run would duplicate.
            version = mlflow.register_model(logged.model_uri, self.registered_model_name, tags={
                **tags, "features": json.dumps(model.features), "training_fingerprint": fingerprint,
                "mlflow_run_id": run_id, **copy}).version
        return str(version), True

    def promote(self, version: str) -> None:
        """Give `version` the champion alias: scoring uses it from now on."""
        self.client().set_registered_model_alias(self.registered_model_name, CHAMPION, version)

    def run_link(self, run_id: str) -> dg.MetadataValue:
        """Where a person finds the run: a link on a tracking server, the command for the local store."""
        uri, experiment_id = self.store_uri(), self.activate()
        if uri.startswith("http"):
            return dg.MetadataValue.url(f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")
        return dg.MetadataValue.text(f"mlflow ui --backend-store-uri {uri}  →  experiment {experiment_id}, "
                                     f"run {run_id}")
