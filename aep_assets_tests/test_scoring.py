"""Scoring a profile batch of any size in bounded memory, and the plan of a 20M-profile scoring in AEP."""

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest

from aep_assets.lib import guardrails, modeling, scoring

AS_OF = datetime(2026, 12, 1, tzinfo=timezone.utc)


def feature_chunks(chunks: int, rows: int, peaks: list[int] | None = None, userids=None):
    """Feature rows as a platform streams them; `peaks` records Arrow's allocated bytes at each chunk."""
    rng = np.random.default_rng(7)
    for index in range(chunks):
        ids = userids[index] if userids is not None else [f"{index:06d}{i:032d}" for i in range(rows)]
        yield pa.record_batch({
            "userid": pa.array(ids, pa.string()), "profile_batch": pa.array(["b1"] * len(ids)),
            "as_of": pa.array([AS_OF] * len(ids), pa.timestamp("us", "UTC")),
            "emails_opened": pa.array(rng.integers(0, 9, len(ids))),
            "minutes_since_page_views": pa.array(rng.random(len(ids)) * 1000)})
        if peaks is not None:
            peaks.append(pa.total_allocated_bytes())


def predict(frame):
    return 1 / (1 + np.exp(-(frame["emails_opened"].to_numpy() - 4)))


def test_chunks_give_the_scores_and_deciles_of_the_whole_batch(tmp_path):
    scored = scoring.score_chunks(feature_chunks(7, 1000), predict, ("m", "3"), "b1", tmp_path)
    batches = list(scoring.with_deciles(scored, chunk_rows=600))
    table = pa.Table.from_batches(batches)
    assert table.schema == scoring.SCORES_SCHEMA and table.num_rows == scored.rows == 7000
    assert table["decile"].to_pylist() == modeling.deciles_of(scored.propensity).tolist()
    assert scoring.problems(scored, 7000) == []


def test_what_is_wrong_with_scores_is_named(tmp_path):
    scored = scoring.score_chunks(feature_chunks(2, 3, userids=[["a", "b", None], ["c", "a", "d"]]),
                                  lambda frame: np.array([0.1, 1.5, np.nan]), ("m", "1"), "b1", tmp_path)
    found = scoring.problems(scored, 5)
    assert found[0] == "6 scores for 5 profiles"
    assert "null scores" in found[1] and "outside [0, 1]" in found[2] and found[3] == "duplicate userids"


def test_memory_stays_at_a_chunk_whatever_the_batch(tmp_path):
    """Arrow memory in use at each chunk does not grow with the number of chunks: four times the
    profiles, the same peak (numpy keeps one float per profile for the deciles, by design)."""
    peaks = {}
    for chunks in (5, 20):
        seen: list[int] = []
        start = pa.total_allocated_bytes()
        scored = scoring.score_chunks(feature_chunks(chunks, 20_000, seen), predict, ("m", "1"), "b1", tmp_path)
        for _ in scoring.with_deciles(scored, chunk_rows=20_000):
            seen.append(pa.total_allocated_bytes())
        peaks[chunks] = max(seen) - start
    assert peaks[20] < 1.5 * peaks[5]


def test_a_20m_profile_batch_is_planned_within_the_guardrails():
    plan = guardrails.plan_scoring(20_000_000)
    # features read back through one dataset export (20M rows are far past Query Service's 50,000),
    # scores in 10 files of 2M rows (about 60 MB each: small-file uploads), one batch (limits 1,500 files, 100 GB)
    assert plan == guardrails.ScoringPlan(20_000_000, feature_exports=1, score_files=10, score_batches=1)
    assert guardrails.plan_scoring(40_000).feature_exports == 0
    assert guardrails.chunks(1_300 * 1024 ** 2)[-1] == (1024 ** 3, 1_300 * 1024 ** 2 - 1)  # 512 MB chunks
    with pytest.raises(guardrails.GuardrailError, match="1501 files exceed the 1500"):
        guardrails.check_batch([1] * 1501)
    with pytest.raises(guardrails.GuardrailError, match="100 GB"):
        guardrails.check_batch([60 * 1024 ** 3, 50 * 1024 ** 3])
