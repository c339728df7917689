"""Identities of synthetic users and events, unique across every batch of a seed by construction.

A `userid` is 38 digits, two 19-digit halves: the FNV-1a 64 hash of the email (over its bytes,
vectorised per character position) and a keyed bijection of the user's number (batch, index in the
batch), which the email embeds. The second half makes ids unique across all batches of a seed
whatever the batch sizes (a batch landed later may use another `profiles`). An event id is a
UUID-shaped string of the keyed user number and the event's sequence among the user's events.
Keys come from the seed; strings are built from byte matrices, without Python rows.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from aep_assets.lib.hashing import fnv1a64

MASK63 = np.uint64((1 << 63) - 1)
TEN19 = np.uint64(10**19)


def mix63(x: np.ndarray, key: int) -> np.ndarray:
    """A keyed bijection of [0, 2^63): xor, odd multiplications and xorshifts, all invertible."""
    z = (x.astype(np.uint64) ^ np.uint64(key)) & MASK63
    z ^= z >> np.uint64(31)
    z = (z * np.uint64(0xBF58476D1CE4E5B9)) & MASK63
    z ^= z >> np.uint64(27)
    z = (z * np.uint64(0x94D049BB133111EB)) & MASK63
    z ^= z >> np.uint64(31)
    return z


def strings(chars: np.ndarray) -> pl.Series:
    """A string Series from an (n, width) uint8 matrix of ASCII characters, without Python rows."""
    n, width = chars.shape
    offsets = np.arange(n + 1, dtype=np.int64) * width
    data = np.ascontiguousarray(chars)
    return pl.Series(pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)))


def digits(values: np.ndarray, width: int = 19) -> np.ndarray:
    """The decimal digits of unsigned values, zero-padded to `width`, as an (n, width) ASCII matrix."""
    out = np.empty((values.size, width), dtype=np.uint8)
    v = values.astype(np.uint64)
    ten = np.uint64(10)
    for i in range(width - 1, -1, -1):
        out[:, i] = (v % ten).astype(np.uint8) + ord("0")
        v = v // ten
    return out


def uuid_like(hi: np.ndarray, lo: np.ndarray) -> pl.Series:
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
    return strings(out)


def keys(seed: int) -> tuple[int, int, int]:
    """The seed's keys: of user ids, of event ids, and the event ids' final mix."""
    state = np.random.SeedSequence(seed).generate_state(3, dtype=np.uint64)
    return int(state[0] & MASK63), int(state[1] & MASK63), int(state[2])


def user_keys(batch: int, users: np.ndarray) -> np.ndarray:
    """A user's number among all batches of a seed, whatever their sizes: (batch, index in batch)."""
    return (np.int64(batch) << np.int64(32)) + users.astype(np.int64)


def userids(emails: pl.Series, batch: int, users: np.ndarray, seed: int) -> pl.Series:
    """The 38-digit userids of a batch's users (index in the batch) with these emails."""
    id_key, _, _ = keys(seed)
    email_hash = fnv1a64(emails.rechunk().to_arrow()) % TEN19
    return strings(np.concatenate([digits(email_hash), digits(mix63(user_keys(batch, users), id_key))], axis=1))


def event_ids(batch: int, user: np.ndarray, seq: np.ndarray, seed: int) -> pl.Series:
    """UUID-shaped ids of events, from their user (index in the batch) and sequence among its events."""
    _, event_key, mix_key = keys(seed)
    hi = mix63(user_keys(batch, user), event_key)
    lo = seq.astype(np.uint64) ^ hi
    lo ^= lo >> np.uint64(33)
    lo *= np.uint64(0xFF51AFD7ED558CCD)
    lo ^= lo >> np.uint64(33)
    lo ^= np.uint64(mix_key)
    return uuid_like(hi, lo)
