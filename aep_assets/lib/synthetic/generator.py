"""A synthetic population batch by batch: profiles, their events and the ground truth, each from its
own random stream spawned from (seed, batch), so any batch is generated alone and identically."""

from __future__ import annotations

import numpy as np
import polars as pl

from aep_assets.lib.holdout import is_held_out
from aep_assets.lib.synthetic.config import SyntheticConfig, SyntheticData
from aep_assets.lib.synthetic.events import event_frame
from aep_assets.lib.synthetic.oracle import ground_truth
from aep_assets.lib.synthetic.process import Clock, simulate
from aep_assets.lib.synthetic.profiles import profile_frame


def generate(config: SyntheticConfig) -> SyntheticData:
    """All K initial batches, concatenated in batch order."""
    parts = [generate_batch(config, b) for b in range(config.batches)]
    return SyntheticData(
        profiles=pl.concat([p.profiles for p in parts]),
        events=pl.concat([p.events for p in parts]),
        truth=pl.concat([p.truth for p in parts]),
    )


def generate_batch(config: SyntheticConfig, batch: int) -> SyntheticData:
    """One batch's users, events and ground truth; batch >= K gives fresh users beyond the initial ones."""
    if not 0 <= batch < 2**31:
        raise ValueError("batch must be in [0, 2^31)")
    n = config.batch_size(batch)
    profile_stream, process_stream, oracle_stream = streams(config, batch)
    profiles = profile_frame(config, batch, n, np.random.default_rng(profile_stream))
    clock = Clock(config)
    sim = simulate(n, config.weeks, clock, np.random.default_rng(process_stream))
    # the oracle only serves the oracle AUC on training's held-out profiles: computed for those only
    scope = is_held_out(profiles["userid"], config.oracle_fraction)
    before, in_horizon, oracle = ground_truth(clock, sim, config.oracle_draws, np.random.default_rng(oracle_stream),
                                              scope)
    truth = pl.DataFrame({
        "userid": profiles["userid"],
        "batch": pl.Series("batch", np.full(n, batch, dtype=np.int32)),
        "converted_before_cutoff": before,
        "converted_in_horizon": in_horizon,
        "oracle_probability": pl.Series(oracle).fill_nan(None),
    })
    events = event_frame(sim, profiles["userid"], batch, config.seed, clock)
    return SyntheticData(profiles=profiles, events=events, truth=truth)


def streams(config: SyntheticConfig, batch: int) -> list[np.random.SeedSequence]:
    """A batch's random streams: profiles, process, oracle."""
    return np.random.SeedSequence(config.seed, spawn_key=(batch,)).spawn(3)
