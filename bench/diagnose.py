"""Where the time goes inside each stage: targeted experiments on a home kept by `bench/run.py --keep`.

Business purpose: bench/run.py says how far each stage of the CMLE workflow is from what the machine
allows; this script says why, by timing what the product does in a stage beside the alternatives a
change would use, on the same data, so each suggested product change comes with a measured gain. It
never changes the product: alternatives run as scratch SQL or in-memory code and are dropped afterwards.

    python bench/run.py --profiles 100000 --keep        # prints "home": "/tmp/aep-bench-..."
    python bench/diagnose.py --home /tmp/aep-bench-... [--only sql,audiences] [--output bench/results/x.json]

Sections (default: all but the last two, which are slower or add scores to the home):
- generation: cProfile of one batch of the generator, by part, and its parquet writes;
- ingestion: the events files as the product lands them (logged table, userid index kept during COPY,
  two batches at once) against one at a time, the index built after the load, an unlogged table
  without index (the limit) and rows in time order instead of the files' (userid, time) order; one
  ANALYZE of the events (the product runs one after each initial batch);
- sql: the training CTAS as the product runs it (logged; random_page_cost 1.1), its count and
  ANALYZE, its plan, against unlogged, serial, JIT on (where the server has JIT) and random_page_cost 4; the
  converted-before count of the row-count check;
- sql_variants: the training SELECT without nested loops, with more work_mem, with sort aggregation,
  and on a copy of the events stored in one global (userid, timestamp) order;
- eda: the EDA step's two event queries (weekly counts, a BIT_OR type mask per user), the training
  sample and the numpy around them, against the queries they replaced (COUNT(DISTINCT) per type and a
  self-join of distinct (user, type) pairs), with a check that both give the same users;
- scoring_features: the features of every profile batch in one statement through the product's
  replace_slices (into a scratch table), the same SELECT alone, under random_page_cost 4 and without
  nested loops; the newest profile batch alone (the incremental rescore): plan and time with the
  server's random_page_cost 1.1 (index probes at a large base), the default 4, and index probes forced;
- training: read the export, search and refit, evaluation, permutation importance; one fit and the
  importance on one thread;
- scoring: MLflow load, fetch of one batch's features, predict, histogram;
- audiences: the latest score per profile read from the merged table ingestion maintains against the
  window over every score record (reach, sizes, activation's read), the activation cut and writes,
  and the merge upsert of one scores batch with the product's fillfactor 50 and with 100;
- incremental (optional): cProfile of a single-partition rescore of the newest profile batch;
- openmp (optional): sklearn's OpenMP settings (libgomp's default wait, the product's setting;
  OMP_WAIT_POLICY=PASSIVE; one thread) alone and beside one CPU-bound process (`--openmp-busy`).

Prints one line per measurement and, as the last line, all of them as JSON. Stops the server at the end
(the home is left in place; delete it yourself).

Modules (bench/ is sys.path[0] when run as a script): the sections live by stage in `diagnose_load`
(generation, ingestion), `diagnose_sql` (sql, sql_variants, eda, scoring_features), `diagnose_model`
(training, scoring, openmp) and `diagnose_rescore` (audiences, incremental); `diagnose_tools` holds the
measurements noted so far and the clock and scratch-SQL helpers they share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from diagnose_load import generation, ingestion
from diagnose_model import openmp, scoring, training
from diagnose_rescore import audiences, incremental
from diagnose_sql import eda, feature_sql, feature_sql_variants, scoring_features
from diagnose_tools import RESULTS, note

SECTIONS = ("generation", "ingestion", "sql", "sql_variants", "eda", "scoring_features", "training", "scoring",
            "audiences", "incremental", "openmp")
DEFAULT_SECTIONS = SECTIONS[:-2]


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections on the kept home, print and optionally write every measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="a home kept by bench/run.py --keep")
    parser.add_argument("--only", default="", help=f"comma-separated, from: {','.join(SECTIONS)} "
                                                   f"(default: all but {','.join(SECTIONS[len(DEFAULT_SECTIONS):])})")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--openmp-busy", default="0,1",
                        help="openmp: CPU-bound processes beside the fits, one pass per count (default 0,1)")
    args = parser.parse_args(argv)
    wanted = set(filter(None, args.only.split(","))) or set(DEFAULT_SECTIONS)
    if wanted - set(SECTIONS):
        parser.error(f"unknown section(s) {sorted(wanted - set(SECTIONS))}")
    os.environ.update({"AEP_ASSETS_HOME": str(args.home), "DAGSTER_HOME": str(args.home / "dagster"),
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    from aep_assets.resources.embedded_postgres import EmbeddedPostgres

    note("load_average_start", [round(x, 2) for x in os.getloadavg()])
    try:
        run_sections(wanted, tuple(int(count) for count in args.openmp_busy.split(",")))
    finally:
        EmbeddedPostgres(args.home / "postgres").stop()
    note("load_average_end", [round(x, 2) for x in os.getloadavg()])
    text = json.dumps(RESULTS, default=str)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


def run_sections(wanted: set[str], openmp_busy: tuple[int, ...]) -> None:
    """The wanted sections in SECTIONS order, on the home's resources and its latest materializations."""
    import dagster as dg

    from aep_assets.lib.source_files import source_folder
    from aep_assets.main import latest_metadata
    from aep_assets.resources.local_platform import LocalPlatform
    from aep_assets.resources.storage import LocalStorage
    from aep_assets.resources.tracking import MlflowTracking

    platform, storage, tracking = LocalPlatform(), LocalStorage(), MlflowTracking()
    with dg.DagsterInstance.get() as instance:
        training_meta = latest_metadata(instance, "training_features")
        n_profiles = latest_metadata(instance, "synthetic_profiles")["dagster/row_count"]
    server = platform.query("SELECT current_setting('jit') AS jit, pg_jit_available() AS jit_available, "
                            "current_setting('random_page_cost') AS random_page_cost, "
                            "current_setting('server_version') AS version")
    note("server", {name: server[name][0].as_py() for name in server.column_names})
    run = {
        "generation": lambda: generation(n_profiles),
        "ingestion": lambda: ingestion(platform, source_folder()),
        "sql": lambda: feature_sql(platform, training_meta),
        "sql_variants": lambda: feature_sql_variants(platform, training_meta),
        "eda": lambda: eda(platform),
        "scoring_features": lambda: scoring_features(platform),
        "training": lambda: training(platform, storage),
        "scoring": lambda: scoring(platform, tracking),
        "audiences": lambda: audiences(platform),
        "incremental": lambda: incremental(platform),
        "openmp": lambda: openmp(platform, storage, openmp_busy),
    }
    for section in SECTIONS:  # in this order, whatever the order of --only
        if section in wanted:
            run[section]()


if __name__ == "__main__":
    sys.exit(main())
