"""The experience events frame of a batch: the simulated events plus conversions, with ids, pages and
campaigns, ordered by (userid, time)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from aep_assets.lib.synthetic.event_types import ACL, DIS, DSP, FORM, IMP, INT, LC, NAMES, PRV, PUR, PV
from aep_assets.lib.synthetic.identities import event_ids
from aep_assets.lib.synthetic.process import Clock, Simulation, argsort_pairs

PRODUCED_BY = "aep_assets.synthetic"
PAGES = ("home", "pricing", "features", "plans", "blog", "docs", "offers", "support", "about", "contact",
         "product-basic", "product-plus", "product-pro", "checkout", "subscriptionForm")
GENERAL_PAGES = 10
PRODUCT_PAGES = (10, 13)
URL_SLUG = {"subscriptionForm": "subscribe"}


def gather(pool: pl.Series, index: np.ndarray) -> pl.Series:
    """pool[index] as a Series, null where index < 0."""
    missing = index < 0
    positions = pa.array(np.where(missing, 0, index).astype(np.uint32), mask=missing if missing.any() else None)
    return pool.gather(pl.Series(positions))


def event_frame(sim: Simulation, userids: pl.Series, batch: int, seed: int, clock: Clock) -> pl.DataFrame:
    """Events plus conversions, with ids, pages and campaigns, ordered by (userid, time): each user's
    events are contiguous and the batch is sorted by the identity column, so a database keeps its
    userid index with local inserts during a bulk load and reads one user's events from few pages.
    Event ids come from (user, sequence in the user's events), not from the order, and the random
    pages are drawn in this order."""
    user, code, time_us, campaign, seq = _ordered_events(sim, userids, clock)
    ids = event_ids(batch, user, seq, seed)
    page = _pages(code, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(batch, 3))))
    names = pl.Series(PAGES)
    urls = pl.Series([f"https://www.example.com/{URL_SLUG.get(p, p)}" for p in PAGES])
    weeks = clock.weeks
    campaigns = pl.Series([f"email-w{w:02d}" for w in range(weeks)] + [f"display-w{w:02d}" for w in range(weeks)])
    is_ad = (code == IMP) | (code == ACL)
    camp = np.where(campaign >= 0, campaign.astype(np.int64) + np.where(is_ad, weeks, 0), -1)
    return pl.DataFrame({
        "event_id": ids,
        "userid": userids.gather(pl.Series(user.astype(np.uint32))),
        "event_type": pl.Series(NAMES).gather(pl.Series(code.astype(np.uint32))),
        "timestamp": pl.Series(clock.start_epoch_us + time_us).cast(pl.Datetime("us", "UTC")),
        "produced_by": pl.repeat(PRODUCED_BY, code.size, eager=True),
        "page_name": gather(names, page),
        "page_url": gather(urls, page),
        "campaign_id": gather(campaigns, camp),
        "batch": pl.Series(np.full(code.size, batch, dtype=np.int32)),
    })


def _ordered_events(sim: Simulation, userids: pl.Series, clock: Clock) -> tuple[np.ndarray, ...]:
    """Events and conversions as (user, code, time_us, campaign, sequence in the user's events), sorted
    by (userid, time): the userid strings are ranked once (n of them) and the events sorted by (rank,
    time) as integers; ties (same user and microsecond) in a fixed order for the same seed."""
    n_users = userids.len()
    conv_users = np.flatnonzero(sim.conversion_us >= 0).astype(np.int32)
    n_ev = sim.user.size
    heads = np.r_[True, sim.user[1:] != sim.user[:-1]] if n_ev else np.zeros(0, dtype=bool)
    starts = np.maximum.accumulate(np.where(heads, np.arange(n_ev), 0)) if n_ev else np.zeros(0, np.int64)
    per_user = np.bincount(sim.user, minlength=n_users)
    user = np.concatenate([sim.user, conv_users])
    code = np.concatenate([sim.code, np.full(conv_users.size, FORM, dtype=np.int8)])
    time_us = np.concatenate([sim.time_us, sim.conversion_us[conv_users]])
    campaign = np.concatenate([sim.campaign, np.full(conv_users.size, -1, dtype=np.int16)])
    seq = np.concatenate([np.arange(n_ev) - starts, per_user[conv_users]]).astype(np.int64)
    rank = np.empty(n_users, dtype=np.int64)
    rank[userids.arg_sort().to_numpy()] = np.arange(n_users)
    order = argsort_pairs(rank[user], time_us, clock.end_us + 1)
    return user[order], code[order], time_us[order], campaign[order], seq[order]


def _pages(code: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The page of each event (-1: none): a random general page for web and decisioning events, a
    random product page for product views, the checkout for purchases, the form for conversions."""
    page = np.full(code.size, -1, dtype=np.int64)
    general = np.isin(code, (PV, LC, DSP, INT, DIS))
    page[general] = rng.integers(0, GENERAL_PAGES, int(general.sum()))
    product = code == PRV
    page[product] = rng.integers(*PRODUCT_PAGES, int(product.sum()))
    page[code == PUR] = PAGES.index("checkout")
    page[code == FORM] = PAGES.index("subscriptionForm")
    return page
