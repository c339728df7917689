"""The held-out split: by profile id alone, the same for every library version, nested across fractions."""

from itertools import pairwise

import numpy as np
import polars as pl
import pytest

from aep_assets.lib.holdout import HOLDOUT_KEY, holdout_hash, is_held_out

# Literal values of the documented algorithm (reference_hash computes them in plain integers): a change of
# any of them moves profiles between training and test, so they change only with a deliberate new split.
GOLDEN = [  # (id, 64-bit hash, held out at 0.25)
    ("00000000000000000000000000000000000000", 0xE199DC2B7DA3C974, True),
    ("00000000000000000000000000000000000001", 0xD8A671DB7E1D0ACF, True),
    ("00000000000000000000000000000000000003", 0x001848BD9B5C657A, False),
    ("00000000000000000000000000000000000005", 0xAC13BDA766A80FF2, False),
    ("00000000000000000000000000000000000008", 0x9A79063BE207B531, False),
    ("12345678901234567890123456789012345678", 0xCA76A91044DBA27C, True),
    ("98765432109876543210987654321098765432", 0x1ED3395D7A1ABDE6, True),
    ("5555555555555555555555555555555555555", 0xE34F6F1AD891B51E, True),
    ("profile-ü", 0x42EE1755605531B2, True),
    ("", 0xC86A377593DFA4FE, False),
]


def reference_hash(profile_id: str) -> int:
    """The documented algorithm in plain integers: FNV-1a 64 of the key and the id's UTF-8 bytes,
    then SplitMix64's finaliser."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for byte in HOLDOUT_KEY + profile_id.encode():
        h = ((h ^ byte) * 0x100000001B3) & mask
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
    return h ^ (h >> 31)


def test_the_split_of_fixed_ids_is_fixed():
    ids = pl.Series([i for i, _, _ in GOLDEN])
    assert [int(h) for h in holdout_hash(ids)] == [h for _, h, _ in GOLDEN]
    assert is_held_out(ids, 0.25).tolist() == [held for _, _, held in GOLDEN]
    assert [reference_hash(i) for i, _, _ in GOLDEN] == [h for _, h, _ in GOLDEN]


def test_the_vectorised_hash_is_the_documented_algorithm():
    """Ids of mixed lengths, multi-byte characters, a sliced Series: numpy's per-position loop gives what
    the plain-integer definition gives."""
    rng = np.random.default_rng(7)
    ids = [f"{int(n):d}" for n in rng.integers(0, 10**18, 300)] + ["ü", "€uro-7", "a" * 70]
    series = pl.Series(ids)[5:]
    assert [int(h) for h in holdout_hash(series)] == [reference_hash(i) for i in ids[5:]]
    assert holdout_hash(pl.Series([], dtype=pl.String)).size == 0


def test_a_smaller_fraction_holds_out_a_subset_of_a_larger_one():
    ids = pl.Series([f"{i:038d}" for i in range(20_000)])
    shares = [is_held_out(ids, f) for f in (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)]
    assert not shares[0].any() and shares[-1].all()
    for smaller, larger in pairwise(shares):
        assert not (smaller & ~larger).any()
    assert 0.09 < shares[2].mean() < 0.11 and 0.48 < shares[4].mean() < 0.52


def test_split_is_by_profile_and_stable():
    ids = pl.Series([f"{i:038d}" for i in range(20_000)])
    test = is_held_out(ids, 0.25)
    assert 0.23 < test.mean() < 0.27
    shuffled = ids.sample(fraction=1.0, shuffle=True, seed=3)
    again = dict(zip(shuffled.to_list(), is_held_out(shuffled, 0.25), strict=True))
    assert all(again[i] == t for i, t in zip(ids.to_list(), test, strict=True))


def test_a_fraction_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        is_held_out(pl.Series(["a"]), 1.5)
