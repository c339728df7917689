"""The generation stage's physical limit: tables of the synthetic data's shapes from plain numpy and Arrow.

Business purpose: tells how much of the generator's time is simulation (customers' behaviour, the
oracle) and how much is merely producing and writing rows of that size, which no change can avoid.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
LETTERS = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
EVENT_TYPES = pa.array(["advertising.impressions", "advertising.clicks", "web.webpagedetails.pageViews",
                        "web.webinteraction.linkClicks", "commerce.productViews", "commerce.purchases",
                        "decisioning.propositionDisplay", "decisioning.propositionInteract",
                        "decisioning.propositionDismiss", "directMarketing.emailSent",
                        "directMarketing.emailOpened", "directMarketing.emailClicked", "web.formFilledOut"])
PAGES = pa.array([f"page{i}" for i in range(15)])
URLS = pa.array([f"https://www.example.com/page{i}" for i in range(15)])
CAMPAIGNS = pa.array([f"email-w{i:02d}" for i in range(10)] + [f"display-w{i:02d}" for i in range(10)])
NAMES = pa.array([f"name{i}" for i in range(300)])
CITIES = pa.array([f"city{i}" for i in range(300)])
PRODUCER = pa.array(["aep_assets.synthetic"])


def fixed_strings(chars: np.ndarray) -> pa.Array:
    """One string per row of a (rows, width) byte matrix, without a Python string per value."""
    n, width = chars.shape
    offsets = (np.arange(n + 1, dtype=np.int32) * width)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(chars)))


def with_nulls(rng: np.random.Generator, pool: pa.Array, n: int, share_null: float, dictionary: bool) -> pa.Array:
    """n values drawn from `pool`, a share of them null, plain or dictionary-encoded."""
    index = pa.array(rng.integers(0, len(pool), n, dtype=np.int32), mask=rng.random(n) < share_null)
    if dictionary:
        return pa.DictionaryArray.from_arrays(index, pool)
    return pool.take(index)


def random_userids(rng: np.random.Generator, n_profiles: int) -> pa.Array:
    """ECID-wide profile ids: 38 digits each."""
    return fixed_strings(DIGITS[rng.integers(0, 10, (n_profiles, 38), dtype=np.uint8)])


def profile_shapes(rng: np.random.Generator, userid: pa.Array, dictionary: bool) -> pa.Table:
    """A profiles table with the product's columns and string widths, random values."""
    n_profiles = len(userid)
    return pa.table({
        "userid": userid,
        "email": fixed_strings(LETTERS[rng.integers(0, 26, (n_profiles, 30), dtype=np.uint8)]),
        "first_name": with_nulls(rng, NAMES, n_profiles, 0.0, dictionary),
        "last_name": with_nulls(rng, NAMES, n_profiles, 0.0, dictionary),
        "country": with_nulls(rng, CITIES, n_profiles, 0.0, dictionary),
        "city": with_nulls(rng, CITIES, n_profiles, 0.0, dictionary),
        "created_at": pa.array(rng.integers(1_600_000_000_000_000, 1_700_000_000_000_000, n_profiles),
                               pa.timestamp("us", "UTC")),
    })


def event_shapes(rng: np.random.Generator, userid: pa.Array, n_events: int, dictionary: bool) -> pa.Table:
    """An experience events table of those profiles with the product's columns and null shares."""
    user = rng.integers(0, len(userid), n_events, dtype=np.int32)
    event_userid = (pa.DictionaryArray.from_arrays(pa.array(user), userid) if dictionary
                    else userid.take(pa.array(user)))
    producer_index = pa.array(np.zeros(n_events, np.int32))
    return pa.table({
        "event_id": fixed_strings(HEX_CHARS[rng.integers(0, 16, (n_events, 36), dtype=np.uint8)]),
        "userid": event_userid,
        "event_type": with_nulls(rng, EVENT_TYPES, n_events, 0.0, dictionary),
        "timestamp": pa.array(np.sort(rng.integers(1_700_000_000_000_000, 1_706_000_000_000_000, n_events)),
                              pa.timestamp("us", "UTC")),
        "produced_by": (pa.DictionaryArray.from_arrays(producer_index, PRODUCER) if dictionary
                        else PRODUCER.take(producer_index)),
        "page_name": with_nulls(rng, PAGES, n_events, 0.6, dictionary),
        "page_url": with_nulls(rng, URLS, n_events, 0.6, dictionary),
        "campaign_id": with_nulls(rng, CAMPAIGNS, n_events, 0.3, dictionary),
    })


def probe_generation(profile_files: list[Path], event_files: list[Path], scratch: Path) -> dict:
    """The same tables (row counts, columns, string widths, zstd parquet per batch) from plain numpy/Arrow.

    No simulation, no oracle: random values of the right shapes. Strings are plain (not dictionary)
    because the datasets' schema is plain strings; the dictionary variant is timed beside it.
    """
    rng = np.random.default_rng(0)
    result = {}
    scratch.mkdir(parents=True, exist_ok=True)
    for variant, dictionary in (("plain", False), ("dictionary", True)):
        build_s = write_s = 0.0
        for index, (profile_file, event_file) in enumerate(zip(profile_files, event_files, strict=True)):
            n_profiles = pq.ParquetFile(profile_file).metadata.num_rows
            n_events = pq.ParquetFile(event_file).metadata.num_rows
            started = time.perf_counter()
            userid = random_userids(rng, n_profiles)
            profiles = profile_shapes(rng, userid, dictionary)
            events = event_shapes(rng, userid, n_events, dictionary)
            build_s += time.perf_counter() - started
            started = time.perf_counter()
            pq.write_table(profiles, scratch / f"profiles-{index}.parquet", compression="zstd")
            pq.write_table(events, scratch / f"events-{index}.parquet", compression="zstd")
            write_s += time.perf_counter() - started
            del userid, profiles, events
        result[variant] = {"build_s": build_s, "write_s": write_s, "seconds": build_s + write_s}
    shutil.rmtree(scratch, ignore_errors=True)
    return {"seconds": result["plain"]["seconds"], **result}
