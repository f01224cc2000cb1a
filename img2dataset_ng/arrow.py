"""Arrow tables from Python rows, without importing pandas.

pyarrow (26) imports pandas, when it is installed, on its first conversion of Python or NumPy values
(`pa.array`, `Table.from_pylist`): its pandas shim asks whether the values are a pandas object. That
import is about 0.5 s of wall time, and more of CPU, in every worker process that writes a metadata
file, for nothing. `Array.from_buffers` asks nothing, so the metadata's own column types (strings,
binaries, integers, floats, booleans, fixed-size lists of floats: the embeddings) are built here from
NumPy buffers; any other type (a user's additional column) goes through `pa.array`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

NUMBERS = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.uint8(): np.uint8,
    pa.uint16(): np.uint16,
    pa.uint32(): np.uint32,
    pa.uint64(): np.uint64,
    pa.float32(): np.float32,
    pa.float64(): np.float64,
}
# the Python values each type takes here (others, such as a float in an integer column, go to pa.array)
KINDS = {
    **{type_.id: (int, np.integer) for type_ in NUMBERS if pa.types.is_integer(type_)},
    **{type_.id: (int, float, np.integer, np.floating) for type_ in NUMBERS if pa.types.is_floating(type_)},
    pa.bool_().id: (bool, np.bool_),
}
MAX_OFFSET = 2**31 - 1  # string and binary arrays have 32-bit offsets


def table(rows: Sequence[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """`pa.Table.from_pylist(rows, schema=schema)`: a missing key is a null."""
    columns = [array([row.get(field.name) for row in rows], field.type) for field in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def array(values: list[Any], type_: pa.DataType) -> pa.Array:
    """`pa.array(values, type_)` for the types listed above, from buffers; through `pa.array` otherwise."""
    try:
        built = _from_buffers(values, type_)
    except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
        built = None  # a value pa.array converts otherwise (or rejects with its own message)
    return built if built is not None else pa.array(values, type_)


def _from_buffers(values: list[Any], type_: pa.DataType) -> pa.Array | None:
    count = len(values)
    present = np.fromiter((value is not None for value in values), dtype=bool, count=count)
    nulls = count - int(np.count_nonzero(present))
    validity = pa.py_buffer(np.packbits(present, bitorder="little")) if nulls else None
    if type_ == pa.string() or type_ == pa.binary():
        if type_ == pa.string():
            if not all(isinstance(value, str) for value in values if value is not None):
                return None
            data = [value.encode() for value in values if value is not None]
        else:
            data = [value for value in values if value is not None]
            if not all(isinstance(value, bytes) for value in data):
                return None
        lengths = np.zeros(count + 1, np.int64)
        lengths[1:][present] = [len(piece) for piece in data]
        offsets = np.cumsum(lengths)
        if offsets[-1] > MAX_OFFSET:
            return None
        buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))]
        return pa.Array.from_buffers(type_, count, buffers, null_count=nulls)
    if type_ in NUMBERS or type_ == pa.bool_():
        kinds = KINDS[type_.id]
        if not all(
            isinstance(value, kinds) and (type_ == pa.bool_() or not isinstance(value, bool))
            for value in values
            if value is not None
        ):
            return None  # a float in an integer column, a string...: pa.array's conversion or its error
        dtype = NUMBERS.get(type_, np.bool_)
        filled = np.array([value if value is not None else 0 for value in values], dtype=dtype)
        data = pa.py_buffer(np.packbits(filled, bitorder="little") if type_ == pa.bool_() else filled)
        return pa.Array.from_buffers(type_, count, [validity, data], null_count=nulls)
    if pa.types.is_fixed_size_list(type_) and type_.value_type in NUMBERS:
        size, dtype = type_.list_size, NUMBERS[type_.value_type]
        flat = np.zeros((count, size), dtype)
        for row, value in enumerate(values):
            if value is not None:
                flat[row] = value  # raises ValueError on a row of another length
        child = pa.Array.from_buffers(type_.value_type, count * size, [None, pa.py_buffer(flat)])
        return pa.Array.from_buffers(type_, count, [validity], null_count=nulls, children=[child])
    if type_ == pa.null():
        return pa.nulls(count) if nulls == count else None
    return None
