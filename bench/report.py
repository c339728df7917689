"""The benchmark's readable report: one table of the stages against their limits, then the incremental run.

Business purpose: the figures a reader compares with issue 8's targets at a glance; the JSON line
printed after it keeps every raw measurement.
"""

from __future__ import annotations

import os


def seconds_text(seconds: float) -> str:
    """Seconds for the table: the JSON keeps the raw figure; a probe of a few ms must not print as 0.00."""
    return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.2g}"


def render_table(result: dict) -> str:
    """The result as the table `make bench` prints: header, one line per stage, the incremental rescore."""
    lines = [
        f"aep_assets benchmark at {result['commit']}"
        + (f" + uncommitted {', '.join(f.split()[-1] for f in result['uncommitted_product_files'])}"
           if result["uncommitted_product_files"] else "")
        + f": {result['profiles']:,} profiles, {result['events']:,} events, "
        f"{os.cpu_count()} cores, load average before/after {result['load_average_before']} / "
        f"{result['load_average_after']}",
        f"end to end {result['total_s']:.1f} s (Dagster outside steps {result['outside_steps_s']:.1f} s), "
        f"peak RSS of the process tree {result['peak_rss_mb']:,} MB (PSS {result['peak_pss_mb']:,} MB), "
        f"model AUC {result['model_auc']} vs oracle AUC {result['oracle_auc']}",
        f"during the pipeline the bench used {result['pipeline_cores_used']} cores on average, other processes "
        f"{result['pipeline_other_cores']}",
        "",
        f"{'stage':<17}{'seconds':>9}{'rows':>13}{'rows/s':>12}{'limit s':>9}{'ratio':>8}"
        f"{'peak RSS MB':>13}{'PSS MB':>8}{'py PSS':>8}{'cores':>7}{'others':>7}  limit probe",
    ]
    for name, stage in result["stages"].items():
        lines.append(
            f"{name:<17}{seconds_text(stage['seconds']):>9}{stage['rows']:>13,}{round(stage['rows_per_s']):>12,}"
            f"{seconds_text(stage['limit_seconds']):>9}{stage['ratio']:>7.1f}x{stage['peak_rss_mb']:>13,}"
            f"{stage['peak_pss_mb']:>8,}{stage['python_pss_mb']:>8,}{stage['cores_used']:>7.2f}"
            f"{stage['other_cores']:>7.2f}  {stage['limit']}")
    lines.append("RSS/PSS: whole tree incl. PostgreSQL (RSS counts shared buffers once per process, PSS splits "
                 "them); py PSS: the tree without the server; cores: CPU seconds of the tree per wall second; "
                 "others: of every other process on the machine")
    inc = result["incremental"]
    lines += ["", f"incremental: land {inc['profiles']:,} profiles {inc['land_s']:.1f} s, then rescore that "
                  f"partition {inc['rescore_s']:.1f} s (peak RSS {inc['peak_rss_mb']:,} MB)",
              "  " + ", ".join(f"{k} {seconds_text(v)} s" for k, v in inc["steps"].items())
              + f", outside steps {inc['outside_steps_s']:.2f} s",
              f"  the same rescore in a fresh process (as a sensor-launched run): "
              f"{inc['rescore_fresh_process_s']:.1f} s"]
    return "\n".join(lines)
