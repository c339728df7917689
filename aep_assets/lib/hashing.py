"""FNV-1a 64 over strings, vectorised: the one string hash the project defines by its algorithm (the
synthetic user ids, the holdout split), so its values never depend on a library's version."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1


def fnv1a64(strings: pa.Array | pa.ChunkedArray, state: int = FNV_OFFSET_BASIS) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, continued from `state` (a null hashes as the empty string).
    One numpy step per byte position: all strings at once up to the shortest length, then the longer ones."""
    strings = strings.cast(pa.large_string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset: strings.offset + len(strings) + 1]
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8) if len(strings) else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(strings), state, dtype=np.uint64)
    prime = np.uint64(FNV_PRIME)
    shortest, longest = (int(lengths.min()), int(lengths.max())) if len(strings) else (0, 0)
    for pos in range(shortest):
        h = (h ^ data[starts + pos]) * prime
    for pos in range(shortest, longest):
        idx = np.flatnonzero(lengths > pos)
        h[idx] = (h[idx] ^ data[starts[idx] + pos]) * prime
    return h
