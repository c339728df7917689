"""Which profiles are held out of training, by a hash of the profile id alone.

A profile stays on its side in every retraining, so a champion is never evaluated on rows it was
trained on. The generator computes its ground truth (the oracle, the costliest part of generation)
only for held-out profiles: that is the only place the oracle is ever compared with a model.

The hash is defined here by its algorithm, not by a library: the same id lands on the same side with
any numpy, polars or Python release, so an upgrade never moves profiles between training and test.
It is FNV-1a 64 over HOLDOUT_KEY followed by the id's UTF-8 bytes, then SplitMix64's finaliser (FNV-1a
alone leaves the low digits of similar ids correlated); a profile's bucket is that value modulo 1,000,000.
It runs vectorised over byte positions with numpy's wrapping uint64 arithmetic, never a Python step per id,
so it keeps up with a whole training table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from aep_assets.lib.hashing import fnv1a64

HOLDOUT_FRACTION = 0.25
# Hashed ahead of every id, so this split shares nothing with other uses of FNV-1a (the synthetic ids).
HOLDOUT_KEY = b"aep_assets.holdout:"
BUCKETS = 1_000_000

KEYED_STATE = int(fnv1a64(pa.array([HOLDOUT_KEY.decode()]))[0])  # the key's hash, continued per id


def splitmix64_finalise(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: every input bit moves about half of the output bits."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_fnv1a64(ids: pl.Series) -> np.ndarray:
    """FNV-1a 64 of HOLDOUT_KEY + each id's UTF-8 bytes (a null id hashes as the empty string)."""
    return fnv1a64(ids.cast(pl.String).rechunk().to_arrow(), state=KEYED_STATE)


def holdout_hash(ids: pl.Series) -> np.ndarray:
    """The split's 64-bit hash of each profile id (uint64): SplitMix64's finaliser of the keyed FNV-1a 64."""
    return splitmix64_finalise(keyed_fnv1a64(ids))


def is_held_out(ids: pl.Series, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the profiles in the held-out share; a smaller fraction selects a subset of a larger one.
    The hash spreads labels evenly, so the split is stratified in expectation."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction}")
    return holdout_hash(ids) % np.uint64(BUCKETS) < fraction * BUCKETS
