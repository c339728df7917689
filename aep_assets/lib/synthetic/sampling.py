"""Building blocks of the oracle's Monte Carlo: count samplers driven by given uniforms, and the units
(user x draw x branch) of a chunk of users: stratified uniforms over each user's draws (a Latin
hypercube), and branching, where a unit facing a binary event becomes two weighted copies whose
per-unit arrays follow the copies lazily."""

from __future__ import annotations

import numpy as np

SPLIT_MIN = 0.05  # a binary event splits a unit in two when its rarer outcome has at least this chance


def poisson(rng: np.random.Generator, lam: np.ndarray, at_least_one: bool = False,
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


def poisson_flat(rng: np.random.Generator, lam: float, size: int) -> np.ndarray:
    """iid Poisson(lam) counts: Poisson(lam x size) points thrown uniformly into `size` bins."""
    return np.bincount(rng.integers(0, size, rng.poisson(lam * size)), minlength=size).astype(np.int64)


def thin(rng: np.random.Generator, trials: np.ndarray, p: float) -> np.ndarray:
    """Binomial(trials, p) per element, as independent Bernoulli trials counted back."""
    rows = np.repeat(np.arange(trials.size), trials)
    return np.bincount(rows[rng.random(rows.size) < p], minlength=trials.size)


def stacked_cdf(mass: np.ndarray) -> np.ndarray:
    """Cumulative distributions of the rows of `mass`, row r offset by r and flattened: one
    searchsorted of r + u draws from row r (rows without mass: any value, kept ascending)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.cumsum(mass, axis=1) / mass.sum(axis=1, keepdims=True)
    cdf = np.clip(np.nan_to_num(cdf, nan=1.0), 0.0, 1.0)
    cdf[:, -1] = 1.0
    return (cdf + np.arange(mass.shape[0])[:, None]).ravel()


class Copies:
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


class PerUnit(dict):
    """Per-unit arrays by event type, extended to copies made since on access (copying each
    array once, not at every split)."""

    def __init__(self, copies: Copies):
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


class Units:
    """The units of a chunk of users (user x draw x branch): each starts as one draw (unit u of draw
    u, user local[u]) and is copied when it splits; `log_w` is each unit's log weight, `origin` the
    draw it descends from."""

    def __init__(self, na: int, draws: int, rng: np.random.Generator):
        self.na, self.draws, self.rng = na, draws, rng
        self.units = na * draws
        self.local = np.repeat(np.arange(na), draws)
        self.origin = np.arange(self.units)
        self.log_w = np.zeros(self.units)
        self.copies = Copies(self.units)
        self.strata: list[tuple[np.ndarray, np.ndarray]] = []

    def unif(self, idx: np.ndarray) -> np.ndarray:
        """One uniform per unit, Latin hypercube over the draws of each user: draw d gets stratum
        pi(d + s) of `draws`, pi a random permutation (fresh per call) of the draws, s a random
        shift per user and call (strata independent across calls and users)."""
        draws = self.draws
        if not self.strata:
            perms = self.rng.permuted(np.tile(np.arange(draws), (64, 1)), axis=1)
            shifts = self.rng.integers(0, draws, (64, self.na))
            self.strata.extend(zip(np.tile(perms, 2), shifts, strict=True))
        perm, shift = self.strata.pop()
        if idx.size > self.units // 4:
            stratum = perm[np.arange(draws) + shift[:, None]].ravel()[self.origin[idx]]
        else:
            user, d = np.divmod(self.origin[idx], draws)
            stratum = perm[d + shift[user]]
        return (stratum + self.rng.random(idx.size)) / draws

    def grow(self, idx: np.ndarray) -> np.ndarray:
        """Copies of units idx appended (per-type arrays follow on access); returns their indices."""
        self.copies.add(idx)
        self.local = np.concatenate([self.local, self.local[idx]])
        self.origin = np.concatenate([self.origin, self.origin[idx]])
        self.log_w = np.concatenate([self.log_w, self.log_w[idx]])
        new = np.arange(self.units, self.units + idx.size)
        self.units += idx.size
        return new

    def branch(self, idx: np.ndarray, p: np.ndarray, split: bool | np.ndarray = True) -> tuple[np.ndarray, ...]:
        """Units idx facing an event of probability p: where both outcomes have at least
        SPLIT_MIN chance (and `split`), the unit takes 'yes' (weight p) and a copy of it 'no'
        (weight 1 - p); elsewhere the outcome is drawn. Returns the yes units, their positions in
        idx, the no units, their positions."""
        both = (p >= SPLIT_MIN) & (p <= 1.0 - SPLIT_MIN) & split
        one = np.flatnonzero(~both)
        yes_one = self.unif(idx[one]) < p[one]
        two = np.flatnonzero(both)
        new = self.grow(idx[two])
        self.log_w[idx[two]] += np.log(p[two])
        self.log_w[new] += np.log1p(-p[two])
        yes_pos = np.concatenate([two, one[yes_one]])
        no_pos = np.concatenate([two, one[~yes_one]])
        return idx[yes_pos], yes_pos, np.concatenate([new, idx[one[~yes_one]]]), no_pos
