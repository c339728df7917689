"""Smoke tests of the benchmark (`make bench`, bench/run.py) and its diagnosis (bench/diagnose.py) at a tiny size.

The benchmark is how issue 8's throughput promises are checked, the diagnosis how a proposed change's
gain is measured; these tests only make sure both still run end to end against the current product and
report what they promise (the JSON line's keys and sane values), and that they clean up after
themselves. No timing assertions: timings belong to the benchmark's report, not to the test suite.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aep_assets.resources.embedded_postgres import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
STAGES = ("generation", "ingestion", "feature_sql", "export", "training", "scoring", "scores_ingestion",
          "audiences", "activation")
# Every section of bench/diagnose.py and the measurements it reports (the JIT variant only where the
# server has a JIT provider).
DIAGNOSE_KEYS = {
    "generation": ("batch0_seconds", "batch0_events", "batch0_parts", "batch0_write_parquet_s",
                   "batch0_categorical_cast_s"),
    "ingestion": ("read_parquet_s", "conform_s", "product_userid_index_two_at_once", "one_at_a_time",
                  "index_built_after", "unlogged_no_index", "rows_in_time_order", "analyze_events_s"),
    "sql": ("product_logged_ctas_s", "count_s", "analyze_s", "unlogged_ctas_s", "unlogged_ctas_random_page_cost_4_s",
            "unlogged_ctas_serial_s", "plan", "plan_random_page_cost_4", "converted_before_query_s"),
    "sql_variants": ("variant.no_nested_loop_s", "variant.no_nested_loop_work_mem_64MB_s",
                     "variant.no_nested_loop_sort_aggregate_s", "variant.copy_events_in_user_order_s",
                     "variant.index_userid_on_user_ordered_s", "variant.userid_correlation_with_storage_order",
                     "variant.user_ordered_events_s", "variant.user_ordered_plan"),
    "eda": ("product_s", "replaced_queries_s", "same_users_per_type_and_pair"),
    "scoring_features": ("all_batches_replace_slices_s", "all_batches_unlogged_ctas_s",
                         "all_batches_random_page_cost_4_s", "all_batches_no_nested_loop_s", "all_batches_plan",
                         "newest_batch_profiles", *(f"newest_batch_{name}_{kind}" for name in (
                             "random_page_cost_1.1", "random_page_cost_4", "index_probes_forced")
                                                    for kind in ("s", "plan"))),
    "training": ("read_export_s", "search_and_refit_s", "evaluate_with_plots_s", "permutation_importance_s",
                 "permutation_importance_one_thread_s", "one_fit_default_threads_s", "one_fit_one_thread_s"),
    "scoring": ("mlflow_activate_s", "champion_lookup_s", "load_model_s", "fetch_one_batch_s",
                "predict_one_batch_s", "histogram_plot_s"),
    "audiences": ("latest_propensities_s", "sizes_one_pass_s", "latest_members_s", "score_records_vs_profiles",
                  "activation_cut_and_write_s", "merge_upsert_newest_scores_batch"),
    "incremental": ("rescore_warm_s", "aep_assets_calls_over_0.15s"),
    # one pass beside a busy process runs every line of the section; the pass alone would only add three
    # more fresh sklearn processes to the test's time
    "openmp": tuple(f"1_busy_process.{name}" for name in ("libgomp_default", "OMP_WAIT_POLICY=PASSIVE",
                                                            "OMP_NUM_THREADS=1")),
}
# diagnose.py's key prefix of each section (the two SQL sections share one)
DIAGNOSE_PREFIX = {"sql": "feature_sql", "sql_variants": "feature_sql"}


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


def numbers_in(value) -> list[float]:
    """Every number inside a reported value (dicts, lists, pairs), booleans left out."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, int | float):
        return [value]
    items = value.values() if isinstance(value, dict) else value
    return [number for item in items for number in numbers_in(item)]


def run_bench_kept(output: Path) -> Path:
    """A tiny benchmark home kept for diagnose.py (its server stopped); returns the home."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--profiles", "2000", "--batch-profiles", "500", "--keep",
         "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=280)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return Path(json.loads(completed.stdout.strip().splitlines()[-1])["home"])


@pytest.mark.timeout(540)
def test_diagnose_runs_every_section_on_a_kept_home(tmp_path):
    home = run_bench_kept(tmp_path / "bench.txt")
    try:
        output = tmp_path / "diagnose.json"
        completed = subprocess.run(
            [sys.executable, str(REPO / "bench" / "diagnose.py"), "--home", str(home),
             "--only", ",".join(DIAGNOSE_KEYS), "--openmp-busy", "1", "--output", str(output)],
            cwd=REPO, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-4000:]
        last_line = completed.stdout.strip().splitlines()[-1]
        assert output.read_text().strip() == last_line
        result = json.loads(last_line)
        # the server is stopped at the end, whatever the sections did
        leftovers = [p.pid for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])]
        assert not leftovers
    finally:
        EmbeddedPostgres(home / "postgres").remove()
        shutil.rmtree(home, ignore_errors=True)

    assert set(result["server"]) == {"jit", "jit_available", "random_page_cost", "version"}
    expected = {f"{DIAGNOSE_PREFIX.get(section, section)}.{key}" for section, keys in DIAGNOSE_KEYS.items()
                for key in keys}
    if result["server"]["jit_available"]:
        expected.add("feature_sql.unlogged_ctas_jit_on_s")
    assert expected <= set(result), sorted(expected - set(result))
    correlation = "feature_sql.variant.userid_correlation_with_storage_order"
    for key in expected - {correlation}:
        numbers = numbers_in(result[key])
        assert all(math.isfinite(n) and n >= 0 for n in numbers), (key, result[key])
        # a number, or a dict of them; lists are plans (text) and the profiled calls (possibly none)
        assert numbers or isinstance(result[key], list | bool), (key, result[key])
        if key.endswith("plan"):
            assert result[key] and all(isinstance(line, str) for line in result[key]), key
    assert all(c is None or -1.0 <= c <= 1.0 for c in result[correlation].values()), result[correlation]
    assert result["eda.same_users_per_type_and_pair"] is True
    assert result["generation.batch0_events"] > 0
    assert result["scoring_features.newest_batch_profiles"] == 500
    assert result["audiences.score_records_vs_profiles"]["profiles"] > 0


@pytest.mark.timeout(400)
def test_landing_latency_follows_each_landing_to_its_scores_with_the_real_daemon(tmp_path):
    output = tmp_path / "latency.txt"
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "landing_latency.py"), "--profiles", "2000", "--batch-profiles", "300",
         "--landings", "2", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=380)
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert output.read_text().strip().splitlines()[-1] == completed.stdout.strip().splitlines()[-1]
    landings = result["landings"]
    assert len(landings) == 2 and len({entry["batch"] for entry in landings}) == 2
    for entry in landings:
        assert entry["runs"] == 1  # the sensor's run key: one rescore per landed batch
        # each part of the path is a real interval, and together they are the whole wait
        assert entry["sensor_s"] > 0 and entry["run_start_s"] > 0 and entry["run_s"] > 0
        assert entry["scores_in_platform_s"] <= entry["sensor_s"] + entry["run_start_s"] + entry["run_s"]
    assert result["summary"]["scores_in_platform_s"]["max"] == max(e["scores_in_platform_s"] for e in landings)
    # the home is gone, and nothing that ran in it (the daemon, its code server, the platform) is left running
    home = result["home"]
    assert not Path(home).exists()
    processes = psutil.process_iter(["cmdline", "environ"])
    assert not [p.pid for p in processes if home in " ".join(p.info["cmdline"] or [])
                or (p.info["environ"] or {}).get("AEP_ASSETS_HOME") == home]
