"""Which profiles are held out of training, by a hash of the profile id alone.

A profile stays on its side in every retraining, so a champion is never evaluated on rows it was
trained on. The generator computes its ground truth (the oracle, the costliest part of generation)
only for held-out profiles: that is the only place the oracle is ever compared with a model.
"""

from __future__ import annotations

import numpy as np
import polars as pl

HOLDOUT_FRACTION = 0.25
_SEED = 20260101  # polars' hash is stable for the locked version


def is_held_out(ids: pl.Series, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the profiles in the held-out share; a smaller fraction selects a subset of a larger one.
    The hash spreads labels evenly, so the split is stratified in expectation."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    return (ids.hash(seed=_SEED).to_numpy() % 1_000_000) < fraction * 1_000_000
