"""User item sequences in CSR form: the source domain that pretraining reads and every task indexes."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import schema
from tasks.checks import check_range, check_unique, fail_first, list_row
from tasks.errors import DataError
from tasks.io import read_table, write_table


class Sequences:
    """All users' item sequences: user i's items, oldest first, are items[offsets[i]:offsets[i+1]].

    Plain numpy arrays, so it pickles cheaply to other processes (the lookup index is rebuilt
    lazily after unpickling).
    """

    def __init__(self, user_ids, offsets, items, vocab_size: int, path: str | Path | None = None):
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.items = np.asarray(items, dtype=np.int32)
        self.vocab_size = int(vocab_size)
        self.path = Path(path) if path is not None else None
        self._index: pa.Array | None = None
        if len(self.offsets) != len(self.user_ids) + 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.items):
            raise ValueError("offsets must have len(user_ids) + 1 entries, from 0 to len(items)")

    @classmethod
    def from_lists(cls, user_ids: Sequence[str], sequences: Sequence[Sequence[int]], vocab_size: int) -> "Sequences":
        """Build from one item list per user."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        items = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if len(sequences) else []
        return cls(user_ids, offsets, items, vocab_size)

    def __len__(self) -> int:
        return len(self.user_ids)

    def __repr__(self) -> str:
        return f"Sequences({len(self)} users, {len(self.items)} items, vocab_size={self.vocab_size})"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_index": None}

    @property
    def lengths(self) -> np.ndarray:
        """Number of items per user, int64 (n,)."""
        return np.diff(self.offsets)

    def sequence(self, row: int) -> np.ndarray:
        """Items of one user, oldest first."""
        return self.items[self.offsets[row] : self.offsets[row + 1]]

    def row_of(self, user_ids, *, path: str | Path | None = None, field: str = "user_id") -> np.ndarray:
        """Row of each user id, int64 (len(user_ids),), by hash lookup.

        An unknown id raises DataError whose row is its position in `user_ids` and whose path is
        `path` (the file the ids came from, when the caller knows it).
        """
        return self.rows_of([(user_ids, path)], field=field)[0]

    def rows_of(self, queries: list[tuple[object, str | Path | None]], field: str = "user_id") -> list[np.ndarray]:
        """row_of for several (user_ids, path) at once, in one lookup: building the hash of the
        sequences' ids is the cost (about 0.5 s at 2 million users), so a job's tasks share one."""
        if self._index is None:
            self._index = pa.array(self.user_ids, type=pa.string())
        arrays = [(ids if isinstance(ids, pa.Array) else pa.array(ids)).cast(pa.string()) for ids, _ in queries]
        found = pc.index_in(pa.concat_arrays(arrays) if arrays else pa.array([], pa.string()),
                            value_set=self._index)
        where = self.path.name if self.path else "the sequences table"
        out, start = [], 0
        for query, (_, path) in zip(arrays, queries):
            part = found.slice(start, len(query))
            start += len(query)
            if part.null_count:
                fail_first(
                    part.is_null().to_numpy(zero_copy_only=False), path or "user lookup", field,
                    lambda i, query=query: f"unknown user {query[i].as_py()!r}: not in {where}",
                )
            out.append(part.to_numpy(zero_copy_only=False).astype(np.int64))
        return out

    def padded(self, rows: np.ndarray, max_len: int) -> np.ndarray:
        """The most recent `max_len` items of each row, left-padded with 0: int64 (len(rows), max_len)."""
        rows = np.asarray(rows, dtype=np.int64)
        ends = self.offsets[rows + 1]  # (B,)
        kept = np.minimum(ends - self.offsets[rows], max_len)  # (B,)
        column = np.arange(max_len)  # (L,)
        filled = column[None, :] >= (max_len - kept)[:, None]  # (B, L): True where an item goes
        source = ends[:, None] - max_len + column[None, :]  # (B, L): flat index of that item
        out = np.zeros((len(rows), max_len), dtype=np.int64)
        out[filled] = self.items[source[filled]]
        return out


def read_sequences(path: str | Path, vocab_size: int | None = None) -> Sequences:
    """Read and validate source/sequences.parquet.

    `vocab_size` (from the spec) must match the one in the file's schema metadata when both are
    present; with neither it is max item id + 1. Rejects null or empty user ids, duplicate users,
    empty sequences and item ids outside 1..vocab_size-1 (0 is padding, never stored).
    """
    path = Path(path)
    table = read_table(path, schema.SEQUENCES)
    vocab_size = _vocab_size(path, table, vocab_size)
    user_ids = table.column("user_id").combine_chunks()
    _check_user_ids(path, user_ids)
    column = table.column("items").combine_chunks()
    offsets = column.offsets.to_numpy().astype(np.int64) - column.offsets[0].as_py()
    items = column.flatten().to_numpy()
    lengths = np.diff(offsets)
    fail_first(lengths == 0, path, "items", lambda i: "empty sequence, expected at least one item")
    check_range(
        items, 1, vocab_size - 1, path, "items", f"item ids, 0 is padding; vocab_size = {vocab_size}",
        row_of=list_row(offsets),
    )
    return Sequences(user_ids.to_numpy(zero_copy_only=False), offsets, items, vocab_size, path=path)


def write_sequences(path: str | Path, sequences: Sequences) -> None:
    """Write source/sequences.parquet, with vocab_size in the schema metadata."""
    if sequences.offsets[-1] >= 2**31:
        raise ValueError("more than 2**31 items in all: list<int32> offsets overflow")
    items = pa.ListArray.from_arrays(
        pa.array(sequences.offsets.astype(np.int32)), pa.array(sequences.items, type=pa.int32())
    )
    table = pa.table({"user_id": pa.array(sequences.user_ids, type=pa.string()), "items": items})
    metadata = {schema.VOCAB_SIZE_KEY: str(sequences.vocab_size).encode()}
    write_table(path, table, schema.SEQUENCES.with_metadata(metadata))


def _check_user_ids(path: Path, user_ids: pa.Array) -> None:
    empty = pc.equal(pc.utf8_length(user_ids), 0).to_numpy(zero_copy_only=False)
    fail_first(empty, path, "user_id", lambda i: "empty user id")
    check_unique(path, user_ids, "user_id", "user")


def _vocab_size(path: Path, table: pa.Table, given: int | None) -> int:
    stored = (table.schema.metadata or {}).get(schema.VOCAB_SIZE_KEY)
    if stored is not None:
        try:
            stored = int(stored)
        except ValueError:
            raise DataError(path, f"schema metadata holds {stored!r}, expected an integer", field="vocab_size") from None
    if given is not None and stored is not None and given != stored:
        raise DataError(
            path, f"{stored} in the file's schema metadata disagrees with vocab_size = {given} of the spec",
            field="vocab_size",
        )
    vocab_size = given if given is not None else stored
    if vocab_size is None:
        items = table.column("items").combine_chunks().flatten()
        vocab_size = (pc.max(items).as_py() or 0) + 1
    if vocab_size < 2:
        raise DataError(path, f"{vocab_size} leaves no item ids (expected >= 2)", field="vocab_size")
    return int(vocab_size)
