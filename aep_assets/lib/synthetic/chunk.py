"""One chunk of the oracle's Monte Carlo: the draws of a few thousand users, split into branches.

A draw starts as one unit and walks the process forward from the cutoff, parent type by parent type,
from the anchors' posterior given the events seen. It splits into branches at the binary events that
decide whether anything can convert, keeping both outcomes, each weighted by its exact probability (a
conditional expectation instead of a sample): the anchor has children to come or not, and then a
future one inside the window or an active past one (every parent type but impressions; sends and
opens only where a click can still come); opens inside the window after a future send, or none
(same users); clicks after a future anchor open, or none; page views inside the window (base, or
after a click), or none; children inside the window of a future anchor page view, or none (after a
click). Branches only where both outcomes have at least a 5% chance; counts inside a branch are
zero-truncated. Every other choice of a draw (categories, counts, anchor times) uses a uniform
stratified over the user's draws.

A unit's conversion probability is exact given its events, 1 - prod(1 - p) over its Bernoulli draws
in the window. The branch weights add up to the draw's weight and the remaining weights vary little,
so a user's value is the plain ratio of weighted sums over its draws (a delete-one jackknife would
over-correct stratified draws).
"""

from __future__ import annotations

import math

import numpy as np

from aep_assets.lib.synthetic.event_types import (
    ACL,
    DELTA,
    DIS,
    DRAWING,
    DSP,
    ECL,
    IMP,
    INT,
    KIDS,
    LAG,
    LC,
    OPEN,
    P1,
    PARENT,
    PRV,
    PUR,
    PV,
    RATE,
    SENT,
)
from aep_assets.lib.synthetic.posterior import Anchors, Past
from aep_assets.lib.synthetic.process import US_PER_HOUR, Clock, walk
from aep_assets.lib.synthetic.sampling import PerUnit, Units, poisson, poisson_flat, stacked_cdf, thin


def oracle_chunk(clock: Clock, weeks: int, draws: int, past: Past, anchors: dict[int, Anchors],
                 ranks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The oracle probability of the users of the given ranks, `draws` draws each."""
    return DrawChunk(clock, weeks, draws, past, anchors, ranks, rng).run()


class DrawChunk(Units):
    """The units of a chunk of users and what each has drawn so far, per event type: future events
    (`nf`), those inside the window (`nin`), the anchor of a parent's children (`anchor_t`: nan none
    to come, inf after the window; `anchor_in`: a future event inside it) and the Poisson mean of a
    child type's count inside the window where it is independent of the rest (`lam_in`)."""

    def __init__(self, clock: Clock, weeks: int, draws: int, past: Past, anchors: dict[int, Anchors],
                 ranks: np.ndarray, rng: np.random.Generator):
        super().__init__(ranks.size, draws, rng)
        self.c, self.w_end, self.end = clock.cutoff_h, clock.window_end_h, clock.end_h
        self.weeks, self.past, self.anchors, self.ranks = weeks, past, anchors, ranks
        self.base_share = (self.w_end - self.c) / (self.end - self.c)
        self.nf, self.nin, self.anchor_t, self.anchor_in, self.lam_in = (PerUnit(self.copies) for _ in range(5))
        # no click can exist for a user with page views but no click (they are base page views)
        self.no_click = (anchors[ECL].count[ranks] == 0) & ~anchors[ECL].unseen[ranks]

    def run(self) -> np.ndarray:
        """The process from the cutoff on, parent type by parent type, then each user's probability."""
        # advertising: impressions, clicks after an anchor impression
        self.step(IMP, split=False)
        # email chain: sends, opens after an anchor send (some inside the window or none, where a
        # click may follow), clicks after an anchor open
        self.step(SENT, split=True)
        opens = np.flatnonzero(self.lam_in[OPEN] > 0)
        self.split_count((OPEN,), opens[~self.no_click[self.local[opens]]])
        self.step(OPEN, split=True)
        self._clicks_of_future_opens()
        # page views: children of an anchor click if the user has any click at all, else the base
        # process; inside the window some or none, as two branches
        self.step(ECL, split=True)
        self._base_page_views()
        # page view children (some inside or none, where a click came first), purchases after an
        # anchor product view, interactions after an anchor display
        self.step(PV, split=True)
        kids = np.flatnonzero(self.lam_in[LC] > 0)
        self.split_count((LC, PRV, DSP), kids[self.nin.at(ECL, kids) > 0])
        self.step(PRV, split=True)
        self.step(DSP, split=True)
        return self._user_means(self._conversion_probability())

    def sample_times(self, kind: int, idx: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Times in (c, w_end] of future events of a type, for the given units, from uniforms u."""
        c, w_end = self.c, self.w_end
        a = self.anchor_t.at(PARENT[kind], idx) if kind in PARENT else np.full(idx.size, np.nan)
        times = c + u * (w_end - c)
        child = ~np.isnan(a)
        if child.any():
            ac, lag = a[child], LAG[kind]
            low = np.maximum(c, ac) - ac
            mass = -np.expm1(-(w_end - ac - low) / lag)
            times[child] = ac + low - lag * np.log1p(-u[child] * mass)
        return np.minimum(np.maximum(times, np.nextafter(c, np.inf)), w_end)

    # --- a parent type's anchor and its children still to come ---

    def step(self, parent: int, split: bool) -> None:
        """The anchor of the parent's children, from its posterior given the children seen: per
        unit a future parent inside the window, or after it, a past one with children to come
        ("active") or without, or none. Branch points: "children to come" (future inside, or
        active) or not; then future inside or active. Then the children still to come."""
        counts = None
        if parent in (IMP, SENT):
            cand, p_fut, p_past, share, counts = self._base_prior(parent)
        else:
            cand, p_fut, p_past, share = self._child_prior(parent)
        p_win = p_fut * share
        p_yes = p_win + p_past * self.anchors[parent].active[self.ranks[self.local[cand]]]
        splits = np.full(cand.size, split)
        if parent in (SENT, OPEN):
            # the email chain matters through clicks: no branch where none can come
            splits &= ~self.no_click[self.local[cand]]
        yes, yes_pos, no, no_pos = self.branch(cand, p_yes, splits)
        with np.errstate(invalid="ignore", divide="ignore"):
            win, _, act, _ = self.branch(yes, p_win[yes_pos] / p_yes[yes_pos], splits[yes_pos])
            is_beyond = self.rng.random(no.size) * (1.0 - p_yes[no_pos]) < (p_fut - p_win)[no_pos]
        beyond = no[is_beyond]
        if counts is not None:
            self._future_parents(parent, counts, np.concatenate([win, beyond]),
                                 np.concatenate([act, no[~is_beyond]]))
        a, row = self._anchor_times(parent, win, act, beyond)
        self._children_to_come(parent, a, win, act, beyond, self._active_children(parent, act, row))

    def _base_prior(self, parent: int) -> tuple:
        """For a base parent, over all units: P(future anchor), P(past anchor), the share of future
        parents inside the window, and what `_future_parents` draws counts from. The unit's weight is
        the likelihood of the observed children, (1/n) x sum over the n parents, past (L_j) and future
        (1); the number of future parents is drawn from its posterior along with the category, so
        the weight is a per-user constant (left out)."""
        post, local, end, c = self.anchors[parent], self.local, self.end, self.c
        mu = RATE[parent] * self.weeks / end * (end - c)
        top = int(mu + 8.0 * math.sqrt(mu) + 8.0)   # Poisson tail beyond: < 1e-13
        k = np.arange(top + 1)
        pois = np.exp(-mu + k * math.log(mu) - np.array([math.lgamma(x + 1.0) for x in k]))
        n_p = post.count[self.ranks]
        unseen = post.unseen[self.ranks]
        with np.errstate(invalid="ignore", divide="ignore"):
            inv = np.where(n_p[:, None] + k > 0, 1.0 / (n_p[:, None] + k), 0.0)
            # joint posterior of (future count k, category): future anchor k/(n+k), past one
            # sum_j L_j/(n+k) (seen children: n/(n+k), the per-user factor left out), none
            fut_k = np.where(unseen[:, None], pois * k * inv, 0.0)
            past_k = pois * np.where(unseen, post.past_mass[self.ranks], n_p)[:, None] * inv
            fut_sum, past_sum = fut_k.sum(axis=1), past_k.sum(axis=1)
            total = fut_sum + past_sum + np.where(n_p == 0, pois[0], 0.0)
            p_fut = np.where(total > 0, fut_sum / total, 0.0)[local]
            p_past = np.where(total > 0, past_sum / total, 1.0)[local]
        # children seen without any parent: impossible (weight 0)
        self.log_w[~(total[local] > 0)] = -np.inf
        counts = (n_p, stacked_cdf(fut_k), stacked_cdf(past_k), top)
        return np.arange(self.units), p_fut, p_past, np.full(self.units, self.base_share), counts

    def _child_prior(self, parent: int) -> tuple[np.ndarray, ...]:
        """For a child parent, over the units with any such parent (future or past): P(future
        anchor), P(past anchor) and the share of future parents inside the window; the unit is
        weighted by the likelihood of the observed children."""
        post = self.anchors[parent]
        f = self.nf[parent]
        n_p = post.count[self.ranks[self.local]]
        cand = np.flatnonzero((f > 0) | (n_p > 0))
        fc, gc, nc = f[cand], self.ranks[self.local[cand]], n_p[cand]
        unseen = post.unseen[gc]
        with np.errstate(invalid="ignore", divide="ignore"):
            pm = np.where(unseen, post.past_mass[gc], nc)
            self.log_w[cand] += np.log((pm + np.where(unseen, fc, 0)) / (nc + fc))
            p_fut = np.where(unseen, fc / (pm + fc), 0.0)
        return cand, p_fut, 1.0 - p_fut, self.nin.at(parent, cand) / np.maximum(fc, 1)

    def _future_parents(self, parent: int, counts: tuple, future: np.ndarray, rest: np.ndarray) -> None:
        """Future events of a base parent from their posterior given the category (future anchor, or not)."""
        n_p, cdf_fut, cdf_past, top = counts
        count = np.zeros(self.units, dtype=np.int64)
        for idx, cdf in ((future, cdf_fut), (rest[n_p[self.local[rest]] > 0], cdf_past)):
            row = self.local[idx]
            count[idx] = np.minimum(np.searchsorted(cdf, row + self.unif(idx), side="right") - row * (top + 1), top)
        self.nf[parent] = count

    def _anchor_times(self, parent: int, win: np.ndarray, act: np.ndarray,
                      beyond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The anchor's time per unit (inside the window, beyond it, or an active past parent drawn
        from its posterior); returns the times and, for the active ones, the past parent's row."""
        post = self.anchors[parent]
        a = np.full(self.units, np.nan)
        a[beyond] = np.inf
        a[win] = self.sample_times(parent, win, self.unif(win))
        inside = np.zeros(self.units, dtype=bool)
        inside[win] = True
        self.anchor_t[parent], self.anchor_in[parent] = a, inside
        ga = self.ranks[self.local[act]]
        row = np.minimum(np.searchsorted(post.active_cum, ga + self.unif(act), side="right"), post.last[ga])
        a[act] = post.t[row]
        return a, row

    def _active_children(self, parent: int, act: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Children to come of active past anchors: at least one, split over (child type, inside the
        window or after it) by their expected counts; one row per unit."""
        post = self.anchors[parent]
        n_kids = poisson(self.rng, post.mass[row], at_least_one=True, u=self.unif(act))
        owner = np.repeat(np.arange(act.size), n_kids)
        cat = (self.rng.random(owner.size)[:, None] > post.split[row[owner]]).sum(axis=1)
        ncat = 2 * len(KIDS[parent])
        return np.bincount(owner * ncat + cat, minlength=act.size * ncat).reshape(act.size, ncat)

    def _children_to_come(self, parent: int, a: np.ndarray, win: np.ndarray, act: np.ndarray,
                          beyond: np.ndarray, act_kids: np.ndarray) -> None:
        """Per child type, the counts inside the window and in all: from active past anchors as drawn,
        Poisson (inside, after) from an anchor inside the window, everything after it from one beyond."""
        kids, units = KIDS[parent], self.units
        lam = RATE[list(kids)] * self.weeks
        stay = np.exp(-(self.w_end - a[win])[:, None] / LAG[list(kids)])
        for i, kid in enumerate(kids):
            from_in = poisson(self.rng, lam[i] * (1.0 - stay[:, i]), u=self.unif(win))
            k_in = np.zeros(units, dtype=np.int64)
            k_all = np.zeros(units, dtype=np.int64)
            k_in[act] = act_kids[:, 2 * i]
            k_all[act] = act_kids[:, 2 * i] + act_kids[:, 2 * i + 1]
            k_in[win] = from_in
            k_all[win] = from_in + poisson(self.rng, lam[i] * stay[:, i])
            k_all[beyond] = poisson(self.rng, np.full(beyond.size, lam[i]))
            self.nin[kid] = k_in
            if kid in KIDS or kid == LC:
                self.nf[kid] = k_all
            if parent in (SENT, ECL, PV):
                l_in = np.zeros(units)
                l_in[win] = lam[i] * (1.0 - stay[:, i])
                self.lam_in[kid] = l_in

    def split_count(self, kinds: tuple[int, ...], idx: np.ndarray) -> None:
        """Units idx whose children of these types inside the window are Poisson (means lam_in),
        independent of the rest: branch on 'at least one inside' (zero-truncated total, then
        the types)."""
        lam_k = np.stack([self.lam_in.at(kind, idx) for kind in kinds], axis=1)
        after = np.stack([self.nf.at(kind, idx) - self.nin.at(kind, idx) for kind in kinds], axis=1)
        total = lam_k.sum(axis=1)
        yes, yes_pos, no, no_pos = self.branch(idx, -np.expm1(-total))
        n_in = poisson(self.rng, total[yes_pos], at_least_one=True, u=self.unif(yes))
        if len(kinds) == 1:
            counts = n_in[:, None]
        else:
            owner = np.repeat(np.arange(yes.size), n_in)
            cum = np.cumsum(lam_k[yes_pos], axis=1)[:, :-1] / total[yes_pos, None]
            cat = (self.rng.random(owner.size)[:, None] > cum[owner]).sum(axis=1)
            counts = np.bincount(owner * len(kinds) + cat, minlength=yes.size * len(kinds))
            counts = counts.reshape(yes.size, len(kinds))
        for i, kind in enumerate(kinds):
            self.nin[kind][yes] = counts[:, i]
            self.nf[kind][yes] = counts[:, i] + after[yes_pos, i]
            self.nin[kind][no] = 0
            self.nf[kind][no] = after[no_pos, i]
            self.lam_in[kind][np.concatenate([yes, no])] = 0.0

    # --- the email clicks and the base page views ---

    def _clicks_of_future_opens(self) -> None:
        """Clicks from a future anchor open: some or none (the only outcome where no click can exist)."""
        fut = np.flatnonzero(self.anchor_t[OPEN] > self.c)
        lam = RATE[ECL] * self.weeks
        forced = fut[self.no_click[self.local[fut]]]
        self.nin[ECL][forced] = 0
        self.nf[ECL][forced] = 0
        self.log_w[forced] -= lam
        both = fut[~self.no_click[self.local[fut]]]
        a = self.anchor_t[OPEN][both]
        p_in = np.where(np.isfinite(a), -np.expm1(-(self.w_end - np.minimum(a, self.w_end)) / LAG[ECL]), 0.0)
        yes, yes_pos, no, _ = self.branch(both, np.full(both.size, -math.expm1(-lam)))
        total = poisson(self.rng, np.full(yes.size, lam), at_least_one=True, u=self.unif(yes))
        self.nin[ECL][yes] = self.rng.binomial(total, p_in[yes_pos])
        self.nf[ECL][yes] = total
        self.nin[ECL][no] = 0
        self.nf[ECL][no] = 0

    def _base_page_views(self) -> None:
        """Base page views of the units without any click, weighted by the likelihood of those seen;
        inside the window some or none, as two branches."""
        past, ranks, local, c, w_end = self.past, self.ranks, self.local, self.c, self.w_end
        on_base = np.flatnonzero(past.count[ECL][ranks[local]] + self.nf[ECL] == 0)
        mu = RATE[PV] * self.weeks / self.end
        self.log_w[on_base] += -mu * c + past.count[PV][ranks[local[on_base]]] * math.log(mu)
        self.nin[PV][on_base] = 0
        self.nf[PV][on_base] = poisson_flat(self.rng, mu * (self.end - w_end), on_base.size)
        self.lam_in[PV][on_base] = mu * (w_end - c)
        self.split_count((PV,), np.flatnonzero(self.lam_in[PV] > 0))

    # --- the conversion probability ---

    def _conversion_probability(self) -> np.ndarray:
        """Per unit, P(a form in the window): 1 - prod(1 - p) over the Bernoulli draws after its
        events in the window (the propensity walked on from the cutoff) and those still pending."""
        nin = self.nin
        eligible = nin[PV] + nin[LC] + nin[PRV] + nin[PUR] + nin[DSP] + nin[INT] + nin[DIS]
        rel = np.flatnonzero(eligible)
        sum_log = np.zeros(self.units)
        if rel.size:
            self._window_base_counts(rel)
            r, k = self._window_events(rel)
            first = np.r_[True, r[1:] != r[:-1]]
            x = walk(first, self.past.level[self.ranks[self.local[rel[r]]]], DELTA[k])
            d = DRAWING[k]
            sum_log[rel] = np.bincount(r[d], weights=np.log1p(-x[d] / P1), minlength=rel.size)
        return -np.expm1(self.past.pending_log[self.ranks[self.local]] + sum_log)

    def _window_base_counts(self, rel: np.ndarray) -> None:
        """In-window count of a base type drawn only in total: the anchor if a future one inside,
        plus each other future event (not an anchor after the window) inside."""
        for kind in (IMP, SENT):
            fixed = self.anchor_in.at(kind, rel).astype(np.int64)
            other = self.nf.at(kind, rel) - fixed - (self.anchor_t.at(kind, rel) == np.inf)
            self.nin[kind] = np.zeros(self.units, dtype=np.int64)
            self.nin[kind][rel] = fixed + thin(self.rng, np.maximum(other, 0), self.base_share)

    def _window_events(self, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The events inside the window of units rel, as (position in rel, type code) in time order per unit."""
        unit_parts, time_parts, code_parts = [], [], []
        for kind in (IMP, ACL, SENT, OPEN, ECL, PV, LC, PRV, PUR, DSP, INT, DIS):
            k = self.nin.at(kind, rel)
            rows = np.repeat(np.arange(rel.size), k)
            if rows.size == 0:
                continue
            times = self.sample_times(kind, rel[rows], self.rng.random(rows.size))
            if kind in self.anchor_in:
                has_anchor = self.anchor_in.at(kind, rel) & (k > 0)
                times[(np.cumsum(k) - k)[has_anchor]] = self.anchor_t.at(kind, rel[has_anchor])
            unit_parts.append(rows)
            time_parts.append(times)
            code_parts.append(np.full(rows.size, kind, dtype=np.int8))
        r = np.concatenate(unit_parts)
        t = np.concatenate(time_parts)
        k = np.concatenate(code_parts)
        t_key = ((t - self.c) * US_PER_HOUR).astype(np.int64)
        # stable: the events come in runs ordered by unit, and ties keep parents before children
        order = np.argsort(r * (int((self.w_end - self.c) * US_PER_HOUR) + 2) + t_key, kind="stable")
        return r[order], k[order]

    def _user_means(self, prob: np.ndarray) -> np.ndarray:
        """Per draw, the sums over its branches of weights and weighted probabilities; per user, their
        ratio over the draws (its bias, O(1/draws) in general, is below 0.1% of the mean here: the
        branch weights sum to one and the remaining weights vary little)."""
        na, local, log_w = self.na, self.local, self.log_w
        top = np.full(na, -np.inf)
        np.maximum.at(top, local, log_w)
        with np.errstate(invalid="ignore"):
            wu = np.exp(log_w - top[local])
        wu[~np.isfinite(top[local])] = 1.0
        return np.bincount(local, weights=wu * prob, minlength=na) / np.bincount(local, weights=wu, minlength=na)
