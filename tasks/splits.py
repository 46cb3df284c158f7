"""Deterministic train/valid/test assignment by user.

A user's split is a hash of (user_id, seed), not a permutation of the user list, so one user
lands in the same split in every task of a data set and in every re-import: no user is trained on
in one task and tested on in another. All rows of one user share the user's split.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.schema import SPLITS

_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def split_codes(user_ids, seed: int, *, valid: float = 0.1, test: float = 0.1) -> np.ndarray:
    """Split code per user id (0 train, 1 valid, 2 test), about (1-valid-test)/valid/test of users."""
    if not (0 <= valid and 0 <= test and valid + test < 1):
        raise ValueError(f"valid ({valid}) and test ({test}) shares must be >= 0 and sum below 1")
    position = unit_hash(user_ids, seed)
    codes = np.zeros(len(position), dtype=np.int8)
    codes[position >= 1 - valid - test] = 1
    codes[position >= 1 - test] = 2
    return codes


def split_names(codes: np.ndarray) -> np.ndarray:
    """Split names ("train"|"valid"|"test") for split codes."""
    return np.asarray(SPLITS, dtype=object)[codes]


def unit_hash(strings, seed: int) -> np.ndarray:
    """A float in [0, 1) per string, uniform and fixed for (string, seed) on every platform."""
    array = pa.array(strings, type=pa.string()) if not isinstance(strings, pa.Array) else strings.cast(pa.string())
    n = len(array)
    offsets_buffer, data_buffer = array.buffers()[1], array.buffers()[2]
    offsets = np.frombuffer(offsets_buffer, dtype=np.int32)[array.offset : array.offset + n + 1].astype(np.int64)
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    starts = offsets[:-1]
    hashes = np.full(n, _splitmix(seed & _MASK), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(int(lengths.max()) if n else 0):  # FNV-1a, one byte position at a time
            active = np.flatnonzero(lengths > k)
            hashes[active] = (hashes[active] ^ data[starts[active] + k].astype(np.uint64)) * _FNV_PRIME
        hashes = _mix(hashes ^ lengths.astype(np.uint64))
    return (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _splitmix(value: int) -> int:
    value = (value + _GOLDEN) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _mix(h: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: spreads FNV's weak low bits over the whole word.
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))
