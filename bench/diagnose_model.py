"""Diagnose the model stages: training (search, evaluation, importance), sklearn's threads, scoring.

Business purpose: where a training or a batch's scoring spends its time, and what the shared 2-core
machine's OpenMP behaviour costs the data scientist waiting for a model.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from diagnose_tools import clock, note


def training(platform, storage) -> None:
    """The training step by part on the home's export: read, search and refit, evaluation, importance."""
    import polars as pl
    from threadpoolctl import threadpool_limits

    from aep_assets.lib import modeling
    from aep_assets.lib.datasets import TRAINING_DATASET
    from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN
    from aep_assets.lib.holdout import is_held_out
    from aep_assets.resources.platform import export_parent

    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    seconds, frame = clock(lambda: modeling.in_profile_order(storage.read_frame(manifest)))
    note("training.read_export_s", seconds)
    seconds, model = clock(lambda: modeling.train(modeling.split(frame), modeling.TrainingSettings()))
    note("training.search_and_refit_s", {"total": seconds, "search": round(model.search_seconds, 3),
                                         "trials": [t["seconds"] for t in model.trials]})
    scores = model.estimator.predict_proba(model.x_test)[:, 1]
    note("training.evaluate_with_plots_s", clock(modeling.evaluate, model.y_test, scores)[0])
    note("training.permutation_importance_s", clock(modeling.importance, model)[0])
    with threadpool_limits(1):
        note("training.permutation_importance_one_thread_s", clock(modeling.importance, model)[0])
    train = pl.Series(~is_held_out(frame[ID_COLUMN]))
    x_train = modeling.matrix(frame.filter(train), model.features)
    y_train = frame[LABEL_COLUMN].filter(train).to_numpy().astype(np.int8)
    estimator = modeling.build_estimator("hist_gradient_boosting", model.params, 42)
    note("training.one_fit_default_threads_s", clock(estimator.fit, x_train, y_train)[0])
    with threadpool_limits(1):
        note("training.one_fit_one_thread_s", clock(estimator.fit, x_train, y_train)[0])


# A busy core that stops when its parent is gone: a diagnosis killed mid-section (a timeout) leaves no hog.
SPINNER = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"
OPENMP_PROBE = """
import sys, time
import numpy as np
from aep_assets.lib import modeling
data = np.load(sys.argv[1])
estimator = modeling.build_estimator("hist_gradient_boosting", eval(sys.argv[2]), 42)
started = time.perf_counter(); estimator.fit(data["x"], data["y"]); fit = time.perf_counter() - started
rows = data["x"][:5000]
started = time.perf_counter()
for _ in range(2 * rows.shape[1]):  # what permutation importance does: features x 2 repeats of predict_proba
    estimator.predict_proba(rows)
print(round(fit, 3), round(time.perf_counter() - started, 3))
"""


def openmp(platform, storage, busy_processes: tuple[int, ...] = (0, 1)) -> None:
    """sklearn's OpenMP threads on a shared 2-core machine, in fresh processes: libgomp's default wait
    policy (the product's), OMP_WAIT_POLICY=PASSIVE and one thread; alone, then beside one CPU-bound process
    of ours (a controlled stand-in for a colleague's job on the other core), or beside `busy_processes`."""
    import polars as pl

    from aep_assets.lib import modeling
    from aep_assets.lib.datasets import TRAINING_DATASET
    from aep_assets.lib.features import ID_COLUMN, LABEL_COLUMN, feature_columns
    from aep_assets.lib.holdout import is_held_out
    from aep_assets.resources.platform import export_parent

    manifest = storage.latest_complete(export_parent(platform.find_dataset_or_fail(TRAINING_DATASET)))
    frame = modeling.in_profile_order(storage.read_frame(manifest))
    train = frame.filter(pl.Series(~is_held_out(frame[ID_COLUMN])))
    params = {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20, "l2_regularization": 0.0}
    unset = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    with tempfile.TemporaryDirectory(prefix="diag-omp-") as tmp:
        path = Path(tmp) / "xy.npz"
        np.savez(path, x=modeling.matrix(train, feature_columns(train.columns)),
                 y=train[LABEL_COLUMN].to_numpy().astype(np.int8))
        for hogs in busy_processes:
            spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(hogs)]
            try:
                for name, extra in (("libgomp_default", {}),
                                    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
                                    ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"})):
                    out = subprocess.run([sys.executable, "-c", OPENMP_PROBE, str(path), repr(params)],
                                         env={**unset, **extra}, capture_output=True, text=True,
                                         check=True).stdout.split()
                    note(f"openmp.{hogs}_busy_process.{name}", {
                        "fit_s": float(out[0]), "importance_predicts_s": float(out[1]),
                        "load_1min": round(os.getloadavg()[0], 2)})
            finally:
                for spinner in spinners:
                    spinner.terminate()
                    spinner.wait()


def scoring(platform, tracking) -> None:
    """One batch's scoring by part: MLflow, the champion's load, the features' fetch, predict, histogram."""
    import polars as pl

    from aep_assets.lib import plots
    from aep_assets.lib.datasets import SCORING_DATASET
    from aep_assets.lib.sql import Identifier

    note("scoring.mlflow_activate_s", clock(tracking.activate)[0])
    note("scoring.champion_lookup_s", clock(tracking.champion_version)[0])
    seconds, champion = clock(tracking.load_champion)
    note("scoring.load_model_s", seconds)
    table = platform.find_dataset_or_fail(SCORING_DATASET).table
    key = platform.query(f'SELECT profile_batch FROM "{table}" LIMIT 1')["profile_batch"][0].as_py()
    seconds, frame = clock(lambda: pl.from_arrow(platform.query(platform.render(
        "scoring_features_of_batch", table=Identifier(table), profile_batch=key))))
    note("scoring.fetch_one_batch_s", seconds)
    # the champion picks its own feature columns, as the propensity_scores asset does
    note("scoring.predict_one_batch_s", clock(champion.predict, frame)[0])
    values = np.random.default_rng(0).random(frame.height)
    note("scoring.histogram_plot_s", clock(plots.histogram, values, "x", "y")[0])
