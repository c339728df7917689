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
fills pools of names and locale cities once (fixed Faker seed, pools in a fixed order, so the same in
every process); numpy samples them. Every batch draws
from numpy streams spawned from (seed, batch), so any batch, including new ones past the initial K,
is generated alone and identically. A batch's events come sorted by (userid, time), see `_event_frame`.

Ground truth: for each user without a form before the cutoff and among the held-out profiles
(`holdout.is_held_out` of the userid at `oracle_fraction`, by default training's HOLDOUT_FRACTION:
the only users the oracle is ever compared with a model on; 1.0: every user without a form),
`oracle_probability` is P(form in [cutoff, cutoff + horizon] | the user's events strictly before the
cutoff), the features' point in time (a form at the cutoff is a label, an event at it is not seen);
null for the others. Only the users in scope are simulated: the cost scales with `oracle_fraction`.
It is a Monte Carlo expectation over this same process, `oracle_draws` draws per user, vectorised
over users x draws, reading only the events before the cutoff, and exact in expectation. The
conditioning follows the process: per
parent type the anchor's posterior given the children seen (a past parent j with likelihood
L_j = exp(-lambda q_j) * prod lambda f_j(x), a future one with 1 if no child was seen), a draw
weighted by the likelihood (1/n) sum_j L_j over its n past and future parents; for the base types
the number of future parents is drawn from its posterior along with the anchor's category, so that
weight is constant; page views are weighed between "base" and "children of a click". A draw's
conversion probability is exact given its events, 1 - prod(1 - p) over its Bernoulli draws in the
window; draws whose form would land after min(cutoff + horizon, end) do not count, draws in the last
60 s before the cutoff (form still to come) do. `oracle_draws=0` leaves it null.

The variance of the oracle: plain draws from the prior are mostly indicator noise (most have no
event that can convert in the window, a few, with a click in the window, carry much of the mean).
So (1) a draw splits into branches at the binary events that decide whether anything can convert,
keeping both outcomes, each weighted by its exact probability (a conditional expectation instead of
a sample): the anchor has children to come or not, and then future inside the window or active past
(every parent type but impressions; sends and opens only where a click can still come); opens
inside the window after a future send, or none (same users); clicks after a future anchor open, or
none; page views inside the window (base, or after a click), or none; children inside the window of
a future anchor page view, or none (after a click); branches only where both outcomes have at least
5% chance, counts inside a branch zero-truncated. (2) Every other choice of a draw (categories,
counts, anchor times) uses a uniform stratified over the user's draws: a Latin hypercube, a random
permutation of the draws per call and a random shift per user, so strata are independent across
calls and users. (3) The branch weights add up to the draw's weight and the remaining weights vary
little, so the plain ratio of weighted sums is used (a delete-one jackknife over-corrects stratified
draws).

Measured event rates, the oracle's accuracy and the generator's cost: docs/performance.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pyarrow as pa

from aep_assets.lib.holdout import HOLDOUT_FRACTION, is_held_out

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
    oracle_draws: int = 12
    oracle_fraction: float = HOLDOUT_FRACTION  # share of users (held-out ones) with an oracle

    def __post_init__(self) -> None:
        if not isinstance(self.end, datetime) or self.end.utcoffset() is None:
            raise ValueError("end must be a timezone-aware datetime")
        object.__setattr__(self, "end", self.end.astimezone(timezone.utc))
        if self.profiles < 0 or self.batches < 1 or self.seed < 0 or self.oracle_draws < 0:
            raise ValueError("profiles, seed and oracle_draws must be >= 0 and batches >= 1")
        if self.profiles < self.batches:
            raise ValueError(f"{self.profiles} profiles cannot fill {self.batches} batches: every batch needs "
                             "at least one profile")
        if not 0.0 <= self.oracle_fraction <= 1.0:
            raise ValueError(f"oracle_fraction must be in [0, 1], got {self.oracle_fraction}")
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
    streams = _streams(config, batch)
    profiles = _profiles(config, batch, n, np.random.default_rng(streams[0]))
    clock = _Clock(config)
    sim = _simulate(n, config.weeks, clock, np.random.default_rng(streams[1]))
    # the oracle only serves the oracle AUC on training's held-out profiles: computed for those only
    scope = is_held_out(profiles["userid"], config.oracle_fraction)
    before, in_horizon, oracle = _ground_truth(clock, sim, config.oracle_draws, np.random.default_rng(streams[2]),
                                               scope)
    truth = pl.DataFrame({
        "userid": profiles["userid"],
        "batch": pl.Series("batch", np.full(n, batch, dtype=np.int32)),
        "converted_before_cutoff": before,
        "converted_in_horizon": in_horizon,
        "oracle_probability": pl.Series(oracle).fill_nan(None),
    })
    events = _event_frame(sim, profiles["userid"], batch, config.seed, clock)
    return SyntheticData(profiles=profiles, events=events, truth=truth)


def _streams(config: SyntheticConfig, batch: int) -> list[np.random.SeedSequence]:
    """A batch's random streams: profiles, process, oracle."""
    return np.random.SeedSequence(config.seed, spawn_key=(batch,)).spawn(3)


def _ground_truth(clock: _Clock, sim: _Simulation, draws: int, rng: np.random.Generator,
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
        oracle = _oracle(clock, n, draws, sim.user[seen], sim.code[seen], sim.time_us[seen], sim.level[seen],
                         active, rng)
    return before, in_horizon, oracle


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
_PARENT = {kid: parent for parent, kids in _KIDS.items() for kid in kids}

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
    x = start + total - before[gid]
    if x.min() < 0:
        # the clip at 0, only in the groups that go below it
        marked = np.zeros(gid[-1] + 1, dtype=bool)
        marked[gid[x < 0]] = True
        rows = np.flatnonzero(marked[gid])
        level, g = x[rows], gid[rows]
        shift = g * (int(level.max()) - int(level.min()) + 1)
        x[rows] = level - np.minimum(np.minimum.accumulate(level - shift) + shift, 0)
    over = x > top
    if over.any():
        marked = np.zeros(gid[-1] + 1, dtype=bool)
        marked[gid[over]] = True
        rows = np.flatnonzero(marked[gid])
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

_ORACLE_DRAWS_PER_CHUNK = 1 << 13  # draws per chunk (about 3.8 units each after the splits: cache-sized)
_SPLIT_MIN = 0.05  # a binary event splits a unit in two when its rarer outcome has at least this chance


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
        pending = _DRAWS[code] & (time_us[keep] >= clock.cutoff_us - _CONVERSION_DELAY_US)
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
        self.past_mass = np.where(self.unseen, np.exp(self.lse), 0.0)


def _oracle(clock: _Clock, n: int, draws: int, user, code, time_us, level, active: np.ndarray,
            rng: np.random.Generator) -> np.ndarray:
    """P(form in the label window | events before the cutoff) per user (nan where not active); all
    work is over the active users' events and units (user x draw x branch) only."""
    weeks = clock.weeks
    past = _Past(clock, n, user, code, time_us, level, active)
    anchors = {p: _Anchors(past, clock, p, kids, weeks) for p, kids in _KIDS.items()}
    out = np.full(n, np.nan)
    per_chunk = max(1, _ORACLE_DRAWS_PER_CHUNK // draws)
    for lo in range(0, past.n, per_chunk):
        ranks = np.arange(lo, min(lo + per_chunk, past.n))
        out[past.users[ranks]] = _oracle_chunk(clock, weeks, draws, past, anchors, ranks, rng)
    return out


def _poisson(rng: np.random.Generator, lam: np.ndarray, at_least_one: bool = False,
             u: np.ndarray | None = None) -> np.ndarray:
    """Poisson counts (zero-truncated if asked) by inverse transform of one uniform each (u if
    given): a few passes over all rates (most are small), then the rare long tails alone."""
    u = rng.random(lam.size) if u is None else u
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        pk = np.where(lam < 700, lam / np.expm1(lam), 0.0) if at_least_one else np.exp(-lam)
    j = 1 if at_least_one else 0
    k = np.full(lam.size, j, dtype=np.int64)
    cdf = pk.copy()
    for _ in range(3):
        more = u > cdf
        if not more.any():
            return k
        k += more
        j += 1
        pk = pk * lam / j
        cdf += pk
    idx = np.flatnonzero((u > cdf) & (pk > 0))
    pk, cdf, ui, li = pk[idx], cdf[idx], u[idx], lam[idx]
    while idx.size:
        k[idx] += 1
        j += 1
        pk = pk * li / j
        cdf = cdf + pk
        more = (ui > cdf) & (pk > 0)
        idx, pk, cdf, ui, li = idx[more], pk[more], cdf[more], ui[more], li[more]
    return k


def _poisson_flat(rng: np.random.Generator, lam: float, size: int) -> np.ndarray:
    """iid Poisson(lam) counts: Poisson(lam x size) points thrown uniformly into `size` bins."""
    return np.bincount(rng.integers(0, size, rng.poisson(lam * size)), minlength=size).astype(np.int64)


def _thin(rng: np.random.Generator, trials: np.ndarray, p: float) -> np.ndarray:
    """Binomial(trials, p) per element, as independent Bernoulli trials counted back."""
    rows = np.repeat(np.arange(trials.size), trials)
    return np.bincount(rows[rng.random(rows.size) < p], minlength=trials.size)


def _stacked_cdf(mass: np.ndarray) -> np.ndarray:
    """Cumulative distributions of the rows of `mass`, row r offset by r and flattened: one
    searchsorted of r + u draws from row r (rows without mass: any value, kept ascending)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.cumsum(mass, axis=1) / mass.sum(axis=1, keepdims=True)
    cdf = np.clip(np.nan_to_num(cdf, nan=1.0), 0.0, 1.0)
    cdf[:, -1] = 1.0
    return (cdf + np.arange(mass.shape[0])[:, None]).ravel()


class _Copies:
    """Units copied from others: unit u >= the initial count is a copy of source[u] < u."""

    def __init__(self, units: int):
        self.units = units
        self.source = np.arange(units)
        self.known: dict[int, np.ndarray] = {}

    def add(self, idx: np.ndarray) -> None:
        self.source = np.concatenate([self.source, idx])
        self.units += idx.size
        self.known = {}

    def ancestors(self, size: int) -> np.ndarray:
        """For units size.., the unit below size each descends from."""
        if size not in self.known:
            r = self.source[size:]
            while r.size and r.max() >= size:
                r = np.where(r >= size, self.source[r], r)
            self.known[size] = r
        return self.known[size]


class _PerUnit(dict):
    """Per-unit arrays by event type, extended to copies made since on access (copying each
    array once, not at every split)."""

    def __init__(self, copies: _Copies):
        super().__init__()
        self.copies = copies

    def __getitem__(self, key: int) -> np.ndarray:
        v = dict.__getitem__(self, key)
        if v.size < self.copies.units:
            v = np.concatenate([v, v[self.copies.ancestors(v.size)]])
            dict.__setitem__(self, key, v)
        return v

    def at(self, key: int, idx: np.ndarray) -> np.ndarray:
        """Values at units idx, read through to the units copied (no extension)."""
        v = dict.__getitem__(self, key)
        if v.size < self.copies.units:
            late = idx >= v.size
            if late.any():
                idx = idx.copy()
                idx[late] = self.copies.ancestors(v.size)[idx[late] - v.size]
        return v[idx]


def _oracle_chunk(clock: _Clock, weeks: int, draws: int, past: _Past, anchors: dict[int, _Anchors],
                  ranks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The users of the given ranks, `draws` draws each. A draw starts as one unit (unit u of draw u,
    user ranks[u // draws]) and splits into branches at binary events (a copy per outcome, weighted
    by its probability): a draw's value is the sum over its branches."""
    c, w_end, end = clock.cutoff_h, clock.window_end_h, clock.end_h
    na = ranks.size
    units = na * draws
    local = np.repeat(np.arange(na), draws)
    origin = np.arange(units)
    log_w = np.zeros(units)
    base_share = (w_end - c) / (end - c)
    copies = _Copies(units)
    nf = _PerUnit(copies)          # future events of a type (after the cutoff, any time)
    nin = _PerUnit(copies)         # those inside the window (for base types: drawn late)
    anchor_t = _PerUnit(copies)    # anchor of a parent's children: nan none to come, inf after the window
    anchor_in = _PerUnit(copies)   # that anchor is a future event inside the window
    lam_in = _PerUnit(copies)      # Poisson mean of a child type's count inside the window, where it is
                                   # independent of the rest (future anchor inside), else 0
    # no click can exist for a user with page views but no click (they are base page views)
    no_click = (anchors[_ECL].count[ranks] == 0) & ~anchors[_ECL].unseen[ranks]

    strata: list[tuple[np.ndarray, np.ndarray]] = []

    def unif(idx: np.ndarray) -> np.ndarray:
        """One uniform per unit, Latin hypercube over the draws of each user: draw d gets stratum
        pi(d + s) of `draws`, pi a random permutation (fresh per call) of the draws, s a random
        shift per user and call (strata independent across calls and users)."""
        if not strata:
            perms = rng.permuted(np.tile(np.arange(draws), (64, 1)), axis=1)
            shifts = rng.integers(0, draws, (64, na))
            strata.extend(zip(np.tile(perms, 2), shifts, strict=True))
        perm, shift = strata.pop()
        if idx.size > units // 4:
            stratum = perm[np.arange(draws) + shift[:, None]].ravel()[origin[idx]]
        else:
            user, d = np.divmod(origin[idx], draws)
            stratum = perm[d + shift[user]]
        return (stratum + rng.random(idx.size)) / draws

    def grow(idx: np.ndarray) -> np.ndarray:
        """Copies of units idx appended (per-type arrays follow on access); returns their indices."""
        nonlocal units, local, origin, log_w
        copies.add(idx)
        local = np.concatenate([local, local[idx]])
        origin = np.concatenate([origin, origin[idx]])
        log_w = np.concatenate([log_w, log_w[idx]])
        new = np.arange(units, units + idx.size)
        units += idx.size
        return new

    def branch(idx: np.ndarray, p: np.ndarray, split: bool | np.ndarray = True) -> tuple[np.ndarray, ...]:
        """Units idx facing an event of probability p: where both outcomes have at least
        _SPLIT_MIN chance (and `split`), the unit takes 'yes' (weight p) and a copy of it 'no'
        (weight 1 - p); elsewhere the outcome is drawn. Returns the yes units, their positions in
        idx, the no units, their positions."""
        both = (p >= _SPLIT_MIN) & (p <= 1.0 - _SPLIT_MIN) & split
        one = np.flatnonzero(~both)
        yes_one = unif(idx[one]) < p[one]
        two = np.flatnonzero(both)
        new = grow(idx[two])
        log_w[idx[two]] += np.log(p[two])
        log_w[new] += np.log1p(-p[two])
        yes_pos = np.concatenate([two, one[yes_one]])
        no_pos = np.concatenate([two, one[~yes_one]])
        return idx[yes_pos], yes_pos, np.concatenate([new, idx[one[~yes_one]]]), no_pos

    def sample_times(kind: int, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Times in (c, w_end] of future events of a type, for the given units, from uniforms u."""
        a = anchor_t.at(_PARENT[kind], idx) if kind in _PARENT else np.full(idx.size, np.nan)
        times = c + u * (w_end - c)
        child = ~np.isnan(a)
        if child.any():
            ac, lag = a[child], _LAG[kind]
            low = np.maximum(c, ac) - ac
            mass = -np.expm1(-(w_end - ac - low) / lag)
            times[child] = ac + low - lag * np.log1p(-u[child] * mass)
        return np.minimum(np.maximum(times, np.nextafter(c, np.inf)), w_end)

    def step(parent: int, split: bool) -> None:
        """The anchor of the parent's children, from its posterior given the children seen: per
        unit a future parent inside the window, or after it, a past one with children to come
        ("active") or without, or none. The unit is weighted by the likelihood of the observed
        children, (1/n) x sum over the n parents, past (L_j) and future (1), per-user constant
        factors left out; for a base parent the number of future parents is drawn from its
        posterior along with the category (the weight is then a per-user constant). Branch
        points: "children to come" (future inside, or active) or not; then future inside or
        active. Then the children still to come: Poisson from a future anchor, at least one
        from an active past one, split over child types, inside the window or after it."""
        kids = _KIDS[parent]
        post = anchors[parent]
        if parent in (_IMP, _SENT):
            mu = _RATE[parent] * weeks / end * (end - c)
            top = int(mu + 8.0 * math.sqrt(mu) + 8.0)   # Poisson tail beyond: < 1e-13
            k = np.arange(top + 1)
            pois = np.exp(-mu + k * math.log(mu) - np.array([math.lgamma(x + 1.0) for x in k]))
            n_p = post.count[ranks]
            unseen = post.unseen[ranks]
            with np.errstate(invalid="ignore", divide="ignore"):
                inv = np.where(n_p[:, None] + k > 0, 1.0 / (n_p[:, None] + k), 0.0)
                # joint posterior of (future count k, category): future anchor k/(n+k), past one
                # sum_j L_j/(n+k) (seen children: n/(n+k), the per-user factor left out), none
                fut_k = np.where(unseen[:, None], pois * k * inv, 0.0)
                past_k = pois * np.where(unseen, post.past_mass[ranks], n_p)[:, None] * inv
                fut_sum, past_sum = fut_k.sum(axis=1), past_k.sum(axis=1)
                total = fut_sum + past_sum + np.where(n_p == 0, pois[0], 0.0)
                p_fut = np.where(total > 0, fut_sum / total, 0.0)[local]
                p_past = np.where(total > 0, past_sum / total, 1.0)[local]
            # children seen without any parent: impossible (weight 0)
            log_w[~(total[local] > 0)] = -np.inf
            cdf_fut, cdf_past = _stacked_cdf(fut_k), _stacked_cdf(past_k)
            cand = np.arange(units)
            share = np.full(units, base_share)
        else:
            f = nf[parent]
            n_p = post.count[ranks[local]]
            cand = np.flatnonzero((f > 0) | (n_p > 0))
            fc, gc, nc = f[cand], ranks[local[cand]], n_p[cand]
            unseen = post.unseen[gc]
            with np.errstate(invalid="ignore", divide="ignore"):
                pm = np.where(unseen, post.past_mass[gc], nc)
                log_w[cand] += np.log((pm + np.where(unseen, fc, 0)) / (nc + fc))
                p_fut = np.where(unseen, fc / (pm + fc), 0.0)
            p_past = 1.0 - p_fut
            share = nin.at(parent, cand) / np.maximum(fc, 1)
        p_win = p_fut * share
        p_yes = p_win + p_past * anchors[parent].active[ranks[local[cand]]]
        splits = np.full(cand.size, split)
        if parent in (_SENT, _OPEN):
            # the email chain matters through clicks: no branch where none can come
            splits &= ~no_click[local[cand]]
        yes, yes_pos, no, no_pos = branch(cand, p_yes, splits)
        with np.errstate(invalid="ignore", divide="ignore"):
            win, _, act, _ = branch(yes, p_win[yes_pos] / p_yes[yes_pos], splits[yes_pos])
            is_beyond = rng.random(no.size) * (1.0 - p_yes[no_pos]) < (p_fut - p_win)[no_pos]
        beyond = no[is_beyond]
        if parent in (_IMP, _SENT):
            # future parents from their posterior given the category (future anchor, or not)
            count = np.zeros(units, dtype=np.int64)
            rest = np.concatenate([act, no[~is_beyond]])
            for idx, cdf in ((np.concatenate([win, beyond]), cdf_fut), (rest[n_p[local[rest]] > 0], cdf_past)):
                row = local[idx]
                count[idx] = np.minimum(np.searchsorted(cdf, row + unif(idx), side="right") - row * (top + 1), top)
            nf[parent] = count
        a = np.full(units, np.nan)
        a[beyond] = np.inf
        a[win] = sample_times(parent, win, unif(win))
        inside = np.zeros(units, dtype=bool)
        inside[win] = True
        anchor_t[parent], anchor_in[parent] = a, inside
        ga = ranks[local[act]]
        row = np.minimum(np.searchsorted(post.active_cum, ga + unif(act), side="right"), post.last[ga])
        a[act] = post.t[row]
        n_kids = _poisson(rng, post.mass[row], at_least_one=True, u=unif(act))
        owner = np.repeat(np.arange(act.size), n_kids)
        cat = (rng.random(owner.size)[:, None] > post.split[row[owner]]).sum(axis=1)
        ncat = 2 * len(kids)
        act_kids = np.bincount(owner * ncat + cat, minlength=act.size * ncat).reshape(act.size, ncat)
        # children of future anchors: (inside, after) per type from an anchor inside the window,
        # everything after it from one beyond
        lam = _RATE[list(kids)] * weeks
        stay = np.exp(-(w_end - a[win])[:, None] / _LAG[list(kids)])
        for i, kid in enumerate(kids):
            from_in = _poisson(rng, lam[i] * (1.0 - stay[:, i]), u=unif(win))
            k_in = np.zeros(units, dtype=np.int64)
            k_all = np.zeros(units, dtype=np.int64)
            k_in[act] = act_kids[:, 2 * i]
            k_all[act] = act_kids[:, 2 * i] + act_kids[:, 2 * i + 1]
            k_in[win] = from_in
            k_all[win] = from_in + _poisson(rng, lam[i] * stay[:, i])
            k_all[beyond] = _poisson(rng, np.full(beyond.size, lam[i]))
            nin[kid] = k_in
            if kid in _KIDS or kid == _LC:
                nf[kid] = k_all
            if parent in (_SENT, _ECL, _PV):
                l_in = np.zeros(units)
                l_in[win] = lam[i] * (1.0 - stay[:, i])
                lam_in[kid] = l_in

    def split_count(kinds: tuple[int, ...], idx: np.ndarray) -> None:
        """Units idx whose children of these types inside the window are Poisson (means lam_in),
        independent of the rest: branch on 'at least one inside' (zero-truncated total, then
        the types)."""
        lam_k = np.stack([lam_in.at(kind, idx) for kind in kinds], axis=1)
        after = np.stack([nf.at(kind, idx) - nin.at(kind, idx) for kind in kinds], axis=1)
        total = lam_k.sum(axis=1)
        yes, yes_pos, no, no_pos = branch(idx, -np.expm1(-total))
        n_in = _poisson(rng, total[yes_pos], at_least_one=True, u=unif(yes))
        if len(kinds) == 1:
            counts = n_in[:, None]
        else:
            owner = np.repeat(np.arange(yes.size), n_in)
            cum = np.cumsum(lam_k[yes_pos], axis=1)[:, :-1] / total[yes_pos, None]
            cat = (rng.random(owner.size)[:, None] > cum[owner]).sum(axis=1)
            counts = np.bincount(owner * len(kinds) + cat, minlength=yes.size * len(kinds))
            counts = counts.reshape(yes.size, len(kinds))
        for i, kind in enumerate(kinds):
            nin[kind][yes] = counts[:, i]
            nf[kind][yes] = counts[:, i] + after[yes_pos, i]
            nin[kind][no] = 0
            nf[kind][no] = after[no_pos, i]
            lam_in[kind][np.concatenate([yes, no])] = 0.0

    # advertising: impressions, clicks after an anchor impression
    step(_IMP, split=False)
    # email chain: sends, opens after an anchor send (some inside the window or none, where a
    # click may follow), clicks after an anchor open
    step(_SENT, split=True)
    opens = np.flatnonzero(lam_in[_OPEN] > 0)
    split_count((_OPEN,), opens[~no_click[local[opens]]])
    step(_OPEN, split=True)
    # clicks from a future anchor open: some or none (the only outcome where no click can exist)
    fut = np.flatnonzero(anchor_t[_OPEN] > c)
    lam = _RATE[_ECL] * weeks
    forced = fut[no_click[local[fut]]]
    nin[_ECL][forced] = 0
    nf[_ECL][forced] = 0
    log_w[forced] -= lam
    both = fut[~no_click[local[fut]]]
    a = anchor_t[_OPEN][both]
    p_in = np.where(np.isfinite(a), -np.expm1(-(w_end - np.minimum(a, w_end)) / _LAG[_ECL]), 0.0)
    yes, yes_pos, no, _ = branch(both, np.full(both.size, -math.expm1(-lam)))
    total = _poisson(rng, np.full(yes.size, lam), at_least_one=True, u=unif(yes))
    nin[_ECL][yes] = rng.binomial(total, p_in[yes_pos])
    nf[_ECL][yes] = total
    nin[_ECL][no] = 0
    nf[_ECL][no] = 0
    # page views: children of an anchor click if the user has any click at all, else the base
    # process; inside the window some or none, as two branches
    step(_ECL, split=True)
    on_base = np.flatnonzero(past.count[_ECL][ranks[local]] + nf[_ECL] == 0)
    mu = _RATE[_PV] * weeks / end
    log_w[on_base] += -mu * c + past.count[_PV][ranks[local[on_base]]] * math.log(mu)
    nin[_PV][on_base] = 0
    nf[_PV][on_base] = _poisson_flat(rng, mu * (end - w_end), on_base.size)
    lam_in[_PV][on_base] = mu * (w_end - c)
    split_count((_PV,), np.flatnonzero(lam_in[_PV] > 0))
    # page view children (some inside or none, where a click came first), purchases after an
    # anchor product view, interactions after an anchor display
    step(_PV, split=True)
    kids = np.flatnonzero(lam_in[_LC] > 0)
    split_count((_LC, _PRV, _DSP), kids[nin.at(_ECL, kids) > 0])
    step(_PRV, split=True)
    step(_DSP, split=True)

    eligible = nin[_PV] + nin[_LC] + nin[_PRV] + nin[_PUR] + nin[_DSP] + nin[_INT] + nin[_DIS]
    rel = np.flatnonzero(eligible)
    sum_log = np.zeros(units)
    if rel.size:
        for kind in (_IMP, _SENT):
            # in-window count of a base type drawn only in total: the anchor if a future one
            # inside, plus each other future event (not an anchor after the window) inside
            fixed = anchor_in.at(kind, rel).astype(np.int64)
            other = nf.at(kind, rel) - fixed - (anchor_t.at(kind, rel) == np.inf)
            nin[kind] = np.zeros(units, dtype=np.int64)
            nin[kind][rel] = fixed + _thin(rng, np.maximum(other, 0), base_share)
        unit_parts, time_parts, code_parts = [], [], []
        for kind in (_IMP, _ACL, _SENT, _OPEN, _ECL, _PV, _LC, _PRV, _PUR, _DSP, _INT, _DIS):
            k = nin.at(kind, rel)
            rows = np.repeat(np.arange(rel.size), k)
            if rows.size == 0:
                continue
            times = sample_times(kind, rel[rows], rng.random(rows.size))
            if kind in anchor_in:
                has_anchor = anchor_in.at(kind, rel) & (k > 0)
                times[(np.cumsum(k) - k)[has_anchor]] = anchor_t.at(kind, rel[has_anchor])
            unit_parts.append(rows)
            time_parts.append(times)
            code_parts.append(np.full(rows.size, kind, dtype=np.int8))
        r = np.concatenate(unit_parts)
        t = np.concatenate(time_parts)
        k = np.concatenate(code_parts)
        t_key = ((t - c) * _US_PER_HOUR).astype(np.int64)
        # stable: the events come in runs ordered by unit, and ties keep parents before children
        order = np.argsort(r * (int((w_end - c) * _US_PER_HOUR) + 2) + t_key, kind="stable")
        r, k = r[order], k[order]
        first = np.r_[True, r[1:] != r[:-1]]
        x = _walk(first, past.level[ranks[local[rel[r]]]], _DELTA[k])
        d = _DRAWS[k]
        sum_log[rel] = np.bincount(r[d], weights=np.log1p(-x[d] / _P1), minlength=rel.size)
    prob = -np.expm1(past.pending_log[ranks[local]] + sum_log)

    # per draw, the sums over its branches of weights and weighted probabilities; per user, their
    # ratio over the draws (its bias, O(1/draws) in general, is below 0.1% of the mean here: the
    # branch weights sum to one and the remaining weights vary little)
    top = np.full(na, -np.inf)
    np.maximum.at(top, local, log_w)
    with np.errstate(invalid="ignore"):
        wu = np.exp(log_w - top[local])
    wu[~np.isfinite(top[local])] = 1.0
    return np.bincount(local, weights=wu * prob, minlength=na) / np.bincount(local, weights=wu, minlength=na)


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


def _seeded_faker(locale: str, seed: int):
    """A seeded Faker that draws the same values in every process. Faker builds some pools from sets
    (it_IT's cities), whose order follows the per-process hash seed (PYTHONHASHSEED): those are sorted."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    address = fake.provider("faker.providers.address")
    if isinstance(getattr(address, "cities", None), list):
        address.cities = sorted(address.cities)
    return fake


@functools.lru_cache(maxsize=1)
def _pools() -> dict[str, object]:
    """Faker value pools, made once with a fixed Faker seed."""
    fake = _seeded_faker("en_US", 1729)
    first = [x for x in dict.fromkeys(fake.first_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    last = [x for x in dict.fromkeys(fake.last_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    cities, country_of_city, weights = [], [], []
    for i, (_, locale, weight) in enumerate(_COUNTRIES):
        local = _seeded_faker(locale, 1729 + i)
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
    """Events plus conversions, with ids, pages and campaigns, ordered by (userid, time): each user's
    events are contiguous and the batch is sorted by the identity column, so a database keeps its
    userid index with local inserts during a bulk load and reads one user's events from few pages.
    The userid strings are ranked once (n of them) and the events sorted by (rank, time) as integers;
    ties (same user and microsecond) in a fixed order for the same seed. Event ids come from (user,
    sequence in the user's events), not from the order, and the random pages are drawn in this order."""
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
    rank = np.empty(n_users, dtype=np.int64)
    rank[userids.arg_sort().to_numpy()] = np.arange(n_users)
    order = _argsort_pairs(rank[user], time_us, clock.end_us + 1)
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
