"""The propensity model: trained from the exported files only, tracked in MLflow, promoted through a gate."""

import hashlib
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import sklearn
from pydantic import Field
from sklearn.metrics import roc_auc_score

from aep_assets.defs.features import TRAINING_DATASET
from aep_assets.defs.metadata import OWNERS, image, table
from aep_assets.defs.synthetic import source_folder
from aep_assets.lib import modeling
from aep_assets.lib.features import ID_COLUMN
from aep_assets.lib.gate import GateSettings, evaluate_gate
from aep_assets.resources.platform import Platform, export_parent
from aep_assets.resources.storage import Storage
from aep_assets.resources.tracking import CHAMPION, MlflowTracking

CHECKS = ("propensity_model_auc_floor", "propensity_model_oracle_gap", "propensity_model_vs_champion")


class ModelConfig(dg.Config):
    """Algorithm, search budget and the quality gate."""

    algorithm: str = Field(default="hist_gradient_boosting",
                           description="hist_gradient_boosting | random_forest | logistic_regression")
    seed: int = 42
    max_trials: int = Field(default=modeling.TrainingSettings.max_trials,
                            description="Random-search trials (trial 0: library defaults).")
    time_budget_seconds: float = Field(default=120.0, description="Search stops after this, whatever the trials.")
    auc_floor: float = Field(default=0.70, description="Gate: minimum test ROC AUC.")
    max_oracle_gap: float = Field(default=0.02, description="Gate: oracle AUC minus model AUC at most this.")
    champion_tolerance: float = Field(default=0.002, description="Gate: may trail the champion by this much.")


@dg.asset(
    deps=["training_export"], group_name="training", owners=OWNERS, kinds={"sklearn", "mlflow"},
    check_specs=[
        dg.AssetCheckSpec(CHECKS[0], asset="propensity_model", blocking=True,
                          description="Test ROC AUC at or above the configured floor."),
        dg.AssetCheckSpec(CHECKS[1], asset="propensity_model", blocking=True,
                          description="Within the configured distance of the oracle AUC (the generator's "
                                      "ground truth on the same held-out profiles)."),
        dg.AssetCheckSpec(CHECKS[2], asset="propensity_model", blocking=True,
                          description="Not worse than the current champion on the same held-out profiles."),
    ],
    description="Conversion propensity model (MLflow registered model cmle_propensity_model). Trained from "
                "the latest complete training export in cloud storage, evaluated on held-out profiles beside "
                "the oracle AUC, and given the 'champion' alias only when every gate check passes.",
)
def propensity_model(context: dg.AssetExecutionContext, config: ModelConfig, platform: Platform,
                     storage: Storage, mlflow_tracking: MlflowTracking):
    dataset = platform.find_dataset_or_fail(TRAINING_DATASET)
    manifest = storage.latest_complete(export_parent(dataset))
    frame = modeling.in_profile_order(storage.read_frame(manifest))
    context.log.info(f"training from {storage.uri(manifest.prefix)}: {frame.height} rows")
    settings = modeling.TrainingSettings(algorithm=config.algorithm, seed=config.seed, max_trials=config.max_trials,
                                         time_budget_s=config.time_budget_seconds)
    started = time.monotonic()
    model = modeling.train(frame, settings)
    train_seconds = time.monotonic() - started
    scores = model.estimator.predict_proba(model.x_test)[:, 1]
    oracle = oracle_on(model.test_ids, model.y_test)
    known = None if oracle is None else ~np.isnan(oracle)
    evaluation = modeling.evaluate(model.y_test, scores,
                                   oracle=None if oracle is None else (model.y_test[known], oracle[known]))
    importance, importance_png = modeling.importance(model)

    mlflow, experiment_id = mlflow_tracking.activate()
    champion = mlflow_tracking.champion_version()
    champion_scores = champion_scores_on(mlflow, champion, model)
    champion_auc = float(roc_auc_score(model.y_test, champion_scores)) if champion_scores is not None else None
    gate = evaluate_gate(model.y_test, scores, GateSettings(config.auc_floor, config.max_oracle_gap,
                                                            config.champion_tolerance),
                         oracle=oracle, champion=champion_scores)

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"dagster-{context.run_id[:8]}") as run:
        mlflow.set_tags({"dagster_run_id": context.run_id, "training_export": storage.uri(manifest.prefix),
                         "gate": "passed" if gate.passed else "failed"})
        mlflow.log_params({"algorithm": config.algorithm, "seed": config.seed, "train_rows": model.train_rows,
                           "test_rows": len(model.y_test), "trials": len(model.trials),
                           **{f"best_{k}": v for k, v in model.params.items()}})
        mlflow.log_metrics({**evaluation.metrics(), "train_seconds": train_seconds,
                            **({"oracle_auc": evaluation.oracle_auc} if evaluation.oracle_auc is not None else {})})
        with tempfile.TemporaryDirectory() as tmp:
            for name, png in {**evaluation.plots, "feature_importance": importance_png}.items():
                (Path(tmp) / f"{name}.png").write_bytes(png)
            evaluation.deciles.write_csv(Path(tmp) / "deciles.csv")
            (Path(tmp) / "trials.json").write_text(json.dumps(model.trials, indent=2))
            mlflow.log_artifacts(tmp, artifact_path="evaluation")
        client = mlflow.MlflowClient()
        fingerprint = training_fingerprint(frame, config)
        same = client.search_model_versions(f"name='{mlflow_tracking.registered_model_name}' and "
                                            f"tags.training_fingerprint='{fingerprint}'")
        if same:  # the same data and config train the same model: no second version for it
            version = same[0].version
            context.log.info(f"same export and config as registered version {version}: not registering again")
        else:
            signature = mlflow.models.infer_signature(model.x_test[:100], scores[:100])
            logged = mlflow.sklearn.log_model(
                model.estimator, name="model", signature=signature,
                pip_requirements=[f"scikit-learn=={sklearn.__version__}"],  # inference costs seconds
                skops_trusted_types=modeling.SKOPS_TRUSTED_TYPES[config.algorithm])
            # The tags come with the version, in one registry call: a run killed here leaves either no
            # version or one the fingerprint finds, never an untagged one that a re-run would duplicate.
            version = mlflow.register_model(logged.model_uri, mlflow_tracking.registered_model_name, tags={
                "features": json.dumps(model.features), "training_fingerprint": fingerprint,
                "gate": "passed" if gate.passed else "failed", "dagster_run_id": context.run_id,
                "mlflow_run_id": run.info.run_id}).version
    promoted = gate.passed and (champion is None or str(champion.version) != str(version))
    if gate.passed:
        client.set_registered_model_alias(mlflow_tracking.registered_model_name, CHAMPION, version)
        context.log.info(f"version {version} is the champion" + ("" if promoted else " (unchanged)"))
    else:
        context.log.warning(f"version {version} failed the gate; champion unchanged: {gate.summary()}")

    yield dg.MaterializeResult(metadata={
        "model_auc": round(evaluation.roc_auc, 4),
        "oracle_auc": round(evaluation.oracle_auc, 4) if evaluation.oracle_auc is not None else "no ground truth",
        "pr_auc": round(evaluation.pr_auc, 4), "log_loss": round(evaluation.log_loss, 5),
        "brier": round(evaluation.brier, 5), "base_rate": round(evaluation.base_rate, 5),
        "registered_version": str(version), "promoted": promoted, "gate_passed": gate.passed,
        "champion_auc_before": round(champion_auc, 4) if champion_auc is not None else "none",
        "mlflow_run": mlflow_tracking.run_link(run.info.run_id, experiment_id),
        "mlflow_run_id": run.info.run_id, "training_export": dg.MetadataValue.path(storage.uri(manifest.prefix)),
        "roc_plot": image(evaluation.plots["roc"], "ROC"),
        "precision_recall_plot": image(evaluation.plots["precision_recall"], "precision-recall"),
        "calibration_plot": image(evaluation.plots["calibration"], "calibration"),
        "feature_importance_plot": image(importance_png, "feature importance"),
        "deciles": table(evaluation.deciles),
        "train_seconds": round(train_seconds, 1), "trials": dg.MetadataValue.json(model.trials),
        "dagster/row_count": frame.height,
    })
    for check_name, result in zip(CHECKS, gate.results, strict=True):
        yield dg.AssetCheckResult(check_name=check_name, passed=result.passed, description=result.reason,
                                  metadata={"value": result.value, "threshold": result.threshold,
                                            "standard_error": result.standard_error})


def training_fingerprint(frame: pl.DataFrame, config: ModelConfig) -> str:
    """Content of the training rows (sorted by profile id, so the export's row order does not matter)
    and the training config."""
    digest = hashlib.sha256(modeling.in_profile_order(frame).hash_rows(seed=0).to_numpy().tobytes())
    digest.update(json.dumps(config.model_dump(), sort_keys=True).encode())
    return digest.hexdigest()[:32]


def champion_scores_on(mlflow, champion, model: modeling.TrainedModel) -> np.ndarray | None:
    """The current champion's scores on the new model's held-out rows, if it reads the same features."""
    if champion is None:
        return None
    champion_model = mlflow.sklearn.load_model(f"models:/{champion.name}/{champion.version}")
    if (json.loads(champion.tags.get("features", "[]")) or model.features) != model.features:
        return None
    return champion_model.predict_proba(model.x_test)[:, 1]


def oracle_on(test_ids: np.ndarray, y_test: np.ndarray) -> np.ndarray | None:
    """The generator's ground-truth probability of each held-out profile (NaN where it has none), or None
    when it knows too few of them (another generation or window, or real data)."""
    truth = source_folder().truth()
    if truth.is_empty():
        return None
    known = truth.filter(pl.col("oracle_probability").is_not_null()).select(ID_COLUMN, "oracle_probability")
    aligned = (pl.DataFrame({ID_COLUMN: test_ids}).join(known, on=ID_COLUMN, how="left", maintain_order="left")
               ["oracle_probability"].to_numpy().astype(np.float64))
    found = ~np.isnan(aligned)
    if found.sum() < 0.9 * len(test_ids) or len(np.unique(y_test[found])) < 2:
        return None
    return aligned
