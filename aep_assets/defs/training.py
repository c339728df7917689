"""The propensity model: trained from the exported files only, tracked in MLflow, promoted through a gate."""

import json
import time

import dagster as dg
import numpy as np
from pydantic import Field

from aep_assets.lib import modeling
from aep_assets.lib.datasets import TRAINING_DATASET
from aep_assets.lib.gate import GateResult, GateSettings, evaluate_gate
from aep_assets.lib.source_files import source_folder
from aep_assets.metadata import OWNERS, image, row_count, table
from aep_assets.resources.platform import Platform, export_parent
from aep_assets.resources.storage import Storage
from aep_assets.resources.tracking import MlflowTracking, TrainingRun

CHECKS = ("propensity_model_auc_floor", "propensity_model_oracle_gap", "propensity_model_vs_champion")


class ModelConfig(dg.Config):
    """Algorithm, search budget and the quality gate."""

    algorithm: str = Field(default="hist_gradient_boosting",
                           description="hist_gradient_boosting | random_forest | logistic_regression")
    seed: int = 42
    max_trials: int = Field(default=modeling.TrainingSettings.max_trials,
                            description="Candidate settings of the successive-halving search: the champion's, "
                                        "the library defaults, then seeded random draws.")
    time_budget_seconds: float = Field(default=120.0, description="Search stops after this, whatever the trials.")
    auc_floor: float = Field(default=0.70, description="Gate: minimum test ROC AUC.")
    max_oracle_gap: float = Field(default=0.02, description="Gate: oracle AUC minus model AUC at most this.")
    champion_tolerance: float = Field(default=0.002, description="Gate: may trail the champion by this much.")

    def training(self) -> modeling.TrainingSettings:
        return modeling.TrainingSettings(algorithm=self.algorithm, seed=self.seed, max_trials=self.max_trials,
                                         time_budget_s=self.time_budget_seconds)

    def gate(self) -> GateSettings:
        return GateSettings(self.auc_floor, self.max_oracle_gap, self.champion_tolerance)


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
    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    frame = modeling.in_profile_order(storage.read_frame(manifest))
    rows, fingerprint = frame.height, modeling.training_fingerprint(frame, config.model_dump())
    context.log.info(f"training from {storage.uri(manifest.prefix)}: {rows} rows")
    settings = config.training()
    data = modeling.split(frame, settings.test_fraction)
    del frame  # the matrices are all the rest needs: the export's memory is back before the fit
    champion = mlflow_tracking.load_champion()
    started = time.monotonic()
    model = modeling.train(data, settings,
                           start=champion and modeling.starting_params(champion.estimator, config.algorithm))
    train_seconds = time.monotonic() - started
    scores = model.estimator.predict_proba(model.x_test)[:, 1]
    oracle = modeling.oracle_on(source_folder().truth(), model.test_ids, model.y_test)
    known = None if oracle is None else ~np.isnan(oracle)
    evaluation = modeling.evaluate(model.y_test, scores,
                                   oracle=None if oracle is None else (model.y_test[known], oracle[known]))
    importance, importance_png = modeling.importance(model)
    champion_scores = champion.scores_on(model.x_test, model.features) if champion else None
    gate = evaluate_gate(model.y_test, scores, config.gate(), oracle=oracle, champion=champion_scores)

    tags = {"dagster_run_id": context.run.run_id, "gate": "passed" if gate.passed else "failed"}
    run_id = mlflow_tracking.log_training(TrainingRun(
        name=f"dagster-{context.run.run_id[:8]}", tags={**tags, "training_export": storage.uri(manifest.prefix)},
        params={"algorithm": config.algorithm, "seed": config.seed, "train_rows": model.train_rows,
                "test_rows": len(model.y_test), "trials": len(model.trials),
                **{f"best_{k}": v for k, v in model.params.items()}},
        metrics={**evaluation.metrics(), "train_seconds": train_seconds,
                 **({"oracle_auc": evaluation.oracle_auc} if evaluation.oracle_auc is not None else {})},
        artifacts={**{f"{name}.png": png for name, png in evaluation.plots.items()},
                   "feature_importance.png": importance_png, "deciles.csv": evaluation.deciles.write_csv().encode(),
                   "trials.json": json.dumps(model.trials, indent=2).encode()}))
    version, new = mlflow_tracking.register_once(run_id, model, config.algorithm, fingerprint, tags)
    if not new:
        context.log.info(f"same export and config as registered version {version}: not registering again")
    promoted = gate.passed and (champion is None or champion.version != version)
    if gate.passed:
        mlflow_tracking.promote(version)
        context.log.info(f"version {version} is the champion" + ("" if promoted else " (unchanged)"))
    else:
        context.log.warning(f"version {version} failed the gate; champion unchanged: {gate.summary()}")

    yield dg.MaterializeResult(metadata={
        **_evaluation_metadata(evaluation, importance_png), "registered_version": version, "promoted": promoted,
        "gate_passed": gate.passed, "champion_auc_before": _auc_or(champion_scores, model.y_test, "none"),
        "mlflow_run": mlflow_tracking.run_link(run_id), "mlflow_run_id": run_id,
        "training_export": dg.MetadataValue.path(storage.uri(manifest.prefix)),
        "train_seconds": round(train_seconds, 1), "trials": dg.MetadataValue.json(model.trials),
        "params": dg.MetadataValue.json(model.params),
        "feature_importance": table(importance), **row_count(rows)})
    yield from _check_results(gate)


def _evaluation_metadata(evaluation: modeling.Evaluation, importance_png: bytes) -> dict:
    return {
        "model_auc": round(evaluation.roc_auc, 4),
        "oracle_auc": round(evaluation.oracle_auc, 4) if evaluation.oracle_auc is not None else "no ground truth",
        "pr_auc": round(evaluation.pr_auc, 4), "log_loss": round(evaluation.log_loss, 5),
        "brier": round(evaluation.brier, 5), "base_rate": round(evaluation.base_rate, 5),
        "roc_plot": image(evaluation.plots["roc"], "ROC"),
        "precision_recall_plot": image(evaluation.plots["precision_recall"], "precision-recall"),
        "calibration_plot": image(evaluation.plots["calibration"], "calibration"),
        "feature_importance_plot": image(importance_png, "feature importance"),
        "deciles": table(evaluation.deciles),
    }


def _auc_or(scores: np.ndarray | None, labels: np.ndarray, missing: str) -> float | str:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(labels, scores)), 4) if scores is not None else missing


def _check_results(gate: GateResult):
    for check_name, result in zip(CHECKS, gate.results, strict=True):
        yield dg.AssetCheckResult(check_name=check_name, passed=result.passed, description=result.reason,
                                  metadata={"value": result.value, "threshold": result.threshold,
                                            "standard_error": result.standard_error})
