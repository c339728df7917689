"""Propensity model training and evaluation: pure scikit-learn on Arrow/polars, no Dagster.

scikit-learn is imported where a model is built or evaluated, not with this module: scoring needs only
`predict` and `deciles_of`, and a fresh process that rescores a batch should not pay for the training
side of the library (docs/performance.md).

The default is HistGradientBoostingClassifier: it takes missing recencies (never happened) as
they are, and trains in seconds. The reference's RandomForest and a logistic
regression baseline are selectable. Hyperparameters come from a seeded random search that stops
at a trial count or a time budget, scored on a validation split carved out of the training rows;
the test rows are touched only for the final evaluation.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from aep_assets.lib import plots
from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN, feature_columns
from aep_assets.lib.holdout import HOLDOUT_FRACTION, is_held_out

Algorithm = Literal["hist_gradient_boosting", "random_forest", "logistic_regression"]


# MLflow stores sklearn models with skops, which refuses types it cannot verify; these are the
# ones our own estimators need (we train and load them ourselves, from our own registry).
SKOPS_TRUSTED_TYPES: dict[str, list[str]] = {
    "hist_gradient_boosting": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    "random_forest": [],
    "logistic_regression": [],
}


SEARCH_ROWS = 100_000
MIN_RUNG_ROWS = 2_000


@dataclass(frozen=True)
class TrainingSettings:
    algorithm: Algorithm = "hist_gradient_boosting"
    seed: int = 42
    test_fraction: float = HOLDOUT_FRACTION
    max_trials: int = 4
    time_budget_s: float = 120.0


@dataclass
class TrainedModel:
    estimator: object
    features: list[str]
    params: dict
    trials: list[dict]
    search_seconds: float
    train_rows: int
    test_ids: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Evaluation:
    roc_auc: float
    pr_auc: float
    log_loss: float
    brier: float
    base_rate: float
    deciles: pl.DataFrame
    oracle_auc: float | None = None  # the ground truth's AUC on the same rows, where the generator knows it
    plots: dict[str, bytes] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return {"roc_auc": self.roc_auc, "pr_auc": self.pr_auc, "log_loss": self.log_loss,
                "brier": self.brier, "base_rate": self.base_rate}


def matrix(frame: pl.DataFrame, features: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    """Feature columns as float64 with NaN for missing values (never-happened recencies), of the rows where
    `rows` is true (every row when None). Filled a column at a time: beside the frame, memory holds the
    result and one column, where filtering and casting the whole frame first held two more copies of it."""
    mask = None if rows is None else pl.Series(rows)
    result = np.empty((frame.height if rows is None else int(rows.sum()), len(features)), order="F")
    for index, name in enumerate(features):
        column = frame[name] if mask is None else frame[name].filter(mask)
        result[:, index] = column.cast(pl.Float64).to_numpy()
    return result


def _search_space(algorithm: Algorithm, rng: np.random.Generator) -> dict:
    if algorithm == "hist_gradient_boosting":
        return {"learning_rate": float(rng.choice([0.05, 0.08, 0.12, 0.2])),
                "max_leaf_nodes": int(rng.choice([15, 31, 63])),
                "min_samples_leaf": int(rng.choice([20, 50, 100, 200])),
                "l2_regularization": float(rng.choice([0.0, 0.1, 1.0]))}
    if algorithm == "random_forest":
        return {"n_estimators": int(rng.choice([10, 30, 60])), "max_depth": int(rng.choice([8, 12, 16])),
                "min_samples_leaf": int(rng.choice([5, 20, 50]))}
    return {"C": float(rng.choice([0.01, 0.1, 1.0, 10.0]))}


def _first_trial(algorithm: Algorithm) -> dict:
    """Trial 0 is the library default (the reference's n_estimators=10 for the forest)."""
    if algorithm == "hist_gradient_boosting":
        return {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0}
    if algorithm == "random_forest":
        return {"n_estimators": 10, "max_depth": None, "min_samples_leaf": 1}
    return {"C": 1.0}


def build_estimator(algorithm: Algorithm, params: dict, seed: int):
    if algorithm == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=500, early_stopping=True, validation_fraction=0.15,
                                              n_iter_no_change=20, random_state=seed, **params)
    if algorithm == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_jobs=2, random_state=seed, **params)
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="constant", fill_value=1e6, add_indicator=True),
                         StandardScaler(), LogisticRegression(max_iter=1000, **params))


def in_profile_order(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows by profile id: an export may come in any row order, a model must not depend on it. A no-op
    (no second copy of the frame) when the export was written in that order."""
    return frame if frame[ID_COLUMN].is_sorted() else frame.sort(ID_COLUMN)


def starting_params(estimator, algorithm: Algorithm) -> dict | None:
    """The searched settings of a trained model (the champion) when it is of `algorithm`: the search's first
    candidate, so a retraining on similar data starts from what won last time."""
    if type(estimator) is not type(build_estimator(algorithm, {}, 0)):
        return None
    names = set(_first_trial(algorithm))
    found = {k.rsplit("__", 1)[-1]: v for k, v in estimator.get_params().items() if k.rsplit("__", 1)[-1] in names}
    return found if found.keys() == names else None


@dataclass
class TrainingData:
    """The training table as matrices, split by profile id into training and held-out rows."""

    features: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_ids: np.ndarray


def split(frame: pl.DataFrame, test_fraction: float = HOLDOUT_FRACTION) -> TrainingData:
    """The held-out profiles by a hash of their id (the same ones at every training of the same profiles),
    each side a matrix of its own rows straight from the frame. Once this returns the frame is not needed:
    a caller that drops it gets its memory back before the fit."""
    frame = in_profile_order(frame)
    features = feature_columns(frame.columns)
    labels = frame[LABEL_COLUMN].to_numpy().astype(np.int8)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"the training table has a single label value ({labels[:1]}): nothing to learn")
    test = is_held_out(frame[ID_COLUMN], test_fraction)
    y_train, y_test = labels[~test], labels[test]
    if len(np.unique(y_test)) < 2 or len(np.unique(y_train)) < 2:
        raise ValueError(f"too few positives ({int(labels.sum())}) to split {len(labels)} rows for training")
    return TrainingData(features, matrix(frame, features, ~test), y_train, matrix(frame, features, test), y_test,
                        frame[ID_COLUMN].filter(pl.Series(test)).to_numpy())


def train(data: TrainingData, settings: TrainingSettings, start: dict | None = None) -> TrainedModel:
    """Successive-halving search on a validation split of the training rows, refit on all of them.
    `start`: settings to try first (the champion's), before the library defaults and random ones."""
    from sklearn.model_selection import train_test_split

    # The search compares settings on at most SEARCH_ROWS rows: trials on every row of a large population
    # would dominate the step (docs/performance.md). The final fit uses all training rows.
    search_rows = min(len(data.y_train), SEARCH_ROWS)
    search_split = train_test_split(data.x_train, data.y_train, train_size=int(search_rows * 0.8),
                                    test_size=search_rows - int(search_rows * 0.8), stratify=data.y_train,
                                    random_state=settings.seed + 1)
    started = time.monotonic()
    trials, best = successive_halving(candidates(settings, start), search_split, settings,
                                      started + settings.time_budget_s)
    estimator = build_estimator(settings.algorithm, best["params"], settings.seed).fit(data.x_train, data.y_train)
    return TrainedModel(estimator, data.features, best["params"], trials, time.monotonic() - started,
                        len(data.y_train), data.test_ids, data.x_test, data.y_test)


def candidates(settings: TrainingSettings, start: dict | None) -> list[dict]:
    """`max_trials` distinct settings: `start` (when given), the library defaults, then seeded random draws."""
    rng = np.random.default_rng(settings.seed)
    found: list[dict] = []
    for params in ([start] if start else []) + [_first_trial(settings.algorithm)]:
        if params not in found and len(found) < settings.max_trials:
            found.append(params)
    for _ in range(100 * settings.max_trials):  # the space may hold fewer distinct settings than asked for
        if len(found) >= settings.max_trials:
            break
        params = _search_space(settings.algorithm, rng)
        if params not in found:
            found.append(params)
    return found


def successive_halving(settings_list: list[dict], search_split: list[np.ndarray], settings: TrainingSettings,
                       deadline: float) -> tuple[list[dict], dict]:
    """Every candidate fitted on a small share of the search rows, the better half on twice as many, and so
    on until two remain, whose better one wins (Jamieson and Talwalkar, 2016): the budget goes to settings
    that look good. With k candidates it costs about log2(k) / 2 fits on all search rows, against k for
    trying each on all of them. Returns every trial in the order run, and the winner's."""
    from sklearn.metrics import roc_auc_score

    x_fit, x_val, y_fit, y_val = search_split
    rungs = max(1, int(np.ceil(np.log2(len(settings_list)))))
    trials: list[dict] = []
    survivors = settings_list
    for rung in range(rungs):
        # a prefix of the shuffled, stratified search rows; never so few that a trial sees a handful of positives
        rows = min(len(y_fit), max(len(y_fit) >> (rungs - rung), MIN_RUNG_ROWS))
        scored = []
        for params in survivors:
            if scored and time.monotonic() > deadline:
                break
            trial_start = time.monotonic()
            estimator = build_estimator(settings.algorithm, params, settings.seed).fit(x_fit[:rows], y_fit[:rows])
            auc = float(roc_auc_score(y_val, estimator.predict_proba(x_val)[:, 1]))
            scored.append({"params": params, "rung": rung, "rows": rows, "validation_auc": auc,
                           "seconds": round(time.monotonic() - trial_start, 2)})
        trials.extend(scored)
        ranked = sorted(scored, key=lambda t: -t["validation_auc"])  # stable: a tie keeps the earlier candidate
        survivors = [t["params"] for t in ranked[:max(1, len(ranked) // 2)]]
        if time.monotonic() > deadline:
            break
    return trials, ranked[0]


def decile_table(y_true: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
    """Lift by score decile (10 = highest scores)."""
    frame = pl.DataFrame({"y": y_true, "score": scores})
    base = float(y_true.mean())
    return (
        frame.with_columns(((pl.col("score").rank("ordinal") * 10 / (len(frame) + 1)).floor() + 1)
                           .cast(pl.Int32).alias("decile"))
        .group_by("decile")
        .agg(pl.len().alias("rows"), pl.col("y").sum().alias("positives"), pl.col("y").mean().alias("rate"),
             pl.col("score").mean().alias("mean_score"))
        .with_columns((pl.col("rate") / base).alias("lift"))
        .sort("decile", descending=True)
    )


def evaluate(y_true: np.ndarray, scores: np.ndarray, *, oracle: tuple[np.ndarray, np.ndarray] | None = None
             ) -> Evaluation:
    """Test-set metrics and plots; `oracle` = (labels, ground-truth probabilities) on the same rows."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    result = Evaluation(
        roc_auc=float(roc_auc_score(y_true, scores)), pr_auc=float(average_precision_score(y_true, scores)),
        log_loss=float(log_loss(y_true, clipped)), brier=float(brier_score_loss(y_true, scores)),
        base_rate=float(y_true.mean()), deciles=decile_table(y_true, scores))
    fpr, tpr, _ = roc_curve(y_true, scores)
    roc_series = {f"model (AUC {result.roc_auc:.3f})": (fpr, tpr)}
    precision, recall, _ = precision_recall_curve(y_true, scores)
    pr_series = {f"model (AP {result.pr_auc:.3f})": (recall, precision)}
    if oracle is not None:
        o_true, o_prob = oracle
        result.oracle_auc = float(roc_auc_score(o_true, o_prob))
        o_fpr, o_tpr, _ = roc_curve(o_true, o_prob)
        roc_series[f"oracle (AUC {result.oracle_auc:.3f})"] = (o_fpr, o_tpr)
        o_precision, o_recall, _ = precision_recall_curve(o_true, o_prob)
        pr_series[f"oracle (AP {average_precision_score(o_true, o_prob):.3f})"] = (o_recall, o_precision)
    result.plots["roc"] = plots.lines(roc_series, "ROC on held-out profiles", "false positive rate",
                                      "true positive rate", diagonal=True)
    result.plots["precision_recall"] = plots.lines(pr_series, "Precision-recall", "recall", "precision")
    bins = calibration_bins(y_true, scores)
    result.plots["calibration"] = plots.lines(
        {"model": (bins["mean_score"].to_numpy(), bins["rate"].to_numpy())},
        "Reliability diagram (10 quantile bins)", "mean predicted propensity", "observed conversion rate",
        diagonal=True)
    return result


def calibration_bins(y_true: np.ndarray, scores: np.ndarray, bins: int = 10) -> pl.DataFrame:
    frame = pl.DataFrame({"y": y_true, "score": scores})
    return (frame.with_columns((pl.col("score").rank("ordinal") * bins / (len(frame) + 1)).floor().alias("bin"))
            .group_by("bin").agg(pl.col("score").mean().alias("mean_score"), pl.col("y").mean().alias("rate"))
            .sort("bin"))


def importance(model: TrainedModel, max_rows: int = 5_000) -> tuple[pl.DataFrame, bytes]:
    """Permutation importance (drop in test AUC) on up to `max_rows` test rows, with a bar chart.

    It costs (features x repeats) predictions, more than the training itself on every test row; the
    smaller sample is noisier for weak features, which the chart shows as near-zero bars either way."""
    from sklearn.inspection import permutation_importance

    rows = min(max_rows, len(model.y_test))
    result = permutation_importance(model.estimator, model.x_test[:rows], model.y_test[:rows],
                                    scoring="roc_auc", n_repeats=2, random_state=0, n_jobs=1)
    table = (pl.DataFrame({"feature": model.features, "auc_drop": result.importances_mean})
             .sort("auc_drop", descending=True))
    top = table.head(15)
    png = plots.bar_chart(top["feature"].to_list(), top["auc_drop"].to_list(),
                          "Permutation importance (drop in test AUC)", "AUC drop")
    return table, png


def predict(estimator, frame: pl.DataFrame, features: list[str]) -> np.ndarray:
    """Vectorised propensity for every row of a feature table."""
    return estimator.predict_proba(matrix(frame, features))[:, 1]


def deciles_of(scores: np.ndarray) -> np.ndarray:
    """Decile 1..10 of each score within its own scoring run (10 = highest)."""
    if len(scores) == 0:
        return np.empty(0, dtype=np.int32)
    ranks = scores.argsort(kind="stable").argsort(kind="stable")
    return (ranks * 10 // len(scores) + 1).astype(np.int32)


def training_fingerprint(frame: pl.DataFrame, config: dict) -> str:
    """Content of the training rows (sorted by profile id, so the export's row order does not matter)
    and the training config: the same fingerprint trains the same model."""
    digest = hashlib.sha256(in_profile_order(frame).hash_rows(seed=0).to_numpy().tobytes())
    digest.update(json.dumps(config, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def oracle_on(truth: pl.DataFrame, test_ids: np.ndarray, y_test: np.ndarray) -> np.ndarray | None:
    """The generator's ground-truth probability of each held-out profile (NaN where it has none), or None
    when it knows too few of them (another generation or window, or real data)."""
    if truth.is_empty():
        return None
    known = truth.filter(pl.col("oracle_probability").is_not_null()).select(ID_COLUMN, "oracle_probability")
    aligned = (pl.DataFrame({ID_COLUMN: test_ids}).join(known, on=ID_COLUMN, how="left", maintain_order="left")
               ["oracle_probability"].to_numpy().astype(np.float64))
    found = ~np.isnan(aligned)
    if found.sum() < 0.9 * len(test_ids) or len(np.unique(y_test[found])) < 2:
        return None
    return aligned
