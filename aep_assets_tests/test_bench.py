"""Smoke test of the benchmark (`make bench`, bench/run.py) at a tiny size.

The benchmark is how issue 8's throughput promises are checked; this test only makes sure it still
runs end to end against the current product and reports what it promises (the JSON line's keys and
sane values), and that it cleans up after itself. No timing assertions: timings belong to the
benchmark's report, not to the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = ("generation", "ingestion", "feature_sql", "export", "training", "scoring", "scores_ingestion",
          "audiences", "activation")


@pytest.mark.timeout(300)
def test_bench_runs_end_to_end_and_reports_every_stage(tmp_path):
    output = tmp_path / "bench.txt"
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--profiles", "2000", "--batch-profiles", "500",
         "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-4000:]

    last_line = completed.stdout.strip().splitlines()[-1]
    result = json.loads(last_line)
    assert output.read_text().strip().splitlines()[-1] == last_line
    for key in ("profiles", "events", "total_s", "peak_rss_mb", "model_auc", "oracle_auc", "incremental_s", "stages"):
        assert key in result, key
    assert result["profiles"] == 2000
    assert result["events"] > result["profiles"]
    assert result["total_s"] > 0 and result["incremental_s"] > 0
    assert result["peak_rss_mb"] > 100  # the server and a Python process with dagster loaded, at least
    assert 0.0 <= result["model_auc"] <= 1.0
    assert isinstance(result["oracle_auc"], float) and 0.0 <= result["oracle_auc"] <= 1.0
    for stage in STAGES:
        # Raw durations (never rounded): real work measured on a nanosecond clock is never 0, however
        # fast the machine; a 0 would mean a probe that measured nothing.
        figures = result["stages"][stage]
        assert isinstance(figures["seconds"], float) and figures["seconds"] > 0, stage
        assert isinstance(figures["limit_seconds"], float) and figures["limit_seconds"] > 0, stage
        assert figures["rows"] > 0, stage
        assert figures["rows_per_s"] == pytest.approx(figures["rows"] / figures["seconds"]), stage
        assert figures["ratio"] == pytest.approx(figures["seconds"] / figures["limit_seconds"]), stage
        assert result["probes"][stage]["seconds"] == figures["limit_seconds"], stage
    assert result["incremental"]["profiles"] == 500
    # the printed table rounds, but never a measured time down to nothing
    rows = {line.split()[0]: line.split() for line in completed.stdout.splitlines() if line.split()[:1] in
            [[stage] for stage in STAGES]}
    assert set(rows) == set(STAGES)
    for stage, columns in rows.items():
        assert float(columns[1]) > 0 and float(columns[4]) > 0, (stage, columns)

    # the temporary home is gone and its embedded server is stopped
    home = result["home"]
    assert not Path(home).exists()
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if home in " ".join(p.info["cmdline"] or [])]
    assert not leftovers
