"""MLflow tracking and model registry, local by default.

A ConfigurableResource of our own rather than dagster-mlflow's `mlflow_tracking`: that one is a
legacy function resource (`required_resource_keys`, `config_schema`) that opens one MLflow run
per Dagster run and has no registry helpers, while the model asset needs one run per
materialization, registry aliases and a typed, testable config.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from aep_assets.settings import assets_home

CHAMPION = "champion"


class MlflowTracking(dg.ConfigurableResource):
    """Where runs, artifacts and registered models live."""

    tracking_uri: str = Field(default="", description="Empty: sqlite store under $AEP_ASSETS_HOME/mlflow.")
    artifact_location: str = Field(default="", description="Empty: $AEP_ASSETS_HOME/mlflow/artifacts.")
    experiment_name: str = Field(default="cmle_propensity")
    registered_model_name: str = Field(default="cmle_propensity_model")

    def _paths(self) -> tuple[str, str]:
        root = assets_home() / "mlflow"
        uri = self.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
        artifacts = self.artifact_location or (root / "artifacts").as_uri()
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return uri, artifacts

    def activate(self):
        """Point the mlflow module at this store and return it with the experiment id."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow  # 1.3 s import: only where a model is trained or loaded

        uri, artifacts = self._paths()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.get_experiment_by_name(self.experiment_name)
        experiment_id = (experiment.experiment_id if experiment else
                         mlflow.create_experiment(self.experiment_name, artifact_location=artifacts))
        return mlflow, experiment_id

    def client(self):
        mlflow, _ = self.activate()
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

    def run_link(self, run_id: str, experiment_id: str) -> dg.MetadataValue:
        """Where a person finds the run: a link on a tracking server, the command for the local store."""
        uri, _ = self._paths()
        if uri.startswith("http"):
            return dg.MetadataValue.url(f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}")
        return dg.MetadataValue.text(f"mlflow ui --backend-store-uri {uri}  →  experiment {experiment_id}, "
                                     f"run {run_id}")
