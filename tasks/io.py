"""Read and write Parquet tables against the explicit schemas of tasks.schema.

Arrow does not enforce a schema's non-null flags or the column types a file was written with,
so reading checks them here: missing columns, nulls (also inside lists), and types. Integer
columns of another width are accepted when their values fit int32; strings, floats or lists
where an integer is expected are not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.checks import fail_first, list_row
from tasks.errors import DataError
from tasks.paths import require_file

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def read_table(path: str | Path, schema: pa.Schema) -> pa.Table:
    """Read the schema's columns of a Parquet file, checked and cast to the schema's types.

    The file's schema metadata is kept. Raises DataError naming the file, row and column.
    """
    path = require_file(path, "a Parquet file")
    try:
        file_schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(path, f"not a readable Parquet file ({error})") from None
    for field in schema:
        if field.name not in file_schema.names:
            found = ", ".join(file_schema.names) or "none"
            raise DataError(path, f"missing column, expected {field.type} (columns found: {found})", field=field.name)
    table = pq.read_table(path, columns=schema.names)
    columns = [_conform(path, table.column(field.name).combine_chunks(), field) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(file_schema.metadata or {}))


def write_table(path: str | Path, table: pa.Table, schema: pa.Schema) -> None:
    """Write `table` cast to `schema` (its metadata included) to a Parquet file."""
    table = table.select(schema.names).cast(schema)
    pq.write_table(table, path)


def _conform(path: Path, column: pa.Array, field: pa.Field) -> pa.Array:
    _check_no_nulls(path, column, field.name)
    expected = field.type
    if pa.types.is_string(expected):
        if pa.types.is_dictionary(column.type) and pa.types.is_string(column.type.value_type):
            column = column.dictionary_decode()
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            _wrong_type(path, column, field)
        return column.cast(expected)
    if pa.types.is_integer(expected):
        if not pa.types.is_integer(column.type):
            _wrong_type(path, column, field)
        _check_fits_int32(path, column, field.name)
        return column.cast(expected)
    if pa.types.is_list(expected):
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            _wrong_type(path, column, field)
        values = column.flatten()
        if not pa.types.is_integer(values.type):
            _wrong_type(path, column, field)

        def row_of(flat_index: int) -> int:  # only needed, so only computed, on failure
            return list_row(_offsets(column))(flat_index)

        if values.null_count:
            nulls = values.is_null().to_numpy(zero_copy_only=False)
            fail_first(nulls, path, field.name, lambda i: "null item inside the list", row_of=row_of)
        _check_fits_int32(path, values, field.name, row_of=row_of)
        return column.cast(expected)
    raise TypeError(f"no reader for column type {expected}")  # a schema in tasks.schema changed


def _check_no_nulls(path: Path, column: pa.Array, name: str) -> None:
    if column.null_count:
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        fail_first(nulls, path, name, lambda i: "null value, expected a value")


def _wrong_type(path: Path, column: pa.Array, field: pa.Field) -> None:
    example = repr(column[0].as_py()) if len(column) else ""
    example = example if len(example) <= 40 else example[:37] + "..."
    holds = f", row 0 holds {example}" if len(column) else ""
    raise DataError(path, f"column has type {column.type}, expected {field.type}{holds}", field=field.name)


def _offsets(column: pa.Array) -> np.ndarray:
    offsets = column.offsets.to_numpy()
    return offsets - offsets[0]


def _check_fits_int32(path: Path, values: pa.Array, name: str, row_of=None) -> None:
    if len(values) == 0 or values.type in (pa.int32(), pa.int16(), pa.int8(), pa.uint8(), pa.uint16()):
        return
    low, high = pc.min_max(values).values()
    if low.as_py() >= INT32_MIN and high.as_py() <= INT32_MAX:
        return
    array = values.to_numpy()
    bad = (array < INT32_MIN) | (array > INT32_MAX)
    fail_first(bad, path, name, lambda i: f"{array[i]} does not fit int32", row_of=row_of)
