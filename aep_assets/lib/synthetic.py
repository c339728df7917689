"""Synthetic customers and their experience events: the outside source of the CMLE propensity workflow.

Business purpose: the workflow predicts which customers will fill out the subscription form
(`web.formFilledOut`) within two weeks. This module plays the customer base: profiles and ten weeks
of advertising, email, web, commerce and decisioning events, generated the way Adobe's CMLE
reference does, plus what no real system knows: each customer's true probability of converting in
the label window given what was observable at the cutoff, the ceiling a model is measured against.

The process follows the reference's generator (Adobe's CMLE Databricks notebooks, `SimulationHelpers`:
`create_data_for_n_users`), with its effective semantics, which are what give its 1.06M events per
100k users:

- Base types (`advertising.impressions`, `directMarketing.emailSent`, `web.webpagedetails.pageViews`):
  Poisson(rate x weeks) events per user, uniform over the timeline.
- Every other type has one parent type. If a user has parent events, ONE of them, uniformly at
  random, anchors all child types of that parent (the reference overwrites the child list in its
  loop over parent events and its lists are in random order, so the last parent event's children
  survive); each child type gets Poisson(rate x weeks) events at anchor + Exponential(mean lag).
  Anchors are chosen among all parent events, including those that land after the end.
- Page views are both: a user with any `directMarketing.emailClicked` has the base page views
  replaced by Poisson(rate x weeks) page views after an anchor click (the reference's
  `emailClicked -> pageViews` dependency overwrites the base list). So a user who clicked an email
  has all page views right after that click, and rarely converts later: a quirk of the reference
  that the ground truth knows and a model can learn.
- Events after the end of the timeline are dropped (the reference keeps them: not data yet).
- p starts at 0.001; events in time order add their delta, clipped to [0, 1]; after every event
  that is not `directMarketing.*` or `advertising.*` a Bernoulli(p) draw; the first success adds
  `web.formFilledOut` 60 s later (dropped if after the end) and ends the draws; other events go on.
  The "churn after 10 impressions or 5 emails" in the reference's text is not in its code, nor here.

p is kept in integer units of 0.001 (every delta is a multiple), so the walk is exact: a segmented
cumulative sum, the clip at 0 by the Lindley identity x_n = S_n - min(0, min_k<=n S_k) with a
running minimum made per user by shifting each user's values below the previous users'. The clip
at 1 needs about ten +0.1 events before a conversion; the rare users whose walk passes 1 are
recomputed by an exact segmented scan of clamp maps.

Identity: `userid` is 38 digits, two 19-digit halves: the FNV-1a 64 hash of the email (over its bytes,
vectorised per character position) and a keyed bijection of the user's number (batch, index in the
batch), which the email embeds. The second half makes ids unique across all batches of a seed by
construction, whatever the batch sizes (a batch landed later may use another `profiles`). Faker
fills pools of names and locale cities once (fixed Faker seed); numpy samples them. Every batch draws
from numpy streams spawned from (seed, batch), so any batch, including new ones past the initial K,
is generated alone and identically.

Ground truth: for each user without a form by the cutoff, `oracle_probability` is P(form in
(cutoff, cutoff + horizon] | the user's events up to the cutoff), by importance-weighted Monte Carlo
of this same process, `oracle_draws` draws per user, vectorised over users x draws; it reads only
the events up to the cutoff. The conditioning follows the process exactly: base events after the
cutoff are fresh Poisson events; for each parent type the anchor is drawn from its posterior given
the children seen (a past parent j with likelihood L_j = exp(-lambda q_j) * prod lambda f_j(x), or,
only if no child was seen, a future one), each draw weighted by the likelihood (1/n) sum_j L_j over
its n past and future parents; a past anchor's children still to come are drawn given that there are
some (zero-truncated Poisson of the remaining mass, then split by type and window); page views are
weighed between "base" and "children of a click" when clicks are uncertain. A draw's conversion
probability is exact given its events, 1 - prod(1 - p) over its draws in the window (no Bernoulli
noise); draws whose form would land after min(cutoff + horizon, end) do not count, draws in the last
60 s before the cutoff (form still to come) do. The only errors are Monte Carlo ones; the bias of the
weighted ratio (-2% of the mean at 32 draws) is removed by a delete-one jackknife over the draws (the
estimate clipped to [0, 1]); if all draws of a user had weight 0 (not seen) they count equally.
`oracle_draws=0` leaves it null.

Measured (seed 42, end 2025-06-01, 10 weeks, 14-day cutoff and horizon; this 2-core machine while
other jobs ran on it, load about 1.3, so timings vary by +-30% between runs). Process: 10.62 events
per user at 100k (10.60 at 1M; the reference: 1.06M per 100k), 14.7% of users convert over the ten
weeks (14.78% at 1M), 11.0% before the cutoff, 4.1% of the others inside the horizon. Oracle: mean
within 0.3 standard errors of the realised horizon rate on 266k open users, also within groups
(propensity at the cutoff, past click, activity in the last hour or day); AUC 0.773 to 0.776 (32
draws). Speed, whole process (`generate_batch` over the 10 batches, Faker pools included): 100k
profiles 0.8 to 1.0 s without the oracle (1.0M to 1.4M events/s), 2.1 to 2.3 s with it, peak RSS
245 MB; 1M profiles 7.4 to 8.5 s without the oracle (1.2M to 1.4M events/s), 20 to 25 s with it,
peak RSS 840 MB (two 100k-user batches alive at once). The oracle costs about 1.2 s per 100k users
at 32 draws, linear in `oracle_draws`. Both miss their targets (2M events/s; a few seconds of oracle
at 1M): string columns and sorts dominate the first, per-draw work over 32M user-draws the second.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pyarrow as pa

TARGET_EVENT = "web.formFilledOut"
BASE = "base"
PRODUCED_BY = "aep_assets.synthetic"


@dataclass(frozen=True)
class EventType:
    """One experience event type of the reference generator."""

    name: str
    rate_per_week: float
    delta: float
    lag_hours: float
    parents: tuple[str, ...]

    @property
    def draws(self) -> bool:
        """Whether a Bernoulli(p) conversion draw follows an event of this type."""
        return self.name != TARGET_EVENT and not self.name.startswith(("directMarketing.", "advertising."))


EVENT_TYPES: dict[str, EventType] = {
    e.name: e
    for e in (
        EventType("advertising.impressions", 0.1, 0.001, 0.0, (BASE,)),
        EventType("advertising.clicks", 0.01, 0.002, 0.5, ("advertising.impressions",)),
        EventType("web.webpagedetails.pageViews", 0.1, 0.005, 0.1, (BASE, "directMarketing.emailClicked")),
        EventType("web.webinteraction.linkClicks", 0.05, 0.005, 0.1, ("web.webpagedetails.pageViews",)),
        EventType("commerce.productViews", 0.05, 0.005, 0.2, ("web.webpagedetails.pageViews",)),
        EventType("commerce.purchases", 0.01, 0.1, 1.0, ("commerce.productViews",)),
        EventType("decisioning.propositionDisplay", 0.05, 0.005, 0.1, ("web.webpagedetails.pageViews",)),
        EventType("decisioning.propositionInteract", 0.01, 0.1, 0.05, ("decisioning.propositionDisplay",)),
        EventType("decisioning.propositionDismiss", 0.01, -0.2, 0.05, ("decisioning.propositionDisplay",)),
        EventType("directMarketing.emailSent", 0.5, 0.005, 0.0, (BASE,)),
        EventType("directMarketing.emailOpened", 0.2, 0.02, 24.0, ("directMarketing.emailSent",)),
        EventType("directMarketing.emailClicked", 0.05, 0.1, 0.5, ("directMarketing.emailOpened",)),
        EventType(TARGET_EVENT, 0.0, 0.0, 60.0 / 3600.0, ("conversion",)),
    )
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and timeline of a synthetic population (the reference: 100k users, 10 batches)."""

    profiles: int = 100_000
    batches: int = 10
    seed: int = 42
    end: datetime = field(kw_only=True)
    weeks: int = 10
    cutoff_days_before_end: float = 14.0
    horizon_days: float = 14.0
    oracle_draws: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.end, datetime) or self.end.utcoffset() is None:
            raise ValueError("end must be a timezone-aware datetime")
        object.__setattr__(self, "end", self.end.astimezone(timezone.utc))
        if self.profiles < 0 or self.batches < 1 or self.seed < 0 or self.oracle_draws < 0:
            raise ValueError("profiles, seed and oracle_draws must be >= 0 and batches >= 1")
        if self.weeks <= 0 or not 0 < self.cutoff_days_before_end < 7 * self.weeks:
            raise ValueError("need weeks > 0 and the cutoff strictly inside the timeline")
        if self.horizon_days * 86400 <= 60:
            raise ValueError("horizon_days must exceed one minute")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(weeks=self.weeks)

    @property
    def cutoff(self) -> datetime:
        return self.end - timedelta(days=self.cutoff_days_before_end)

    def batch_size(self, batch: int) -> int:
        """Users in a batch; batches past the initial K have the size of the largest initial one."""
        base, extra = divmod(self.profiles, self.batches)
        if batch < self.batches:
            return base + (batch < extra)
        return max(1, base + (extra > 0))



@dataclass
class SyntheticData:
    """Profiles, their events and the generator's ground truth (evaluation only, never ingested)."""

    profiles: pl.DataFrame
    events: pl.DataFrame
    truth: pl.DataFrame


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
    streams = np.random.SeedSequence(config.seed, spawn_key=(batch,)).spawn(3)
    profiles = _profiles(config, batch, n, np.random.default_rng(streams[0]))
    clock = _Clock(config)
    sim = _simulate(n, config.weeks, clock, np.random.default_rng(streams[1]))

    conv = sim.conversion_us
    before = (conv >= 0) & (conv <= clock.cutoff_us)
    in_horizon = (conv > clock.cutoff_us) & (conv <= min(clock.cutoff_us + clock.horizon_us, clock.end_us))
    oracle = np.full(n, np.nan)
    if config.oracle_draws > 0 and n > 0:
        past = sim.time_us <= clock.cutoff_us
        oracle = _oracle(
            clock, n, config.oracle_draws, sim.user[past], sim.code[past], sim.time_us[past], sim.level[past],
            ~before, np.random.default_rng(streams[2]),
        )
    batch_col = pl.Series("batch", np.full(n, batch, dtype=np.int32))
    truth = pl.DataFrame({
        "userid": profiles["userid"],
        "batch": batch_col,
        "converted_before_cutoff": before,
        "converted_in_horizon": in_horizon,
        "oracle_probability": pl.Series(np.where(before, np.nan, oracle)).fill_nan(None),
    })
    events = _event_frame(sim, profiles["userid"], batch, config.seed, clock)
    return SyntheticData(profiles=profiles, events=events, truth=truth)


# --- time ---------------------------------------------------------------------------------------

_US_PER_HOUR = 3_600_000_000
_CONVERSION_DELAY_US = 60_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Clock:
    """The timeline in microseconds (integers, for exact comparisons) and hours since its start."""

    def __init__(self, config: SyntheticConfig):
        self.weeks = config.weeks
        self.start_epoch_us = (config.start - _EPOCH) // timedelta(microseconds=1)
        self.end_us = config.weeks * 7 * 24 * _US_PER_HOUR
        self.cutoff_us = self.end_us - round(config.cutoff_days_before_end * 24 * _US_PER_HOUR)
        self.horizon_us = round(config.horizon_days * 24 * _US_PER_HOUR)
        self.end_h = self.end_us / _US_PER_HOUR
        self.cutoff_h = self.cutoff_us / _US_PER_HOUR
        # last moment of a draw whose form still lands inside the label window and the timeline
        self.window_end_h = (min(self.cutoff_us + self.horizon_us, self.end_us) - _CONVERSION_DELAY_US) / _US_PER_HOUR


# --- event type tables --------------------------------------------------------------------------

_NAMES = tuple(EVENT_TYPES)
_CODE = {name: i for i, name in enumerate(_NAMES)}
_IMP, _ACL, _PV, _LC, _PRV, _PUR, _DSP, _INT, _DIS, _SENT, _OPEN, _ECL, _FORM = (
    _CODE[n] for n in (
        "advertising.impressions", "advertising.clicks", "web.webpagedetails.pageViews",
        "web.webinteraction.linkClicks", "commerce.productViews", "commerce.purchases",
        "decisioning.propositionDisplay", "decisioning.propositionInteract", "decisioning.propositionDismiss",
        "directMarketing.emailSent", "directMarketing.emailOpened", "directMarketing.emailClicked", TARGET_EVENT,
    )
)
_P0 = 1                  # starting propensity, in units of 0.001
_P1 = 1000               # propensity 1
_DELTA = np.array([round(EVENT_TYPES[n].delta * _P1) for n in _NAMES], dtype=np.int64)
_DRAWS = np.array([EVENT_TYPES[n].draws for n in _NAMES])
_RATE = np.array([EVENT_TYPES[n].rate_per_week for n in _NAMES])
_LAG = np.array([EVENT_TYPES[n].lag_hours for n in _NAMES])
# children of each parent, in the reference's processing order (siblings share the anchor)
_KIDS = {_IMP: (_ACL,), _SENT: (_OPEN,), _OPEN: (_ECL,), _ECL: (_PV,), _PV: (_LC, _PRV, _DSP),
         _PRV: (_PUR,), _DSP: (_INT, _DIS)}

_PAGES = ("home", "pricing", "features", "plans", "blog", "docs", "offers", "support", "about", "contact",
          "product-basic", "product-plus", "product-pro", "checkout", "subscriptionForm")
_GENERAL_PAGES = 10
_PRODUCT_PAGES = (10, 13)
_URL_SLUG = {"subscriptionForm": "subscribe"}


# --- simulation ---------------------------------------------------------------------------------

@dataclass
class _Simulation:
    user: np.ndarray           # int32, events sorted by (user, time), target events excluded
    code: np.ndarray           # int8 event type code
    time_us: np.ndarray        # int64 microseconds since the timeline start
    campaign: np.ndarray       # int16 campaign week, -1 for none
    level: np.ndarray          # int64 propensity after the event, units of 0.001
    conversion_us: np.ndarray  # int64 per user: time of web.formFilledOut, -1 if none


def _simulate(n: int, weeks: int, clock: _Clock, rng: np.random.Generator) -> _Simulation:
    """The reference's process for n users, vectorised: counts per user, then flat event arrays."""
    end_h = clock.end_h
    users = np.arange(n, dtype=np.int32)
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]] = []  # (code, user, hours, campaign)

    def base(code: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = rng.poisson(_RATE[code] * weeks, n)
        return k, np.repeat(users, k), rng.uniform(0.0, end_h, int(k.sum()))

    def anchor(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        has = np.flatnonzero(k)
        starts = np.cumsum(k) - k
        return has, starts[has] + (rng.random(has.size) * k[has]).astype(np.int64)

    def children(code: int, has: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kk = rng.poisson(_RATE[code] * weeks, has.size)
        k = np.zeros(n, dtype=np.int64)
        k[has] = kk
        t = np.repeat(at, kk) + rng.exponential(_LAG[code], int(kk.sum()))
        return k, np.repeat(has.astype(np.int32), kk), t

    def week(t: np.ndarray) -> np.ndarray:
        return np.minimum(t // 168.0, weeks - 1).astype(np.int16)

    k_imp, u_imp, t_imp = base(_IMP)
    k_sent, u_sent, t_sent = base(_SENT)
    k_pvb, u_pvb, t_pvb = base(_PV)
    c_imp, c_sent = week(t_imp), week(t_sent)
    parts += [(_IMP, u_imp, t_imp, c_imp), (_SENT, u_sent, t_sent, c_sent)]

    has, pick = anchor(k_imp)
    k, u, t = children(_ACL, has, t_imp[pick])
    parts.append((_ACL, u, t, np.repeat(c_imp[pick], k[has])))

    has, pick = anchor(k_sent)
    k_open, u_open, t_open = children(_OPEN, has, t_sent[pick])
    c_open = np.repeat(c_sent[pick], k_open[has])
    parts.append((_OPEN, u_open, t_open, c_open))

    has, pick = anchor(k_open)
    k_ecl, u_ecl, t_ecl = children(_ECL, has, t_open[pick])
    parts.append((_ECL, u_ecl, t_ecl, np.repeat(c_open[pick], k_ecl[has])))

    has, pick = anchor(k_ecl)
    k_pvc, u_pvc, t_pvc = children(_PV, has, t_ecl[pick])
    clicked = k_ecl > 0
    keep = ~clicked[u_pvb]
    u_pv = np.concatenate([u_pvb[keep], u_pvc])
    order = np.argsort(u_pv, kind="stable")
    u_pv, t_pv = u_pv[order], np.concatenate([t_pvb[keep], t_pvc])[order]
    k_pv = np.where(clicked, k_pvc, k_pvb)
    parts.append((_PV, u_pv, t_pv, None))

    has, pick = anchor(k_pv)
    at = t_pv[pick]
    _, u, t = children(_LC, has, at)
    parts.append((_LC, u, t, None))
    k_prv, u, t_prv = children(_PRV, has, at)
    parts.append((_PRV, u, t_prv, None))
    k_dsp, u, t_dsp = children(_DSP, has, at)
    parts.append((_DSP, u, t_dsp, None))
    has, pick = anchor(k_prv)
    k, u, t = children(_PUR, has, t_prv[pick])
    parts.append((_PUR, u, t, None))
    has, pick = anchor(k_dsp)
    at = t_dsp[pick]
    for code in (_INT, _DIS):
        k, u, t = children(code, has, at)
        parts.append((code, u, t, None))

    user = np.concatenate([p[1] for p in parts])
    hours = np.concatenate([p[2] for p in parts])
    code = np.concatenate([np.full(p[1].size, p[0], dtype=np.int8) for p in parts])
    campaign = np.concatenate([p[3] if p[3] is not None else np.full(p[1].size, -1, np.int16) for p in parts])
    time_us = (hours * _US_PER_HOUR).astype(np.int64)
    kept = time_us <= clock.end_us
    user, code, time_us, campaign = user[kept], code[kept], time_us[kept], campaign[kept]
    order = _argsort_pairs(user, time_us, clock.end_us + 1)
    user, code, time_us, campaign = user[order], code[order], time_us[order], campaign[order]

    first = np.ones(user.size, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    level = _walk(first, np.full(user.size, _P0, dtype=np.int64), _DELTA[code])
    success = _DRAWS[code] & (rng.random(user.size) * _P1 < level)
    hits = np.flatnonzero(success)
    hits = hits[np.r_[True, user[hits][1:] != user[hits][:-1]]] if hits.size else hits
    conversion = np.full(n, -1, dtype=np.int64)
    conversion[user[hits]] = time_us[hits] + _CONVERSION_DELAY_US
    conversion[conversion > clock.end_us] = -1
    return _Simulation(user, code, time_us, campaign, level, conversion)


def _argsort_pairs(major: np.ndarray, minor: np.ndarray, minor_bound: int) -> np.ndarray:
    """Order by (major, minor) for non-negative ints, via one int64 key when it fits."""
    if major.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (int(major.max()) + 1) * minor_bound < 2**62:
        return np.argsort(major.astype(np.int64) * minor_bound + minor)
    return np.lexsort((minor, major))


def _walk(first: np.ndarray, start: np.ndarray, delta: np.ndarray, top: int = _P1) -> np.ndarray:
    """x_i = min(top, max(0, x_{i-1} + delta_i)) within groups (first marks a group's first element,
    whose x_{i-1} is its start); int64 in, int64 out."""
    if delta.size == 0:
        return delta.astype(np.int64)
    gid = np.cumsum(first) - 1
    total = np.cumsum(delta)
    before = (total - delta)[first]
    level = start + total - before[gid]
    span = int(level.max()) - int(min(level.min(), 0)) + 1
    shift = gid * span
    low = np.minimum.accumulate(level - shift) + shift
    x = level - np.minimum(low, 0)
    over = x > top
    if over.any():
        groups = np.unique(gid[over])
        rows = np.flatnonzero(np.isin(gid, groups))
        x[rows] = _clamp_scan(first[rows], start[rows], delta[rows], 0, top)
    return x


def _clamp_scan(first: np.ndarray, start: np.ndarray, delta: np.ndarray, low: int, top: int) -> np.ndarray:
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


# --- ground truth -------------------------------------------------------------------------------

_ORACLE_UNITS_PER_CHUNK = 1 << 15  # small enough for the chunk's arrays to stay in cache


class _Past:
    """What is observable at the cutoff, per active user (indexed by rank among active users)."""

    def __init__(self, clock: _Clock, n: int, user, code, time_us, level, active: np.ndarray):
        keep = active[user]
        user, code, level = user[keep], code[keep], level[keep]
        hours = time_us[keep] / _US_PER_HOUR
        self.users = np.flatnonzero(active)
        rank_of = np.cumsum(active) - 1
        rank = rank_of[user]
        na = self.users.size
        self.n = na
        self.level = np.full(na, _P0, dtype=np.int64)
        if rank.size:
            last = np.r_[rank[1:] != rank[:-1], True]
            self.level[rank[last]] = level[last]
        # draws in the last minute before the cutoff: their form, if any, lands after it
        pending = _DRAWS[code] & (time_us[keep] > clock.cutoff_us - _CONVERSION_DELAY_US)
        self.pending_log = np.bincount(rank[pending], weights=np.log1p(-level[pending] / _P1), minlength=na)
        self.count, self.total, self.earliest, self.rows = {}, {}, {}, {}
        for c in range(len(_NAMES)):
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


class _Anchors:
    """Posterior of the anchor of one parent type's children, per active user, from the past.

    Per past parent j: the likelihood L_j of the user's observed children had j been the anchor
    (exp(-lambda q) * prod lambda f(x) over child types; 0 if a child precedes j), and the
    expected number of its children still to come after the cutoff, m_j (per child type, inside
    the window and after it). Per user: lse = log sum_j L_j, and active = P(a past anchor has
    children to come | the anchor is past) = sum_j L_j (1 - exp(-m_j)) / sum_j L_j. A past anchor
    without children to come has no further effect, so only "active" ones are drawn, from
    cumulative probabilities offset by user rank (one searchsorted serves all users)."""

    def __init__(self, past: _Past, clock: _Clock, parent: int, kids: tuple[int, ...], weeks: int):
        rank, t = past.rows[parent]
        na = past.n
        c, w_end = clock.cutoff_h, clock.window_end_h
        log_l = np.zeros(t.size)
        earliest = np.full(na, np.inf)
        seen = np.zeros(na, dtype=np.int64)
        rates = np.zeros((t.size, 2 * len(kids)))
        for i, kid in enumerate(kids):
            lam, lag = _RATE[kid] * weeks, _LAG[kid]
            m = past.count[kid][rank]
            log_l += (lam * np.expm1(-(c - t) / lag) + m * (math.log(lam) - math.log(lag))
                      - (past.total[kid][rank] - m * t) / lag)
            earliest = np.minimum(earliest, past.earliest[kid])
            seen += past.count[kid]
            rates[:, 2 * i] = lam * np.exp(-(c - t) / lag) * -math.expm1(-(w_end - c) / lag)
            rates[:, 2 * i + 1] = lam * np.exp(-(w_end - t) / lag)
        log_l[t > earliest[rank]] = -np.inf
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
            heads = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
            sizes = np.diff(np.r_[heads, t.size])
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
        with np.errstate(divide="ignore", invalid="ignore"):
            self.past_mass = np.where(self.unseen, np.exp(self.lse), 0.0)
            self.const = np.where(self.count > 0, self.lse - np.log(np.maximum(self.count, 1)), 0.0)


def _oracle(clock: _Clock, n: int, draws: int, user, code, time_us, level, active: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """P(form in the label window | events up to the cutoff) per user (nan where not active)."""
    weeks = clock.weeks
    past = _Past(clock, n, user, code, time_us, level, active)
    anchors = {p: _Anchors(past, clock, p, kids, weeks) for p, kids in _KIDS.items()}
    out = np.full(n, np.nan)
    per_chunk = max(1, _ORACLE_UNITS_PER_CHUNK // draws)
    for lo in range(0, past.n, per_chunk):
        hi = min(lo + per_chunk, past.n)
        out[past.users[lo:hi]] = _oracle_chunk(clock, weeks, draws, past, anchors, lo, hi, rng)
    return out


def _poisson(rng: np.random.Generator, lam: np.ndarray, at_least_one: bool = False) -> np.ndarray:
    """Poisson counts (zero-truncated if asked) by inverse transform of one uniform each, drawing
    only where the rate is positive: most rates here are zero or tiny, settled by one comparison."""
    k = np.zeros(lam.size, dtype=np.int64)
    if lam.size == 0:
        return k
    idx = np.flatnonzero(lam > 0)
    li = lam[idx]
    ui = rng.random(idx.size)
    if at_least_one:
        k[idx] = 1
        pk = np.where(li < 700, li / np.expm1(np.minimum(li, 700)), 0.0)
        j = 1
    else:
        pk = np.exp(-li)
        j = 0
    cdf = pk.copy()
    while idx.size:
        more = (ui > cdf) & (pk > 0)
        idx, pk, cdf, ui, li = idx[more], pk[more], cdf[more], ui[more], li[more]
        j += 1
        k[idx] = j
        pk = pk * li / j
        cdf = cdf + pk
    return k


_LOG_COUNTS = np.log(np.maximum(np.arange(4096), 1))


def _log_count(n: np.ndarray) -> np.ndarray:
    """log n for counts n >= 1 (by table: counts are small)."""
    return _LOG_COUNTS[n] if n.size == 0 or n.max() < _LOG_COUNTS.size else np.log(np.maximum(n, 1))


def _poisson_flat(rng: np.random.Generator, lam: float, size: int) -> np.ndarray:
    """iid Poisson(lam) counts: Poisson(lam x size) points thrown uniformly into `size` bins."""
    return np.bincount(rng.integers(0, size, rng.poisson(lam * size)), minlength=size).astype(np.int64)


def _thin(rng: np.random.Generator, trials: np.ndarray, p: float) -> np.ndarray:
    """Binomial(trials, p) per element, as independent Bernoulli trials counted back."""
    rows = np.repeat(np.arange(trials.size), trials)
    return np.bincount(rows[rng.random(rows.size) < p], minlength=trials.size)


def _oracle_chunk(clock: _Clock, weeks: int, draws: int, past: _Past, anchors: dict[int, _Anchors],
                  lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """Users of ranks lo..hi-1, `draws` units (user x draw) each, unit u belonging to rank lo + u // draws."""
    c, w_end, end = clock.cutoff_h, clock.window_end_h, clock.end_h
    na = hi - lo
    units = na * draws
    local = np.repeat(np.arange(na), draws)
    log_w = np.zeros(units)
    base_share = (w_end - c) / (end - c)
    nf: dict[int, np.ndarray] = {}        # future events of a type (after the cutoff, any time)
    nin: dict[int, np.ndarray] = {}       # those inside the window (for base types: drawn late)
    law: dict[int, np.ndarray | None] = {}  # generating anchor of a type's future events (nan: base law)
    anchor_t: dict[int, np.ndarray] = {}  # anchor of a parent's children: nan none to come, inf after the window
    anchor_in: dict[int, np.ndarray] = {}  # that anchor is a future event inside the window

    def sample_times(kind: int, idx: np.ndarray) -> np.ndarray:
        """Times in (c, w_end] of future events of a type, for the given units."""
        u = rng.random(idx.size)
        a = law[kind][idx] if law[kind] is not None else np.full(idx.size, np.nan)
        times = c + u * (w_end - c)
        child = ~np.isnan(a)
        if child.any():
            ac, lag = a[child], _LAG[kind]
            low = np.maximum(c, ac) - ac
            mass = -np.expm1(-(w_end - ac - low) / lag)
            times[child] = ac + low - lag * np.log1p(-u[child] * mass)
        return np.minimum(np.maximum(times, np.nextafter(c, np.inf)), w_end)

    def share(kind: int, idx: np.ndarray) -> np.ndarray:
        """Chance that one future event of a type is inside the window (realised, for child types)."""
        if law[kind] is None:
            return np.full(idx.size, base_share)
        return nin[kind][idx] / np.maximum(nf[kind][idx], 1)

    def base(kind: int) -> None:
        nf[kind] = _poisson_flat(rng, _RATE[kind] * weeks / end * (end - c), units)
        law[kind] = None

    def step(parent: int) -> None:
        """Draw the anchor of the parent's children from its posterior, weight the draw by the
        likelihood of the observed children ((1/n) x sum over the n parents, past and future; the
        per-user constant part cancels in the normalisation and is left out), then draw the
        children still to come: Poisson, from a future anchor; for a past one, at least one
        (the anchor was drawn as "active"), split over child types, inside the window or after."""
        kids = _KIDS[parent]
        post = anchors[parent]
        f = nf[parent]
        pos = np.flatnonzero(f)
        g = lo + local[pos]
        fp = f[pos]
        count = post.count[g]
        with np.errstate(divide="ignore", invalid="ignore"):
            # a user who has seen children of the parent: the anchor is past, weight n_past / n
            # (none past, for page views seen without any click: impossible, weight 0)
            w = np.where(count > 0, _log_count(count) - _log_count(count + fp), -np.inf)
            # no children seen: any of the n parents may be the anchor, past ones weighted by L_j
            u = np.flatnonzero(post.unseen[g])
            pu, gu, fu = pos[u], g[u], fp[u].astype(np.float64)
            mass = post.past_mass[gu]
            w[u] = np.log((mass + fu) / (count[u] + fu)) - post.const[gu]
            p_future = fu / (mass + fu)
        log_w[pos] += w
        # one uniform per unit: future anchor, else (rescaled) an active past anchor and which one
        v = rng.random(units)
        vu = v[pu]
        is_fut = vu < p_future
        with np.errstate(divide="ignore", invalid="ignore"):
            v[pu] = np.where(is_fut, 2.0, (vu - p_future) / (1.0 - p_future))
        z = np.repeat(post.active[lo:hi], draws)
        act = np.flatnonzero(v < z)
        a = np.full(units, np.nan)
        inside = np.zeros(units, dtype=bool)
        fut = pu[is_fut]
        side = vu[is_fut] / p_future[is_fut] < share(parent, fut)
        beyond, win = fut[~side], fut[side]
        a[beyond] = np.inf
        a[win] = sample_times(parent, win)
        inside[win] = True
        anchor_t[parent], anchor_in[parent] = a, inside
        ga = lo + local[act]
        row = np.minimum(np.searchsorted(post.active_cum, ga + v[act] / z[act], side="right"), post.last[ga])
        a[act] = post.t[row]
        n_kids = _poisson(rng, post.mass[row], at_least_one=True)
        owner = np.repeat(np.arange(act.size), n_kids)
        cat = (rng.random(owner.size)[:, None] > post.split[row[owner]]).sum(axis=1)
        ncat = 2 * len(kids)
        split = np.bincount(owner * ncat + cat, minlength=act.size * ncat).reshape(act.size, ncat)
        # children of future anchors, all child types in one draw: (inside, after) per type from an
        # anchor inside the window, everything after it from one beyond
        lam = _RATE[list(kids)] * weeks
        stay = np.exp(-(w_end - a[win])[:, None] / _LAG[list(kids)])
        rates = np.concatenate([(lam * (1.0 - stay)).ravel(), (lam * stay).ravel(),
                                np.broadcast_to(lam, (beyond.size, len(kids))).ravel()])
        drawn = _poisson(rng, rates)
        n_win = win.size * len(kids)
        from_in = drawn[:n_win].reshape(win.size, len(kids))
        from_after = drawn[n_win: 2 * n_win].reshape(win.size, len(kids))
        from_beyond = drawn[2 * n_win:].reshape(beyond.size, len(kids))
        for i, kid in enumerate(kids):
            k_in = np.zeros(units, dtype=np.int64)
            k_all = np.zeros(units, dtype=np.int64)
            k_in[act] = split[:, 2 * i]
            k_all[act] = split[:, 2 * i] + split[:, 2 * i + 1]
            k_in[win] = from_in[:, i]
            k_all[win] = from_in[:, i] + from_after[:, i]
            k_all[beyond] = from_beyond[:, i]
            nin[kid], nf[kid], law[kid] = k_in, k_all, a

    # advertising: impressions, clicks after an anchor impression
    base(_IMP)
    step(_IMP)
    # email chain: sends, opens after an anchor send, clicks after an anchor open
    base(_SENT)
    step(_SENT)
    step(_OPEN)
    # page views: children of an anchor click if the user has any click at all, else the base process
    step(_ECL)
    on_base = np.flatnonzero(past.count[_ECL][lo:hi][local] + nf[_ECL] == 0)
    mu = _RATE[_PV] * weeks / end
    base_in = _poisson_flat(rng, mu * (w_end - c), on_base.size)
    nin[_PV][on_base] = base_in
    nf[_PV][on_base] = base_in + _poisson_flat(rng, mu * (end - w_end), on_base.size)
    log_w[on_base] += -mu * c + past.count[_PV][lo:hi][local[on_base]] * math.log(mu)
    # page view children, purchases after an anchor product view, interactions after an anchor display
    step(_PV)
    step(_PRV)
    step(_DSP)

    eligible = nin[_PV] + nin[_LC] + nin[_PRV] + nin[_PUR] + nin[_DSP] + nin[_INT] + nin[_DIS]
    rel = np.flatnonzero(eligible)
    sum_log = np.zeros(units)
    if rel.size:
        for kind in (_IMP, _SENT):
            # in-window count of a base type drawn only in total: the anchor (if a future one
            # inside) plus each other future event independently inside
            fixed = anchor_in[kind][rel].astype(np.int64)
            nin[kind] = np.zeros(units, dtype=np.int64)
            nin[kind][rel] = fixed + _thin(rng, np.maximum(nf[kind][rel] - fixed, 0), base_share)
        unit_parts, time_parts, code_parts = [], [], []
        for kind in (_IMP, _ACL, _SENT, _OPEN, _ECL, _PV, _LC, _PRV, _PUR, _DSP, _INT, _DIS):
            k = nin[kind][rel]
            rows = np.repeat(np.arange(rel.size), k)
            if rows.size == 0:
                continue
            times = sample_times(kind, rel[rows])
            if kind in anchor_in:
                has_anchor = anchor_in[kind][rel] & (k > 0)
                times[(np.cumsum(k) - k)[has_anchor]] = anchor_t[kind][rel[has_anchor]]
            unit_parts.append(rows)
            time_parts.append(times)
            code_parts.append(np.full(rows.size, kind, dtype=np.int8))
        r = np.concatenate(unit_parts)
        t = np.concatenate(time_parts)
        k = np.concatenate(code_parts)
        t_key = np.round((t - c) * _US_PER_HOUR).astype(np.int64)
        order = _argsort_pairs(r, t_key, int((w_end - c) * _US_PER_HOUR) + 2)
        r, k = r[order], k[order]
        first = np.r_[True, r[1:] != r[:-1]]
        x = _walk(first, past.level[lo + local[rel[r]]], _DELTA[k])
        d = _DRAWS[k]
        sum_log[rel] = np.bincount(r[d], weights=np.log1p(-x[d] / _P1), minlength=rel.size)
    prob = -np.expm1(np.repeat(past.pending_log[lo:hi], draws) + sum_log)

    log_w = log_w.reshape(na, draws)
    prob = prob.reshape(na, draws)
    top = log_w.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        w = np.exp(log_w - top)
    w[~np.isfinite(top[:, 0])] = 1.0
    sw = w.sum(axis=1)
    est = (w * prob).sum(axis=1) / sw
    if draws < 2:
        return est
    # the ratio of weighted sums is biased by O(1/draws) (about -2% of the mean at 32 draws);
    # the delete-one jackknife takes that to O(1/draws^2)
    swp = est * sw
    rest = sw[:, None] - w
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = (swp[:, None] - w * prob) / rest
    ok = (rest > 1e-9 * sw[:, None]).all(axis=1)
    jack = draws * est - (draws - 1) * np.where(ok[:, None], loo, 0.0).mean(axis=1)
    return np.where(ok, np.clip(jack, 0.0, 1.0), est)


# --- identities and frames ----------------------------------------------------------------------

_MASK63 = np.uint64((1 << 63) - 1)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_TEN19 = np.uint64(10**19)


def _mix63(x: np.ndarray, key: int) -> np.ndarray:
    """A keyed bijection of [0, 2^63): xor, odd multiplications and xorshifts, all invertible."""
    z = (x.astype(np.uint64) ^ np.uint64(key)) & _MASK63
    z ^= z >> np.uint64(31)
    z = (z * np.uint64(0xBF58476D1CE4E5B9)) & _MASK63
    z ^= z >> np.uint64(27)
    z = (z * np.uint64(0x94D049BB133111EB)) & _MASK63
    z ^= z >> np.uint64(31)
    return z


def _fnv1a64(strings: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, one numpy step per character position."""
    strings = strings.cast(pa.large_string())
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)
    offsets = offsets[strings.offset: strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)
    lengths = np.diff(offsets)
    h = np.full(len(strings), _FNV_OFFSET, dtype=np.uint64)
    idx = np.arange(len(strings))
    for pos in range(int(lengths.max()) if len(strings) else 0):
        idx = idx[lengths[idx] > pos]
        h[idx] = (h[idx] ^ data[offsets[idx] + pos]) * _FNV_PRIME
    return h


def _strings(chars: np.ndarray) -> pl.Series:
    """A string Series from an (n, width) uint8 matrix of ASCII characters, without Python rows."""
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int64) * width
    data = np.ascontiguousarray(chars)
    return pl.Series(pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)))


def _digits(values: np.ndarray, width: int = 19) -> np.ndarray:
    out = np.empty((values.size, width), dtype=np.uint8)
    v = values.astype(np.uint64)
    ten = np.uint64(10)
    for i in range(width - 1, -1, -1):
        out[:, i] = (v % ten).astype(np.uint8) + ord("0")
        v = v // ten
    return out


def _uuid_like(hi: np.ndarray, lo: np.ndarray) -> pl.Series:
    """8-4-4-4-12 hex strings of 128-bit values given as two uint64 halves."""
    n = hi.size
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = hi, lo
    octets = raw.view(np.uint8).reshape(n, 16)
    nibbles = np.empty((n, 16, 2), dtype=np.uint8)
    nibbles[:, :, 0] = octets >> 4
    nibbles[:, :, 1] = octets & 15
    chars = nibbles.reshape(n, 32) + np.uint8(ord("0"))
    chars += (chars > ord("9")) * np.uint8(ord("a") - ord("9") - 1)
    out = np.empty((n, 36), dtype=np.uint8)
    out[:, [8, 13, 18, 23]] = ord("-")
    for a, b, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        out[:, at: at + b - a] = chars[:, a:b]
    return _strings(out)


def _gather(pool: pl.Series, index: np.ndarray) -> pl.Series:
    """pool[index] as a Series, null where index < 0."""
    missing = index < 0
    positions = pa.array(np.where(missing, 0, index).astype(np.uint32), mask=missing if missing.any() else None)
    return pool.gather(pl.Series(positions))


def _keys(seed: int) -> tuple[int, int, int]:
    state = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    return int(state[0] & _MASK63), int(state[1] & _MASK63), int(state[2])


_COUNTRIES = (
    ("United States", "en_US", 30), ("United Kingdom", "en_GB", 10), ("Germany", "de_DE", 9),
    ("France", "fr_FR", 8), ("Canada", "en_CA", 6), ("Australia", "en_AU", 5), ("Spain", "es_ES", 5),
    ("Italy", "it_IT", 5), ("Netherlands", "nl_NL", 4), ("Brazil", "pt_BR", 6), ("India", "en_IN", 7),
    ("Japan", "ja_JP", 5),
)
# example.* domains are reserved (RFC 2606): a synthetic address can never reach a real person
_DOMAINS = ("example.com", "example.net", "example.org")


@functools.lru_cache(maxsize=1)
def _pools() -> dict[str, object]:
    """Faker value pools, made once with a fixed Faker seed."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(1729)
    first = [x for x in dict.fromkeys(fake.first_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    last = [x for x in dict.fromkeys(fake.last_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    cities, country_of_city, weights = [], [], []
    for i, (_, locale, weight) in enumerate(_COUNTRIES):
        local = Faker(locale)
        local.seed_instance(1729 + i)
        names = list(dict.fromkeys(local.city() for _ in range(200)))[:25]
        cities += names
        country_of_city += [i] * len(names)
        weights += [weight / len(names)] * len(names)
    p = np.array(weights)
    return {
        "first": pl.Series(first), "last": pl.Series(last), "domain": pl.Series(_DOMAINS),
        "city": pl.Series(cities), "country": pl.Series([c[0] for c in _COUNTRIES]),
        "country_of_city": np.array(country_of_city, dtype=np.uint32), "city_p": p / p.sum(),
    }


def _user_keys(batch: int, users: np.ndarray) -> np.ndarray:
    """A user's number among all batches of a seed, whatever their sizes: (batch, index in batch)."""
    return (np.int64(batch) << np.int64(32)) + users.astype(np.int64)


def _profiles(config: SyntheticConfig, batch: int, n: int, rng: np.random.Generator) -> pl.DataFrame:
    pools = _pools()
    local = np.arange(n, dtype=np.int64)
    fn = pools["first"].gather(pl.Series(rng.integers(0, len(pools["first"]), n), dtype=pl.UInt32))
    ln = pools["last"].gather(pl.Series(rng.integers(0, len(pools["last"]), n), dtype=pl.UInt32))
    dom = pools["domain"].gather(pl.Series(rng.integers(0, len(pools["domain"]), n), dtype=pl.UInt32))
    city_idx = rng.choice(len(pools["city"]), size=n, p=pools["city_p"]).astype(np.uint32)
    created = rng.uniform(0.0, 365.0 * 24 * _US_PER_HOUR, n).astype(np.int64)
    frame = pl.DataFrame({"first_name": fn, "last_name": ln, "domain": dom, "i": local})
    email = frame.select(pl.concat_str(
        pl.col("first_name").str.to_lowercase(), pl.lit("."), pl.col("last_name").str.to_lowercase(),
        pl.lit(f".{batch}."), pl.col("i").cast(pl.String), pl.lit("@"), pl.col("domain"),
    ).alias("email"))["email"]
    id_key, _, _ = _keys(config.seed)
    email_hash = _fnv1a64(email.rechunk().to_arrow()) % _TEN19
    halves = np.concatenate([_digits(email_hash), _digits(_mix63(_user_keys(batch, local), id_key))], axis=1)
    start_us = (config.start - _EPOCH) // timedelta(microseconds=1)
    return pl.DataFrame({
        "userid": _strings(halves),
        "email": email,
        "first_name": fn,
        "last_name": ln,
        "country": pools["country"].gather(pl.Series(pools["country_of_city"][city_idx])),
        "city": pools["city"].gather(pl.Series(city_idx)),
        "created_at": pl.Series(start_us - 1 - created).cast(pl.Datetime("us", "UTC")),
        "batch": pl.Series(np.full(n, batch, dtype=np.int32)),
    })


def _event_frame(sim: _Simulation, userids: pl.Series, batch: int, seed: int, clock: _Clock) -> pl.DataFrame:
    """Events plus conversions, ordered by time, with ids, pages and campaigns."""
    n_users = userids.len()
    conv_users = np.flatnonzero(sim.conversion_us >= 0).astype(np.int32)
    n_ev = sim.user.size
    heads = np.r_[True, sim.user[1:] != sim.user[:-1]] if n_ev else np.zeros(0, dtype=bool)
    starts = np.maximum.accumulate(np.where(heads, np.arange(n_ev), 0)) if n_ev else np.zeros(0, np.int64)
    per_user = np.bincount(sim.user, minlength=n_users)
    user = np.concatenate([sim.user, conv_users])
    code = np.concatenate([sim.code, np.full(conv_users.size, _FORM, dtype=np.int8)])
    time_us = np.concatenate([sim.time_us, sim.conversion_us[conv_users]])
    campaign = np.concatenate([sim.campaign, np.full(conv_users.size, -1, dtype=np.int16)])
    seq = np.concatenate([np.arange(n_ev) - starts, per_user[conv_users]]).astype(np.int64)
    order = _argsort_pairs(time_us, user, max(n_users, 1))
    user, code, time_us, campaign, seq = user[order], code[order], time_us[order], campaign[order], seq[order]

    _, event_key, mix_key = _keys(seed)
    hi = _mix63(_user_keys(batch, user), event_key)
    lo = seq.astype(np.uint64) ^ hi
    lo ^= lo >> np.uint64(33)
    lo *= np.uint64(0xFF51AFD7ED558CCD)
    lo ^= lo >> np.uint64(33)
    lo ^= np.uint64(mix_key)

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(batch, 3)))
    page = np.full(code.size, -1, dtype=np.int64)
    general = np.isin(code, (_PV, _LC, _DSP, _INT, _DIS))
    page[general] = rng.integers(0, _GENERAL_PAGES, int(general.sum()))
    product = code == _PRV
    page[product] = rng.integers(*_PRODUCT_PAGES, int(product.sum()))
    page[code == _PUR] = _PAGES.index("checkout")
    page[code == _FORM] = _PAGES.index("subscriptionForm")
    names = pl.Series(_PAGES)
    urls = pl.Series([f"https://www.example.com/{_URL_SLUG.get(p, p)}" for p in _PAGES])

    weeks = clock.weeks
    campaigns = pl.Series([f"email-w{w:02d}" for w in range(weeks)] + [f"display-w{w:02d}" for w in range(weeks)])
    is_ad = (code == _IMP) | (code == _ACL)
    camp = np.where(campaign >= 0, campaign.astype(np.int64) + np.where(is_ad, weeks, 0), -1)

    return pl.DataFrame({
        "event_id": _uuid_like(hi, lo),
        "userid": userids.gather(pl.Series(user.astype(np.uint32))),
        "event_type": pl.Series(_NAMES).gather(pl.Series(code.astype(np.uint32))),
        "timestamp": pl.Series(clock.start_epoch_us + time_us).cast(pl.Datetime("us", "UTC")),
        "produced_by": pl.repeat(PRODUCED_BY, code.size, eager=True),
        "page_name": _gather(names, page),
        "page_url": _gather(urls, page),
        "campaign_id": _gather(campaigns, camp),
        "batch": pl.Series(np.full(code.size, batch, dtype=np.int32)),
    })
