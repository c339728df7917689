"""The sensor-launched rescore of one profile batch, timed in fresh Python processes.

Business purpose: the Dagster daemon launches each run in its own process, so a new 10k-profile batch
waits for Python, Dagster, the code location and the model to load before any scoring starts (issue
19: 4 s or less in all). `bench/run.py` times this once at the end of `make bench`; this script times
it on a home that already exists, as often as asked, and says where each process's time went.

    AEP_ASSETS_HOME=/tmp/rh python bench/cold_rescore.py [--land 10000] [--repeat 3]

The home must have run `python -m aep_assets.main` (a champion in the registry, batches landed);
`--land N` first lands a new N-profile batch with `simulate_profile_batch_job`, as `bench/run.py`
does, otherwise the newest profile batch is rescored. Output: one line per process (wall seconds and
its phases), then a JSON line with min and median.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# What the daemon's run process does, minus its own bookkeeping; prints its phases as the last line.
COLD_RESCORE = """
import json, sys, time
started = time.perf_counter()
import dagster as dg
imported_dagster = time.perf_counter()
from aep_assets.definitions import build_definitions
imported_code = time.perf_counter()
with dg.DagsterInstance.get() as instance:
    job = build_definitions().resolve_job_def("rescore_profile_batch_job")
    built = time.perf_counter()
    job.execute_in_process(instance=instance, partition_key=sys.argv[1], raise_on_error=True)
    executed = time.perf_counter()
print(json.dumps({"import_dagster_s": imported_dagster - started, "import_code_s": imported_code - imported_dagster,
                  "instance_and_definitions_s": built - imported_code, "run_s": executed - built}))
"""


def rescore_in_fresh_process(partition_key: str) -> dict:
    """Wall seconds of one fresh-process rescore of `partition_key`, with the phases it reports and its CPU
    seconds (steadier than wall time on a shared machine)."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", COLD_RESCORE, partition_key], env=os.environ, check=True,
                               capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    phases = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "cpu_s": cpu, **phases, "interpreter_and_exit_s": wall - sum(phases.values())}


def land_batch(profiles: int) -> str:
    """A new profile batch landed as an outside source would, registered as a partition; its key."""
    import dagster as dg

    from aep_assets.definitions import build_definitions
    from aep_assets.defs.partitions import profile_batches
    from aep_assets.lib.datasets import PROFILES

    defs = build_definitions()
    with dg.DagsterInstance.get() as instance:
        defs.resolve_job_def("simulate_profile_batch_job").execute_in_process(
            instance=instance, run_config={"ops": {"land_profile_batch": {"config": {"profiles": profiles}}}},
            raise_on_error=True)
        platform = defs.resources["platform"]
        key = platform.completed_batches(platform.find_dataset(PROFILES.name))[-1].id
        instance.add_dynamic_partitions(profile_batches.name, [key])
    return key


def newest_batch() -> str:
    from aep_assets.definitions import build_definitions
    from aep_assets.lib.datasets import PROFILES

    platform = build_definitions().resources["platform"]
    return platform.completed_batches(platform.find_dataset(PROFILES.name))[-1].id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--land", type=int, default=0, help="first land a new batch of this many profiles")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    from aep_assets.main import prepare_dagster_home

    prepare_dagster_home()  # DAGSTER_HOME defaults to $AEP_ASSETS_HOME/dagster, as for `make run`
    key = land_batch(args.land) if args.land else newest_batch()
    runs = []
    for _ in range(args.repeat):
        runs.append(rescore_in_fresh_process(key))
        print("  ".join(f"{name} {value:.2f}" for name, value in runs[-1].items()), flush=True)
    walls, cpus = [r["wall_s"] for r in runs], [r["cpu_s"] for r in runs]
    print(json.dumps({"partition_key": key, "min_s": min(walls), "median_s": statistics.median(walls),
                      "min_cpu_s": min(cpus), "median_cpu_s": statistics.median(cpus),
                      "runs": runs, "load_average": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
