"""The model quality gate: a new version becomes champion only if every rule passes.

Every rule compares ROC AUCs measured on the held-out profiles, and an AUC measured on a few dozen
conversions is uncertain by several hundredths. A rule therefore fails only when the measurement
shows, beyond its sampling error, that the model is on the wrong side of its threshold: one-sided, at
`z` standard errors (1.645: 95%). The standard errors come from DeLong's method, paired where two
scorers are compared on the same profiles (model and oracle, model and champion), which removes the
noise they share. On 100k profiles (about 900 held-out conversions) an AUC's standard error is about
0.008; on 5,000 (about 45), 0.04.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GateSettings:
    auc_floor: float = 0.70
    max_oracle_gap: float = 0.02
    champion_tolerance: float = 0.002
    z: float = 1.645


@dataclass(frozen=True)
class RuleResult:
    passed: bool
    reason: str
    value: float
    threshold: float
    standard_error: float = 0.0


@dataclass(frozen=True)
class GateResult:
    results: tuple[RuleResult, RuleResult, RuleResult]  # floor, oracle gap, champion

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def summary(self) -> str:
        return "; ".join(r.reason for r in self.results if not r.passed) or "all gate rules passed"


def delong(labels: np.ndarray, scorers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of several scorers (rows of `scorers`) on the same labelled rows, and their covariance
    matrix (DeLong et al. 1988, with the midrank computation of Sun and Xu 2014)."""
    labels = np.asarray(labels).astype(bool)
    scorers = np.atleast_2d(np.asarray(scorers, dtype=np.float64))
    positives, negatives = scorers[:, labels], scorers[:, ~labels]
    m, n = positives.shape[1], negatives.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"need at least two positives and two negatives, got {m} and {n}")
    from scipy.stats import rankdata  # scipy.stats: a slow import, only where a model is trained

    ranks = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    within_positives, within_negatives = rankdata(positives, axis=1), rankdata(negatives, axis=1)
    aucs = (ranks[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    positive_parts = (ranks[:, :m] - within_positives) / n
    negative_parts = 1 - (ranks[:, m:] - within_negatives) / m
    covariance = np.atleast_2d(np.cov(positive_parts)) / m + np.atleast_2d(np.cov(negative_parts)) / n
    return aucs, covariance


def _difference(aucs: np.ndarray, covariance: np.ndarray, a: int, b: int) -> tuple[float, float]:
    """AUC[a] - AUC[b] and its standard error."""
    variance = covariance[a, a] + covariance[b, b] - 2 * covariance[a, b]
    return float(aucs[a] - aucs[b]), float(np.sqrt(max(variance, 0.0)))


def evaluate_gate(labels: np.ndarray, model: np.ndarray, settings: GateSettings, *,
                  oracle: np.ndarray | None = None, champion: np.ndarray | None = None) -> GateResult:
    """The gate on held-out rows: `model`, `oracle` (ground-truth probabilities, NaN where the generator
    does not know a row) and `champion` scores, aligned with `labels`. No oracle: real data."""
    return GateResult((_floor_rule(labels, model, settings), _oracle_rule(labels, model, oracle, settings),
                       _champion_rule(labels, model, champion, settings)))


def _floor_rule(labels: np.ndarray, model: np.ndarray, settings: GateSettings) -> RuleResult:
    aucs, covariance = delong(labels, model)
    auc, se = float(aucs[0]), float(np.sqrt(covariance[0, 0]))
    low = auc + settings.z * se < settings.auc_floor
    return RuleResult(not low, f"test AUC {auc:.4f} (standard error {se:.4f}) {_significantly(low)} below the "
                               f"floor {settings.auc_floor}", auc, settings.auc_floor, se)


def _oracle_rule(labels: np.ndarray, model: np.ndarray, oracle: np.ndarray | None,
                 settings: GateSettings) -> RuleResult:
    if oracle is None or np.isnan(oracle).all():
        return RuleResult(True, "no ground truth for these profiles (real data): oracle rule not applicable",
                          0.0, settings.max_oracle_gap)
    known = ~np.isnan(oracle)
    aucs, covariance = delong(labels[known], np.vstack([oracle[known], model[known]]))
    distance, se = _difference(aucs, covariance, 0, 1)
    far = distance - settings.z * se > settings.max_oracle_gap
    return RuleResult(not far, f"oracle AUC {aucs[0]:.4f} - model AUC {aucs[1]:.4f} = {distance:.4f} (standard "
                               f"error {se:.4f}) {_significantly(far)} above {settings.max_oracle_gap}",
                      distance, settings.max_oracle_gap, se)


def _champion_rule(labels: np.ndarray, model: np.ndarray, champion: np.ndarray | None,
                   settings: GateSettings) -> RuleResult:
    if champion is None:
        return RuleResult(True, "no comparable champion yet", 0.0, -settings.champion_tolerance)
    aucs, covariance = delong(labels, np.vstack([model, champion]))
    difference, se = _difference(aucs, covariance, 0, 1)
    worse = difference + settings.z * se < -settings.champion_tolerance
    return RuleResult(not worse, f"model AUC {aucs[0]:.4f} vs champion {aucs[1]:.4f} on the same rows (standard "
                                 f"error of the difference {se:.4f}): {_significantly(worse)} worse beyond "
                                 f"{settings.champion_tolerance}", difference, -settings.champion_tolerance, se)


def _significantly(significant: bool) -> str:
    return "significantly" if significant else "not significantly"
