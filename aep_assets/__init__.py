"""aep_assets: Adobe Experience Platform's AI/ML enrichment workflow as Dagster assets."""

import os

# scikit-learn's OpenMP threads spin while they wait for work. On 2 cores shared with PostgreSQL and
# parallel runs, a spinning thread takes the core another process needs: a HistGradientBoosting fit
# beside one busy process took 17.1 s spinning and 10.7 s passive (bench/diagnose.py, openmp section;
# on an idle machine passive costs ~25%). Read once when the OpenMP runtime loads, so set it here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
