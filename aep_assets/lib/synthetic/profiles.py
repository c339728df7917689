"""Synthetic customer profiles: names, email, location and creation time.

Faker fills pools of names and locale cities once (a fixed Faker seed, pools in a fixed order, so
they are the same in every process); numpy samples them from the batch's profile stream.
"""

from __future__ import annotations

import functools
from datetime import timedelta

import numpy as np
import polars as pl

from aep_assets.lib.synthetic.config import SyntheticConfig
from aep_assets.lib.synthetic.identities import userids
from aep_assets.lib.synthetic.process import EPOCH, US_PER_HOUR

COUNTRIES = (
    ("United States", "en_US", 30), ("United Kingdom", "en_GB", 10), ("Germany", "de_DE", 9),
    ("France", "fr_FR", 8), ("Canada", "en_CA", 6), ("Australia", "en_AU", 5), ("Spain", "es_ES", 5),
    ("Italy", "it_IT", 5), ("Netherlands", "nl_NL", 4), ("Brazil", "pt_BR", 6), ("India", "en_IN", 7),
    ("Japan", "ja_JP", 5),
)
# example.* domains are reserved (RFC 2606): a synthetic address can never reach a real person
DOMAINS = ("example.com", "example.net", "example.org")


def seeded_faker(locale: str, seed: int):
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
def pools() -> dict[str, object]:
    """Faker value pools, made once with a fixed Faker seed."""
    fake = seeded_faker("en_US", 1729)
    first = [x for x in dict.fromkeys(fake.first_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    last = [x for x in dict.fromkeys(fake.last_name() for _ in range(4000)) if x.isascii() and x.isalpha()][:300]
    cities, country_of_city, weights = [], [], []
    for i, (_, locale, weight) in enumerate(COUNTRIES):
        local = seeded_faker(locale, 1729 + i)
        names = list(dict.fromkeys(local.city() for _ in range(200)))[:25]
        cities += names
        country_of_city += [i] * len(names)
        weights += [weight / len(names)] * len(names)
    p = np.array(weights)
    return {
        "first": pl.Series(first), "last": pl.Series(last), "domain": pl.Series(DOMAINS),
        "city": pl.Series(cities), "country": pl.Series([c[0] for c in COUNTRIES]),
        "country_of_city": np.array(country_of_city, dtype=np.uint32), "city_p": p / p.sum(),
    }


def profile_frame(config: SyntheticConfig, batch: int, n: int, rng: np.random.Generator) -> pl.DataFrame:
    """A batch's n profiles: sampled names, an email embedding (batch, index), its userid, a city
    weighted by country, and a creation time in the year before the timeline starts."""
    values = pools()
    local = np.arange(n, dtype=np.int64)
    fn = values["first"].gather(pl.Series(rng.integers(0, len(values["first"]), n), dtype=pl.UInt32))
    ln = values["last"].gather(pl.Series(rng.integers(0, len(values["last"]), n), dtype=pl.UInt32))
    dom = values["domain"].gather(pl.Series(rng.integers(0, len(values["domain"]), n), dtype=pl.UInt32))
    city_idx = rng.choice(len(values["city"]), size=n, p=values["city_p"]).astype(np.uint32)
    created = rng.uniform(0.0, 365.0 * 24 * US_PER_HOUR, n).astype(np.int64)
    frame = pl.DataFrame({"first_name": fn, "last_name": ln, "domain": dom, "i": local})
    email = frame.select(pl.concat_str(
        pl.col("first_name").str.to_lowercase(), pl.lit("."), pl.col("last_name").str.to_lowercase(),
        pl.lit(f".{batch}."), pl.col("i").cast(pl.String), pl.lit("@"), pl.col("domain"),
    ).alias("email"))["email"]
    start_us = (config.start - EPOCH) // timedelta(microseconds=1)
    return pl.DataFrame({
        "userid": userids(email, batch, local, config.seed),
        "email": email,
        "first_name": fn,
        "last_name": ln,
        "country": values["country"].gather(pl.Series(values["country_of_city"][city_idx])),
        "city": values["city"].gather(pl.Series(city_idx)),
        "created_at": pl.Series(start_us - 1 - created).cast(pl.Datetime("us", "UTC")),
        "batch": pl.Series(np.full(n, batch, dtype=np.int32)),
    })
