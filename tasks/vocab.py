"""Item vocabularies: dense ids <-> the ids of the original data (source items, coldrec targets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks import schema
from tasks.checks import check_range, check_unique
from tasks.errors import DataError
from tasks.io import read_table, write_table


def write_item_vocab(path: str | Path, raw_ids) -> None:
    """Write source/items.parquet: raw_ids[k] gets dense item id k + 1 (0 is padding)."""
    _write(path, raw_ids, schema.ITEMS, "item_id", first_id=1)


def write_target_vocab(path: str | Path, raw_ids) -> None:
    """Write tasks/<name>.items.parquet: raw_ids[k] gets target id k."""
    _write(path, raw_ids, schema.TARGET_ITEMS, "target_id", first_id=0)


def read_item_vocab(path: str | Path) -> np.ndarray:
    """Raw id of every dense item id, object (vocab_size,); entry 0 (padding) is None."""
    return _read(Path(path), schema.ITEMS, "item_id", first_id=1)


def read_target_vocab(path: str | Path, target_vocab: int | None = None) -> np.ndarray:
    """Raw id of every target id, object (target_vocab,)."""
    raw = _read(Path(path), schema.TARGET_ITEMS, "target_id", first_id=0)
    if target_vocab is not None and len(raw) != target_vocab:
        raise DataError(path, f"{len(raw)} target ids, expected target_vocab = {target_vocab}", field="target_id")
    return raw


def _write(path, raw_ids, table_schema: pa.Schema, id_field: str, first_id: int) -> None:
    raw = pa.array(np.asarray(raw_ids, dtype=object).astype(str), type=pa.string())
    ids = pa.array(np.arange(first_id, first_id + len(raw), dtype=np.int32))
    write_table(path, pa.table({id_field: ids, "raw_id": raw}), table_schema)


def _read(path: Path, table_schema: pa.Schema, id_field: str, first_id: int) -> np.ndarray:
    table = read_table(path, table_schema)
    ids = table.column(id_field).to_numpy()
    raw = table.column("raw_id").combine_chunks()
    check_unique(path, table.column(id_field).combine_chunks(), id_field, id_field)
    check_unique(path, raw, "raw_id", "raw id")
    size = len(ids) + first_id
    check_range(ids, first_id, size - 1, path, id_field, f"dense ids of {len(ids)} entries")
    out = np.full(size, None, dtype=object)
    out[ids] = raw.to_numpy(zero_copy_only=False)
    return out
