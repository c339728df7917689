"""The ground truth: per user the realised labels and the oracle probability, the calibrated
P(form in the label window | the user's events before the cutoff) a model is measured against.

The oracle is a Monte Carlo expectation over the same process, `draws` draws per user, conditioned
on what is observable at the cutoff (`posterior`), computed chunk by chunk (`chunk`). Only the users
in scope are simulated, so its cost is linear in them.
"""

from __future__ import annotations

import numpy as np

from aep_assets.lib.synthetic.chunk import oracle_chunk
from aep_assets.lib.synthetic.event_types import KIDS
from aep_assets.lib.synthetic.posterior import Anchors, Past
from aep_assets.lib.synthetic.process import Clock, Simulation

ORACLE_DRAWS_PER_CHUNK = 1 << 13  # draws per chunk (about 3.8 units each after the splits: cache-sized)


def ground_truth(clock: Clock, sim: Simulation, draws: int, rng: np.random.Generator,
                 scope: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: form before the cutoff, form in the label window, and the oracle probability (nan
    where it is not defined or the user is outside `scope`, a per-user mask; None: everyone).
    Observed means strictly before the cutoff, as in the feature SQL: a form at the cutoff is a
    label, an event at the cutoff is not seen. Only the users in scope are simulated (the oracle's
    cost is linear in them); a user's value depends on which others are in scope only through the
    random stream, not in distribution."""
    conv = sim.conversion_us
    n = conv.size
    before = (conv >= 0) & (conv < clock.cutoff_us)
    in_horizon = (conv >= clock.cutoff_us) & (conv <= min(clock.cutoff_us + clock.horizon_us, clock.end_us))
    active = ~before if scope is None else ~before & scope
    oracle = np.full(n, np.nan)
    if draws > 0 and active.any():
        seen = (sim.time_us < clock.cutoff_us) & active[sim.user]
        oracle = oracle_probabilities(clock, n, draws, sim.user[seen], sim.code[seen], sim.time_us[seen],
                                      sim.level[seen], active, rng)
    return before, in_horizon, oracle


def oracle_probabilities(clock: Clock, n: int, draws: int, user, code, time_us, level, active: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """P(form in the label window | events before the cutoff) per user (nan where not active); all
    work is over the active users' events and units (user x draw x branch) only."""
    weeks = clock.weeks
    past = Past(clock, user, code, time_us, level, active)
    anchors = {p: Anchors(past, clock, p, kids, weeks) for p, kids in KIDS.items()}
    out = np.full(n, np.nan)
    per_chunk = max(1, ORACLE_DRAWS_PER_CHUNK // draws)
    for lo in range(0, past.n, per_chunk):
        ranks = np.arange(lo, min(lo + per_chunk, past.n))
        out[past.users[ranks]] = oracle_chunk(clock, weeks, draws, past, anchors, ranks, rng)
    return out
