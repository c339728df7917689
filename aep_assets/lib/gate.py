"""The model quality gate: a new version becomes champion only if every rule passes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateSettings:
    auc_floor: float = 0.70
    max_oracle_gap: float = 0.02
    champion_tolerance: float = 0.002


@dataclass(frozen=True)
class RuleResult:
    passed: bool
    reason: str
    value: float
    threshold: float


@dataclass(frozen=True)
class GateResult:
    results: tuple[RuleResult, RuleResult, RuleResult]  # floor, oracle gap, champion

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def summary(self) -> str:
        return "; ".join(r.reason for r in self.results if not r.passed) or "all gate rules passed"


def evaluate_gate(model_auc: float, oracle_auc: float | None, champion_auc: float | None,
                  settings: GateSettings) -> GateResult:
    floor = RuleResult(model_auc >= settings.auc_floor,
                       f"test AUC {model_auc:.4f} {'>=' if model_auc >= settings.auc_floor else '<'} "
                       f"floor {settings.auc_floor}", model_auc, settings.auc_floor)
    if oracle_auc is None:
        gap = RuleResult(True, "no ground truth for these profiles (real data): oracle rule not applicable",
                         0.0, settings.max_oracle_gap)
    else:
        distance = oracle_auc - model_auc
        gap = RuleResult(distance <= settings.max_oracle_gap,
                         f"oracle AUC {oracle_auc:.4f} - model AUC {model_auc:.4f} = {distance:.4f} "
                         f"{'<=' if distance <= settings.max_oracle_gap else '>'} {settings.max_oracle_gap}",
                         distance, settings.max_oracle_gap)
    if champion_auc is None:
        versus = RuleResult(True, "no comparable champion yet", 0.0, settings.champion_tolerance)
    else:
        ok = model_auc >= champion_auc - settings.champion_tolerance
        versus = RuleResult(ok, f"model AUC {model_auc:.4f} vs champion {champion_auc:.4f} on the same rows "
                                f"({'not worse' if ok else 'worse'} beyond {settings.champion_tolerance})",
                            model_auc - champion_auc, -settings.champion_tolerance)
    return GateResult((floor, gap, versus))
