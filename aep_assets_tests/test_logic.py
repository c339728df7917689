"""Pure logic: the sensor's cursor, the model gate, drift, reach, names."""

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from aep_assets.lib.audiences import Interval, reach_table
from aep_assets.lib.cursor import BatchCursor, plan_tick
from aep_assets.lib.datasets import PROFILES, BatchValidationError, conform
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


def gate_data(rows: int, noise: float, seed: int = 0):
    """Labels drawn from a known probability (the oracle) and a model that sees it through `noise`."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-3.2, 1.2, rows)
    truth = 1 / (1 + np.exp(-logit))
    labels = rng.random(rows) < truth
    return labels, truth, logit + rng.normal(0, noise, rows)


def test_gate_rules_fail_only_beyond_their_sampling_error():
    settings = GateSettings(auc_floor=0.7, max_oracle_gap=0.02, champion_tolerance=0.002)
    labels, oracle, model = gate_data(40_000, noise=0.3)
    assert evaluate_gate(labels, model, settings, oracle=oracle, champion=model).passed
    _, _, random_scores = gate_data(40_000, noise=50.0)
    low = evaluate_gate(labels, random_scores, settings)
    assert not low.passed and "floor" in low.summary() and "oracle rule not applicable" in low.results[1].reason
    _, _, blurred = gate_data(40_000, noise=1.0)
    far = evaluate_gate(labels, blurred, settings, oracle=oracle)
    assert not far.passed and "oracle" in far.summary() and far.results[1].value > 0.04
    worse = evaluate_gate(labels, blurred, settings, champion=model)
    assert not worse.passed and "champion" in worse.summary()
    # The same blurred model on 600 rows (about 25 conversions): as far from the oracle, not provably so.
    few = slice(0, 600)
    small = evaluate_gate(labels[few], blurred[few], settings, oracle=oracle[few])
    assert small.results[1].passed and small.results[1].standard_error > 0.03
    unknown = np.where(np.arange(40_000) % 2 == 0, oracle, np.nan)  # the oracle on half the rows
    assert evaluate_gate(labels, model, settings, oracle=unknown).results[1].passed


def test_delong_matches_the_auc_and_a_bootstrap():
    from sklearn.metrics import roc_auc_score

    from aep_assets.lib.gate import delong

    labels, oracle, model = gate_data(4000, noise=0.8, seed=3)
    aucs, covariance = delong(labels, np.vstack([model, oracle]))
    assert aucs[0] == pytest.approx(roc_auc_score(labels, model)) and aucs[1] == pytest.approx(
        roc_auc_score(labels, oracle))
    rng = np.random.default_rng(1)
    boot = []
    for _ in range(400):
        rows = rng.integers(0, len(labels), len(labels))
        boot.append(roc_auc_score(labels[rows], model[rows]) - roc_auc_score(labels[rows], oracle[rows]))
    se = np.sqrt(covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1])
    assert se == pytest.approx(np.std(boot), rel=0.2)


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


def test_deciles_rank_within_the_run():
    from aep_assets.lib.modeling import deciles_of

    deciles = deciles_of(np.linspace(0, 1, 100))
    assert deciles.min() == 1 and deciles.max() == 10 and list(np.bincount(deciles)[1:]) == [10] * 10


def test_training_does_not_depend_on_the_export_row_order():
    import polars as pl

    from aep_assets.lib import modeling

    rng = np.random.default_rng(5)
    n = 4000
    x = rng.normal(size=(n, 3))
    frame = pl.DataFrame({"userid": [f"{i:038d}" for i in rng.permutation(n)], "a": x[:, 0], "b": x[:, 1],
                          "c": x[:, 2], "label": (x[:, 0] + rng.normal(size=n) > 1.5).astype(np.int8)})
    settings = modeling.TrainingSettings(max_trials=1)
    shuffled = modeling.train(modeling.split(frame), settings)
    ordered_frame = modeling.in_profile_order(frame)
    assert ordered_frame["userid"].is_sorted() and modeling.in_profile_order(ordered_frame) is ordered_frame
    ordered = modeling.train(modeling.split(ordered_frame), settings)
    assert np.array_equal(shuffled.test_ids, ordered.test_ids)
    assert np.array_equal(shuffled.estimator.predict_proba(shuffled.x_test),
                          ordered.estimator.predict_proba(ordered.x_test))


def profile_rows(userid: pa.Array) -> pa.Table:
    n = len(userid)
    text = pa.array(["x"] * n)
    created = pa.array([datetime(2026, 1, 1, tzinfo=timezone.utc)] * n, pa.timestamp("us", "UTC"))
    return pa.table({"userid": userid, "email": text, "first_name": text, "last_name": text, "country": text,
                     "city": text, "created_at": created})


@pytest.mark.parametrize("userid,message", [
    (pa.nulls(4), r"no row has an identity: column 'userid' is missing in all 4 row\(s\) \(4 null\)"),
    (pa.nulls(4, pa.string()), r"missing in all 4 row\(s\) \(4 null\)"),
    (pa.array(["", " ", "\t", ""]), r"missing in all 4 row\(s\) \(4 empty or blank\)"),
    (pa.array(["a", None, "", "b"]), r"2 of 4 row\(s\) without identity 'userid' \(1 null and 1 empty or blank\)"),
    (pa.array([1, 2, 3, 4]), r"column 'userid' has type int64, expected string"),
])
def test_every_way_an_identity_can_be_missing_is_named(userid, message):
    with pytest.raises(BatchValidationError, match=message) as error:
        conform(profile_rows(userid), PROFILES, "file profiles.parquet")
    assert str(error.value).startswith("file profiles.parquet: ")


def test_a_batch_without_the_identity_column_names_it():
    with pytest.raises(BatchValidationError, match=r"missing column\(s\) \['userid'\]"):
        conform(profile_rows(pa.array(["a"])).drop_columns(["userid"]), PROFILES, "file p.parquet")


def test_the_search_starts_from_the_champion_and_halves_its_candidates_on_twice_the_rows():
    from aep_assets.lib import modeling

    settings = modeling.TrainingSettings(max_trials=4)
    champion = modeling.build_estimator("hist_gradient_boosting", {"learning_rate": 0.2, "max_leaf_nodes": 15,
                                                                   "min_samples_leaf": 50, "l2_regularization": 1.0}, 0)
    start = modeling.starting_params(champion, "hist_gradient_boosting")
    assert start == {"learning_rate": 0.2, "max_leaf_nodes": 15, "min_samples_leaf": 50, "l2_regularization": 1.0}
    assert modeling.starting_params(champion, "logistic_regression") is None
    assert modeling.starting_params(modeling.build_estimator("logistic_regression", {"C": 10.0}, 0),
                                    "logistic_regression") == {"C": 10.0}
    settings_list = modeling.candidates(settings, start)
    assert settings_list[0] == start and len(settings_list) == 4
    assert all(a != b for i, a in enumerate(settings_list) for b in settings_list[i + 1:])

    rng = np.random.default_rng(3)
    x = rng.normal(size=(20_000, 3))
    y = (x[:, 0] + rng.normal(size=len(x)) > 1.5).astype(np.int8)
    split = [x[:16_000], x[16_000:], y[:16_000], y[16_000:]]
    trials, winner = modeling.successive_halving(settings_list, split, settings, deadline=float("inf"))
    assert [(t["rung"], t["rows"]) for t in trials] == [(0, 4000)] * 4 + [(1, 8000)] * 2
    first = sorted(trials[:4], key=lambda t: -t["validation_auc"])
    assert [t["params"] for t in trials[4:]] == [first[0]["params"], first[1]["params"]]
    assert winner is max(trials[4:], key=lambda t: t["validation_auc"])


def test_the_feature_matrix_is_the_frame_cast_to_float_with_nan_for_missing_values():
    import polars as pl

    from aep_assets.lib import modeling

    frame = pl.DataFrame({"count": [1, 2, None, 4], "recency": [0.5, None, 2.0, 3.5], "other": ["a", "b", "c", "d"]})
    rows = np.array([True, False, True, True])
    expected = np.array([[1.0, 0.5], [2.0, np.nan], [np.nan, 2.0], [4.0, 3.5]])
    np.testing.assert_array_equal(modeling.matrix(frame, ["count", "recency"]), expected)
    np.testing.assert_array_equal(modeling.matrix(frame, ["count", "recency"], rows), expected[rows])
    assert modeling.matrix(frame, ["recency"], np.zeros(4, dtype=bool)).shape == (0, 1)
