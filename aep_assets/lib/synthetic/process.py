"""The customers' event process (the reference's generator, vectorised) and the propensity walk.

For n users the process draws per-type counts, then flat event arrays: base types uniform over the
timeline, each child type after one anchor event of its parent type chosen uniformly among the
user's parent events, page views replaced by those after an anchor email click where the user has
one. Events past the end are dropped; the propensity walks through each user's events in time
order, clipped to [0, 1]; after each drawing event a Bernoulli(p) draw, the first success adding a
form 60 s later. `walk` computes the clipped walk exactly on integers, without a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

from aep_assets.lib.synthetic import event_types
from aep_assets.lib.synthetic.config import SyntheticConfig
from aep_assets.lib.synthetic.event_types import ACL, DIS, DSP, ECL, IMP, INT, LC, OPEN, PRV, PUR, PV, SENT

US_PER_HOUR = 3_600_000_000
CONVERSION_DELAY_US = 60_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Clock:
    """The timeline in microseconds (integers, for exact comparisons) and hours since its start."""

    def __init__(self, config: SyntheticConfig):
        self.weeks = config.weeks
        self.start_epoch_us = (config.start - EPOCH) // timedelta(microseconds=1)
        self.end_us = config.weeks * 7 * 24 * US_PER_HOUR
        self.cutoff_us = self.end_us - round(config.cutoff_days_before_end * 24 * US_PER_HOUR)
        self.horizon_us = round(config.horizon_days * 24 * US_PER_HOUR)
        self.end_h = self.end_us / US_PER_HOUR
        self.cutoff_h = self.cutoff_us / US_PER_HOUR
        # last moment of a draw whose form still lands inside the label window and the timeline
        self.window_end_h = (min(self.cutoff_us + self.horizon_us, self.end_us) - CONVERSION_DELAY_US) / US_PER_HOUR


@dataclass
class Simulation:
    """A batch's simulated events and conversions, the process's whole outcome."""

    user: np.ndarray           # int32, events sorted by (user, time), target events excluded
    code: np.ndarray           # int8 event type code
    time_us: np.ndarray        # int64 microseconds since the timeline start
    campaign: np.ndarray       # int16 campaign week, -1 for none
    level: np.ndarray          # int64 propensity after the event, units of 0.001
    conversion_us: np.ndarray  # int64 per user: time of web.formFilledOut, -1 if none


class EventDraws:
    """The events of n users drawn type by type, in the reference's order, from one random stream:
    per type its code, owners, hours since the start and campaign week (None: no campaign)."""

    def __init__(self, n: int, weeks: int, end_h: float, rng: np.random.Generator):
        self.n, self.weeks, self.end_h, self.rng = n, weeks, end_h, rng
        self.users = np.arange(n, dtype=np.int32)
        self.parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def add(self, code: int, user: np.ndarray, hours: np.ndarray, campaign: np.ndarray | None = None) -> None:
        """One type's events, in the order the final sort sees them (ties keep it)."""
        self.parts.append((code, user, hours, campaign))

    def base(self, code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Poisson(rate x weeks) events per user, uniform over the timeline: counts, owners, hours."""
        k = self.rng.poisson(event_types.RATE[code] * self.weeks, self.n)
        return k, np.repeat(self.users, k), self.rng.uniform(0.0, self.end_h, int(k.sum()))

    def anchor(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The users with parent events (k per user) and, for each, one of them uniformly at random."""
        has = np.flatnonzero(k)
        starts = np.cumsum(k) - k
        return has, starts[has] + (self.rng.random(has.size) * k[has]).astype(np.int64)

    def children(self, code: int, has: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Poisson(rate x weeks) events per anchored user at anchor + Exponential(lag): counts, owners, hours."""
        kk = self.rng.poisson(event_types.RATE[code] * self.weeks, has.size)
        k = np.zeros(self.n, dtype=np.int64)
        k[has] = kk
        t = np.repeat(at, kk) + self.rng.exponential(event_types.LAG[code], int(kk.sum()))
        return k, np.repeat(has.astype(np.int32), kk), t

    def week(self, t: np.ndarray) -> np.ndarray:
        """The campaign week of events at hours t."""
        return np.minimum(t // 168.0, self.weeks - 1).astype(np.int16)


def draw_events(n: int, weeks: int, end_h: float, rng: np.random.Generator) -> EventDraws:
    """Every event type of n users, before the end is applied: advertising, the email chain, web."""
    draw = EventDraws(n, weeks, end_h, rng)
    k_imp, u_imp, t_imp = draw.base(IMP)
    k_sent, u_sent, t_sent = draw.base(SENT)
    base_views = draw.base(PV)
    c_imp, c_sent = draw.week(t_imp), draw.week(t_sent)
    draw.add(IMP, u_imp, t_imp, c_imp)
    draw.add(SENT, u_sent, t_sent, c_sent)
    has, pick = draw.anchor(k_imp)
    k, u, t = draw.children(ACL, has, t_imp[pick])
    draw.add(ACL, u, t, np.repeat(c_imp[pick], k[has]))
    k_ecl, t_ecl = _email_chain(draw, k_sent, t_sent, c_sent)
    k_pv, t_pv = _page_views(draw, base_views, k_ecl, t_ecl)
    _page_view_children(draw, k_pv, t_pv)
    return draw


def _email_chain(draw: EventDraws, k_sent: np.ndarray, t_sent: np.ndarray,
                 c_sent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Opens after an anchor send, clicks after an anchor open (campaign of the send); the clicks' counts, hours."""
    has, pick = draw.anchor(k_sent)
    k_open, u_open, t_open = draw.children(OPEN, has, t_sent[pick])
    c_open = np.repeat(c_sent[pick], k_open[has])
    draw.add(OPEN, u_open, t_open, c_open)
    has, pick = draw.anchor(k_open)
    k_ecl, u_ecl, t_ecl = draw.children(ECL, has, t_open[pick])
    draw.add(ECL, u_ecl, t_ecl, np.repeat(c_open[pick], k_ecl[has]))
    return k_ecl, t_ecl


def _page_views(draw: EventDraws, base_views: tuple[np.ndarray, np.ndarray, np.ndarray], k_ecl: np.ndarray,
                t_ecl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Page views: the base ones, replaced by those after an anchor click for users with a click."""
    k_pvb, u_pvb, t_pvb = base_views
    has, pick = draw.anchor(k_ecl)
    k_pvc, u_pvc, t_pvc = draw.children(PV, has, t_ecl[pick])
    clicked = k_ecl > 0
    keep = ~clicked[u_pvb]
    u_pv = np.concatenate([u_pvb[keep], u_pvc])
    order = np.argsort(u_pv, kind="stable")
    u_pv, t_pv = u_pv[order], np.concatenate([t_pvb[keep], t_pvc])[order]
    draw.add(PV, u_pv, t_pv)
    return np.where(clicked, k_pvc, k_pvb), t_pv


def _page_view_children(draw: EventDraws, k_pv: np.ndarray, t_pv: np.ndarray) -> None:
    """Link clicks, product and proposition views after an anchor page view; purchases after an anchor
    product view; interactions and dismissals after an anchor proposition display."""
    has, pick = draw.anchor(k_pv)
    at = t_pv[pick]
    _, u, t = draw.children(LC, has, at)
    draw.add(LC, u, t)
    k_prv, u, t_prv = draw.children(PRV, has, at)
    draw.add(PRV, u, t_prv)
    k_dsp, u, t_dsp = draw.children(DSP, has, at)
    draw.add(DSP, u, t_dsp)
    has, pick = draw.anchor(k_prv)
    _, u, t = draw.children(PUR, has, t_prv[pick])
    draw.add(PUR, u, t)
    has, pick = draw.anchor(k_dsp)
    at = t_dsp[pick]
    for code in (INT, DIS):
        _, u, t = draw.children(code, has, at)
        draw.add(code, u, t)


def _in_time_order(draw: EventDraws, clock: Clock) -> tuple[np.ndarray, ...]:
    """The drawn events up to the end, as flat (user, code, time_us, campaign) sorted by (user, time)."""
    parts = draw.parts
    user = np.concatenate([p[1] for p in parts])
    hours = np.concatenate([p[2] for p in parts])
    code = np.concatenate([np.full(p[1].size, p[0], dtype=np.int8) for p in parts])
    campaign = np.concatenate([p[3] if p[3] is not None else np.full(p[1].size, -1, np.int16) for p in parts])
    time_us = (hours * US_PER_HOUR).astype(np.int64)
    kept = time_us <= clock.end_us
    user, code, time_us, campaign = user[kept], code[kept], time_us[kept], campaign[kept]
    order = argsort_pairs(user, time_us, clock.end_us + 1)
    return user[order], code[order], time_us[order], campaign[order]


def simulate(n: int, weeks: int, clock: Clock, rng: np.random.Generator) -> Simulation:
    """The reference's process for n users, vectorised: counts per user, then flat event arrays, then
    the propensity walk and the conversion draws."""
    user, code, time_us, campaign = _in_time_order(draw_events(n, weeks, clock.end_h, rng), clock)
    first = np.ones(user.size, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    level = walk(first, np.full(user.size, event_types.P0, dtype=np.int64), event_types.DELTA[code])
    success = event_types.DRAWING[code] & (rng.random(user.size) * event_types.P1 < level)
    hits = np.flatnonzero(success)
    hits = hits[np.r_[True, user[hits][1:] != user[hits][:-1]]] if hits.size else hits
    conversion = np.full(n, -1, dtype=np.int64)
    conversion[user[hits]] = time_us[hits] + CONVERSION_DELAY_US
    conversion[conversion > clock.end_us] = -1
    return Simulation(user, code, time_us, campaign, level, conversion)


def argsort_pairs(major: np.ndarray, minor: np.ndarray, minor_bound: int) -> np.ndarray:
    """Order by (major, minor) for non-negative ints, via one int64 key when it fits."""
    if major.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (int(major.max()) + 1) * minor_bound < 2**62:
        return np.argsort(major.astype(np.int64) * minor_bound + minor)
    return np.lexsort((minor, major))


def walk(first: np.ndarray, start: np.ndarray, delta: np.ndarray, top: int = event_types.P1) -> np.ndarray:
    """x_i = min(top, max(0, x_{i-1} + delta_i)) within groups (first marks a group's first element,
    whose x_{i-1} is its start); int64 in, int64 out.

    A segmented cumulative sum; the clip at 0 by the Lindley identity x_n = S_n - min(0, min_k<=n S_k),
    its running minimum made per group by shifting each group's values below the previous groups';
    the groups that pass `top` (rare: about ten +0.1 events before a conversion) by `clamp_scan`."""
    if delta.size == 0:
        return delta.astype(np.int64)
    gid = np.cumsum(first) - 1
    total = np.cumsum(delta)
    before = (total - delta)[first]
    x = start + total - before[gid]
    if x.min() < 0:
        rows = _rows_of_groups(gid, x < 0)
        level, g = x[rows], gid[rows]
        shift = g * (int(level.max()) - int(level.min()) + 1)
        x[rows] = level - np.minimum(np.minimum.accumulate(level - shift) + shift, 0)
    over = x > top
    if over.any():
        rows = _rows_of_groups(gid, over)
        x[rows] = clamp_scan(first[rows], start[rows], delta[rows], 0, top)
    return x


def _rows_of_groups(gid: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """Every row of the groups with at least one hit row."""
    marked = np.zeros(gid[-1] + 1, dtype=bool)
    marked[gid[hit]] = True
    return np.flatnonzero(marked[gid])


def clamp_scan(first: np.ndarray, start: np.ndarray, delta: np.ndarray, low: int, top: int) -> np.ndarray:
    """The exact two-sided clipped walk as a segmented Hillis-Steele scan of maps
    x -> min(hi, max(lo, x + s)), which compose into maps of the same form."""
    n = delta.size
    s = delta.astype(np.int64).copy()
    lo = np.full(n, low, dtype=np.int64)
    hi = np.full(n, top, dtype=np.int64)
    index = np.arange(n)
    group_start = np.maximum.accumulate(np.where(first, index, 0))
    step = 1
    while step < n:
        m = index[step:][index[step:] - step >= group_start[step:]]
        if m.size == 0:
            break
        j = m - step
        sg, lg, hg = s[m], lo[m], hi[m]
        s[m] = s[j] + sg
        lo[m] = np.clip(lo[j] + sg, lg, hg)
        hi[m] = np.clip(hi[j] + sg, lg, hg)
        step *= 2
    return np.clip(start + s, lo, hi)
