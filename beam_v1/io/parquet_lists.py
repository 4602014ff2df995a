"""Read Parquet `fixed_size_list` columns whose rows include nulls, which pyarrow 25's own
reader refuses ("Expected all lists to be of size=k but index i had size=0",
apache/arrow#35692: a null row is stored with no values, and the reader checks every row's
length before it applies the validity mask).

Parquet stores a fixed-size list as a plain LIST; only the Arrow schema kept in the file's
key-value metadata (`ARROW:schema`) makes pyarrow rebuild `fixed_size_list<k>`. Opening the
file with that schema rewritten to variable `list`s (`lists_metadata`: the same row groups,
the same column chunks) reads such columns as `list`, in slices like any other; and
`restore_fixed` turns them back into the file's `fixed_size_list<k>` with the null rows
null, so the reader's callers see the type the footer announces.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_LIST_TYPES = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)


def has_fixed_lists(schema: pa.Schema) -> bool:
    """Whether any column of `schema` is, or holds at some list depth, a fixed_size_list."""
    return any(_variable(f.type) != f.type for f in schema)


def as_variable_lists(schema: pa.Schema) -> pa.Schema:
    """`schema` with every fixed_size_list (at any list depth) a variable `list`."""
    return pa.schema(
        [f.with_type(_variable(f.type)) for f in schema], metadata=schema.metadata
    )


def _variable(t: pa.DataType) -> pa.DataType:
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_variable(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_variable(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_variable(t.value_type)))
    return t


def lists_metadata(parquet: pq.ParquetFile) -> pq.FileMetaData:
    """The footer of `parquet` with its Arrow schema's fixed_size_lists as variable lists:
    pass it as `pq.ParquetFile(source, metadata=...)` to read those columns as `list`.

    Raises ValueError when the file's Parquet schema is not the one pyarrow writes for its
    Arrow schema (then the row groups cannot be attached to the rewritten footer).
    """
    original = parquet.metadata
    schema = as_variable_lists(parquet.schema_arrow)
    last: Exception | None = None
    for compliant in (True, False):  # child named "element" (the spec) or "item" (legacy)
        sink = io.BytesIO()
        pq.write_metadata(schema, sink, use_compliant_nested_type=compliant)
        sink.seek(0)
        rewritten = pq.read_metadata(sink)
        try:
            rewritten.append_row_groups(original)
        except (RuntimeError, pa.ArrowException) as e:
            last = e
            continue
        return rewritten
    raise ValueError(f"its Parquet schema is not the one pyarrow writes for {schema}: {last}")


def restore_fixed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`, read with `as_variable_lists(schema)`, with its columns of `schema`'s types:
    each variable list back to fixed_size_list<k> (a null row stays null). Raises
    pa.ArrowInvalid naming the column when a non-null row has not k items."""
    if not has_fixed_lists(schema):
        return table
    columns = []
    for name, column in zip(table.column_names, table.columns):
        target = schema.field(name).type
        if target == column.type:
            columns.append(column)
            continue
        try:
            chunks = [_fixed(chunk, target) for chunk in column.chunks]
        except pa.ArrowInvalid as e:
            raise pa.ArrowInvalid(f"column {name!r}: {e}") from e
        columns.append(pa.chunked_array(chunks, target))
    return pa.Table.from_arrays(
        columns, schema=pa.schema([schema.field(n) for n in table.column_names])
    )


def _fixed(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """`arr` (a variable list array read for `target`) as `target`."""
    if arr.type == target:
        return arr
    if not any(is_list(target) for is_list in _LIST_TYPES):
        return arr
    offsets = np.asarray(arr.offsets, dtype=np.int64)  # n + 1, the slice's own
    valid = np.asarray(arr.is_valid(), dtype=bool) if arr.null_count else None
    values = _fixed(arr.values, target.value_type)  # the whole child, as offsets index it
    if not pa.types.is_fixed_size_list(target):
        make = pa.LargeListArray if pa.types.is_large_list(target) else pa.ListArray
        mask = None if valid is None else pa.array(~valid)
        return make.from_arrays(pa.array(offsets, arr.offsets.type), values,
                                type=target, mask=mask)
    k = target.list_size
    lengths = np.diff(offsets)
    wrong = lengths != k if valid is None else valid & (lengths != k)
    if wrong.any():
        row = int(np.flatnonzero(wrong)[0])
        raise pa.ArrowInvalid(f"row {row} has {int(lengths[row])} items where "
                              f"{target} holds {k}")
    n = len(arr)
    if valid is None:  # no null row: the rows' values are contiguous
        return pa.FixedSizeListArray.from_arrays(
            values.slice(int(offsets[0]), n * k), type=target
        )
    mask = pa.array(~valid)
    held = values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    numeric = pa.types.is_integer(held.type) or pa.types.is_floating(held.type)
    if numeric and held.null_count == 0 and not lengths[~valid].any():
        # the valid rows' values are contiguous: scatter them into n rows of k (null rows 0)
        flat = held.to_numpy()
        dense = np.zeros((n, k), dtype=flat.dtype)
        dense[valid] = flat.reshape(-1, k)
        return pa.FixedSizeListArray.from_arrays(
            pa.array(dense.ravel(), held.type), type=target, mask=mask
        )
    starts = np.where(valid, offsets[:-1], 0)  # a null row takes the first value k times
    take = (starts[:, None] + np.arange(k, dtype=np.int64)).ravel()
    child = values.take(pa.array(take, mask=np.repeat(~valid, k)))  # ... masked to null
    return pa.FixedSizeListArray.from_arrays(child, type=target, mask=mask)
