"""Pure logic: the sensor's cursor, the model gate, drift, reach, names."""

from dataclasses import dataclass

import numpy as np
import pytest

from aep_assets.lib.audiences import Interval, reach_table
from aep_assets.lib.cursor import BatchCursor, plan_tick
from aep_assets.lib.drift import population_stability_index
from aep_assets.lib.gate import GateSettings, evaluate_gate
from aep_assets.lib.names import InvalidNameError, audience_name, identifier, slug


@dataclass
class B:
    id: str
    completed_ms: int
    status: str = "success"


def test_cursor_round_trips():
    cursor = BatchCursor(123, ("a", "b"))
    assert BatchCursor.parse(cursor.serialize()) == cursor
    assert BatchCursor.parse(None) == BatchCursor()


def test_batches_in_one_millisecond_are_all_requested_once():
    batches = [B("a", 10), B("b", 10), B("c", 10)]
    first = plan_tick(BatchCursor(), batches, lambda k: False, max_requests=2)
    assert first.requested == ["a", "b"]
    second = plan_tick(first.cursor, batches, lambda k: False, max_requests=2)
    assert second.requested == ["c"]
    third = plan_tick(second.cursor, batches, lambda k: False, max_requests=2)
    assert third.requested == [] and third.cursor == second.cursor


def test_failed_and_known_batches_are_passed_over_and_the_cursor_moves():
    batches = [B("bad", 5, "failed"), B("old", 6), B("new", 7)]
    plan = plan_tick(BatchCursor(), batches, lambda k: k == "old", max_requests=5)
    assert plan.failed == ["bad"] and plan.already_known == ["old"] and plan.requested == ["new"]
    assert plan.cursor == BatchCursor(7, ("new",))


def test_cursor_does_not_pass_batches_left_for_the_next_tick():
    batches = [B(str(i), i) for i in range(10)]
    plan = plan_tick(BatchCursor(), batches, lambda k: False, max_requests=3)
    assert plan.requested == ["0", "1", "2"] and plan.cursor.after_ms == 2


def test_gate_rules():
    settings = GateSettings(auc_floor=0.7, max_oracle_gap=0.02, champion_tolerance=0.002)
    assert evaluate_gate(0.80, 0.81, 0.795, settings).passed
    low = evaluate_gate(0.65, 0.66, None, settings)
    assert not low.passed and "floor" in low.summary()
    far = evaluate_gate(0.75, 0.80, None, settings)
    assert not far.passed and "oracle" in far.summary()
    worse = evaluate_gate(0.78, 0.79, 0.79, settings)
    assert not worse.passed and "champion" in worse.summary()
    assert evaluate_gate(0.78, None, None, settings).passed


def test_psi_is_zero_for_same_and_large_for_shifted():
    rng = np.random.default_rng(0)
    a = rng.beta(2, 20, 20_000)
    assert population_stability_index(a, a) == pytest.approx(0.0, abs=1e-9)
    assert population_stability_index(a, np.clip(a + 0.1, 0, 1)) > 0.2


def test_reach_table_counts_and_cumulates():
    p = np.array([0.01, 0.1, 0.3, 0.6, 0.95])
    table = reach_table(p, [Interval("high", 0.5, 1.000001), Interval("mid", 0.05, 0.5), Interval("low", 0.0, 0.05)])
    assert table["profiles"].to_list() == [2, 2, 1]
    assert table["cumulative_reach"].to_list() == [2, 4, 5]


@pytest.mark.parametrize("bad", ["x; DROP TABLE cmle_profiles", "Upper", "1abc", "", "a" * 64, "a-b"])
def test_bad_identifiers_are_rejected(bad):
    with pytest.raises(InvalidNameError):
        identifier(bad)


def test_audience_names():
    assert slug("Propensity 0.2 to 0.93 - reference") == "propensity-0.2-to-0.93-reference"
    with pytest.raises(InvalidNameError):
        audience_name("x'; DROP TABLE catalog.audiences; --")
    with pytest.raises(ValueError, match="lower < upper"):
        Interval("bad", 0.5, 0.2)


def test_score_problems_name_what_is_wrong():
    import pyarrow as pa

    from aep_assets.lib.modeling import score_problems

    good = pa.table({"userid": ["a", "b"], "propensity": [0.1, 0.9]})
    assert score_problems(good, 2) == []
    assert score_problems(good, 3) == ["2 scores for 3 profiles"]
    bad = pa.table({"userid": ["a", "a"], "propensity": pa.array([1.5, None], pa.float64())})
    problems = score_problems(bad, 2)
    assert any("null" in p for p in problems) and any("outside [0, 1]" in p for p in problems)
    assert "duplicate userids" in problems


def test_deciles_rank_within_the_run():
    from aep_assets.lib.modeling import deciles_of

    deciles = deciles_of(np.linspace(0, 1, 100))
    assert deciles.min() == 1 and deciles.max() == 10 and list(np.bincount(deciles)[1:]) == [10] * 10


def test_split_is_by_profile_and_stable():
    import polars as pl

    from aep_assets.lib.holdout import is_held_out

    ids = pl.Series([f"{i:038d}" for i in range(20_000)])
    test = is_held_out(ids, 0.25)
    assert 0.23 < test.mean() < 0.27
    shuffled = ids.sample(fraction=1.0, shuffle=True, seed=3)
    again = dict(zip(shuffled.to_list(), is_held_out(shuffled, 0.25), strict=True))
    assert all(again[i] == t for i, t in zip(ids.to_list(), test, strict=True))


def test_training_does_not_depend_on_the_export_row_order():
    import polars as pl

    from aep_assets.lib import modeling

    rng = np.random.default_rng(5)
    n = 4000
    x = rng.normal(size=(n, 3))
    frame = pl.DataFrame({"userid": [f"{i:038d}" for i in rng.permutation(n)], "a": x[:, 0], "b": x[:, 1],
                          "c": x[:, 2], "label": (x[:, 0] + rng.normal(size=n) > 1.5).astype(np.int8)})
    settings = modeling.TrainingSettings(max_trials=1)
    shuffled = modeling.train(frame, settings)
    ordered_frame = modeling.in_profile_order(frame)
    assert ordered_frame["userid"].is_sorted() and modeling.in_profile_order(ordered_frame) is ordered_frame
    ordered = modeling.train(ordered_frame, settings)
    assert np.array_equal(shuffled.test_ids, ordered.test_ids)
    assert np.array_equal(shuffled.estimator.predict_proba(shuffled.x_test),
                          ordered.estimator.predict_proba(ordered.x_test))
