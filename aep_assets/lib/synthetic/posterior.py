"""What the oracle conditions on: each open user's events before the cutoff, and per parent type the
posterior of the anchor that the user's children of that type hang from.

A past parent j explains the children seen with likelihood L_j = exp(-lambda q_j) x prod lambda f_j(x)
over its child types (0 if a child precedes it); a future parent explains them with likelihood 1 if
none was seen. A draw picks the anchor by these weights and is weighted by (1/n) sum_j L_j over its n
past and future parents; for the base types the number of future parents is drawn from its posterior
along with the anchor's category, so that weight is a per-user constant. A past anchor with no
children still to come has no further effect, so only the "active" ones (with children after the
cutoff) are drawn, from their posterior share.
"""

from __future__ import annotations

import math

import numpy as np

from aep_assets.lib.synthetic.event_types import DRAWING, LAG, NAMES, P0, P1, RATE
from aep_assets.lib.synthetic.process import CONVERSION_DELAY_US, US_PER_HOUR, Clock


class Past:
    """What is observable at the cutoff, per active user (indexed by rank among active users)."""

    def __init__(self, clock: Clock, user, code, time_us, level, active: np.ndarray):
        """`user`, `code`, `time_us`, `level`: the events before the cutoff of the active users only."""
        hours = time_us / US_PER_HOUR
        self.users = np.flatnonzero(active)
        rank_of = np.cumsum(active) - 1
        rank = rank_of[user]
        na = self.users.size
        self.n = na
        self.level = np.full(na, P0, dtype=np.int64)
        if rank.size:
            last = np.r_[rank[1:] != rank[:-1], True]
            self.level[rank[last]] = level[last]
        # draws in the last minute before the cutoff: their form, if any, lands after it
        pending = DRAWING[code] & (time_us >= clock.cutoff_us - CONVERSION_DELAY_US)
        self.pending_log = np.bincount(rank[pending], weights=np.log1p(-level[pending] / P1), minlength=na)
        self.count, self.total, self.earliest, self.rows = {}, {}, {}, {}
        for c in range(len(NAMES)):
            sel = code == c
            r, t = rank[sel], hours[sel]
            self.count[c] = np.bincount(r, minlength=na)
            self.total[c] = np.bincount(r, weights=t, minlength=na)
            earliest = np.full(na, np.inf)
            if r.size:
                head = np.r_[True, r[1:] != r[:-1]]
                earliest[r[head]] = t[head]
            self.earliest[c] = earliest
            self.rows[c] = (r, t)


class Anchors:
    """Posterior of the anchor of one parent type's children, per active user, from the past.

    Per past parent j: the likelihood L_j of the user's observed children had j been the anchor
    (exp(-lambda q) * prod lambda f(x) over child types; 0 if a child precedes j), and the
    expected number of its children still to come after the cutoff, m_j (per child type, inside
    the window and after it). Per user: lse = log sum_j L_j, and active = P(a past anchor has
    children to come | the anchor is past) = sum_j L_j (1 - exp(-m_j)) / sum_j L_j. A past anchor
    without children to come has no further effect, so only "active" ones are drawn, from
    cumulative probabilities offset by user rank (one searchsorted serves all users)."""

    def __init__(self, past: Past, clock: Clock, parent: int, kids: tuple[int, ...], weeks: int):
        rank, t = past.rows[parent]
        na = past.n
        log_l, rates, seen = _likelihoods(past, clock, rank, t, kids, weeks)
        self.t = t
        self.unseen = seen == 0
        self.count = past.count[parent]
        self.lse = np.full(na, -np.inf)
        self.active = np.zeros(na)
        self.mass = rates.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.split = np.cumsum(rates, axis=1)[:, :-1] / self.mass[:, None]
        self.active_cum = np.zeros(t.size)
        self.last = np.full(na, -1, dtype=np.int64)
        if t.size:
            self._sum_per_user(rank, log_l)
        self.past_mass = np.where(self.unseen, np.exp(self.lse), 0.0)

    def _sum_per_user(self, rank: np.ndarray, log_l: np.ndarray) -> None:
        """Per user, log sum_j L_j, the active share and the cumulative active probabilities of its parents."""
        size = log_l.size
        heads = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
        sizes = np.diff(np.r_[heads, size])
        owners = rank[heads]
        top = np.maximum.reduceat(log_l, heads)
        top = np.where(np.isfinite(top), top, 0.0)
        weight = np.exp(log_l - np.repeat(top, sizes))
        sums = np.add.reduceat(weight, heads)
        act = weight * -np.expm1(-self.mass)
        act_sums = np.add.reduceat(act, heads)
        cum = np.cumsum(act)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.lse[owners] = top + np.log(sums)
            self.active[owners] = np.where(sums > 0, act_sums / sums, 0.0)
            within = (cum - np.repeat((cum - act)[heads], sizes)) / np.repeat(act_sums, sizes)
        self.active_cum = rank + np.where(np.isfinite(within), within, 1.0)
        self.last[owners] = heads + sizes - 1


def _likelihoods(past: Past, clock: Clock, rank: np.ndarray, t: np.ndarray, kids: tuple[int, ...],
                 weeks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per past parent event: log L_j and its children's expected counts to come (per child type,
    inside the window and after it); per user the children seen."""
    c, w_end = clock.cutoff_h, clock.window_end_h
    log_l = np.zeros(t.size)
    earliest = np.full(past.n, np.inf)
    seen = np.zeros(past.n, dtype=np.int64)
    rates = np.zeros((t.size, 2 * len(kids)))
    for i, kid in enumerate(kids):
        lam, lag = RATE[kid] * weeks, LAG[kid]
        m = past.count[kid][rank]
        log_l += (lam * np.expm1(-(c - t) / lag) + m * (math.log(lam) - math.log(lag))
                  - (past.total[kid][rank] - m * t) / lag)
        earliest = np.minimum(earliest, past.earliest[kid])
        seen += past.count[kid]
        rates[:, 2 * i] = lam * np.exp(-(c - t) / lag) * -math.expm1(-(w_end - c) / lag)
        rates[:, 2 * i + 1] = lam * np.exp(-(w_end - t) / lag)
    log_l[t > earliest[rank]] = -np.inf
    return log_l, rates, seen
