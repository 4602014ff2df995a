"""Per-file schema drift (SPEC §8): each Parquet file's schema against the first file's.

The first input file's schema is the schema of the run (the plan, the scored output and the
dead letter are built from it). `FileSchemas` judges every other file from its footer alone,
and casts or sets aside its tables. No Beam in here.

- A column whose type differs from the first file's is cast when the two types are of the
  same kind: the rule `columns.make_plan` applies to inputs (`numpy.can_cast(...,
  'same_kind')` on the leaf type: int32 -> int64 yes, double -> int64 no), string and binary
  among themselves, timestamps among themselves, dates among themselves, at the same list
  depth. The cast checks values: a table holding a value the first file's type cannot hold
  (an int that overflows, a float that becomes infinite) is set aside whole.
- A column of the first file that a later file lacks is null in that file's rows, unless it
  feeds a signature input: then the file cannot be scored.
- A column that only a later file has is dropped.
A file that cannot be cast (`problems` is not empty) has its rows sent to the dead letter,
each with a reason naming the file, the column, its type and the type the input takes.

Dead-letter rows have the dead letter's schema (the first file's columns, then `error`). A
drifted column keeps its values there when they cast to that type (Arrow's value-checked
cast: int64 -> string, double 2.0 -> int64); otherwise the column is null in those rows and
each row's value is appended to its `error` as text, so nothing of the row is lost.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_v1.scoring.columns import ERROR_COLUMN, FeedPlan, is_list_type, leaf_numpy_dtype
from beam_v1.text import first_line

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


@dataclasses.dataclass(frozen=True)
class FileSchemas:
    """The run's schema (the first file's) and what each of its columns feeds (picklable)."""

    schema: pa.Schema  # the first input file's
    failed_schema: pa.Schema  # the dead letter's: the first file's columns + `error`
    feeds: tuple[tuple[str, str], ...] = ()  # (column, "input 'b' (int64 [-1])")

    @classmethod
    def from_plan(cls, schema: pa.Schema, failed_schema: pa.Schema, plan: FeedPlan):
        feeds: dict[str, list[str]] = {}
        for inp in plan.inputs:
            if inp.column in schema.names:
                feeds.setdefault(inp.column, []).append(
                    f"input {inp.key!r} ({inp.spec.dtype} {inp.spec.shape_str()})"
                )
        return cls(schema, failed_schema, tuple((c, " and ".join(v)) for c, v in feeds.items()))

    def problems(self, schema: pa.Schema) -> list[str]:
        """Why tables of a file with `schema` cannot be cast to the run's schema (none: [])."""
        feeds = dict(self.feeds)
        found = []
        for field in self.schema:
            needs = feeds.get(field.name)
            if field.name not in schema.names:
                if needs:
                    found.append(f"no column {field.name!r}, which feeds {needs}")
                continue
            got = schema.field(field.name).type
            if got == field.type or same_kind(got, field.type):
                continue
            if needs:
                found.append(
                    f"column {field.name!r} is {got} where {needs} takes {field.type} (the "
                    f"first input file's type), and {got} does not cast safely to {field.type}"
                )
            else:
                found.append(
                    f"column {field.name!r} is {got} where the first input file's is "
                    f"{field.type}, and {got} does not cast safely to {field.type}"
                )
        return found

    def extra_columns(self, schema: pa.Schema) -> list[str]:
        return [n for n in schema.names if n not in self.schema.names]

    def conform(self, table: pa.Table) -> pa.Table:
        """`table` (of a file without `problems`) as the run's schema: its columns, order and
        types; a missing column as nulls. Raises `pa.ArrowInvalid` naming the column when
        a value does not fit the run's type."""
        if table.schema.equals(self.schema):
            return table
        arrays = []
        for field in self.schema:
            if field.name not in table.column_names:
                arrays.append(pa.nulls(table.num_rows, field.type))
                continue
            column = table.column(field.name)
            if column.type != field.type:
                try:
                    column = cast_checked(column, field.type)
                except _CAST_ERRORS as e:
                    raise pa.ArrowInvalid(
                        f"column {field.name!r} ({column.type}) holds a value that "
                        f"{field.type} cannot: {first_line(e)}"
                    ) from e
            arrays.append(column)
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def dead_letter(self, table: pa.Table, reason: str) -> pa.Table:
        """Every row of `table` as a dead-letter row (the dead letter's schema) with `reason`."""
        n = table.num_rows
        arrays, as_text = [], []
        for field in self.failed_schema:
            if field.name == ERROR_COLUMN:
                continue
            if field.name not in table.column_names:
                arrays.append(pa.nulls(n, field.type))
                continue
            column = table.column(field.name)
            try:
                arrays.append(column if column.type == field.type
                              else cast_checked(column, field.type))
            except _CAST_ERRORS:
                arrays.append(pa.nulls(n, field.type))
                as_text.append((field.name, column))
        error = pa.array(np.full(n, reason, dtype=object), pa.string())
        for name, column in as_text:
            error = pc.binary_join_element_wise(
                error, pa.scalar(f"; the value of {name!r} as text: "), text(column), "",
                null_handling="replace", null_replacement="null",
            )
        return pa.Table.from_arrays(arrays + [error], schema=self.failed_schema)


def same_kind(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether a column of type `source` may be cast to `target` (see the module doc)."""
    if source == target or pa.types.is_null(source):
        return True
    source, target = _undictionary(source), _undictionary(target)
    if is_list_type(source) or is_list_type(target):
        return is_list_type(source) and is_list_type(target) and same_kind(
            source.value_type, target.value_type
        )
    for group in (pa.types.is_timestamp, pa.types.is_date):
        if group(source) or group(target):
            return group(source) and group(target)
    src, dst = leaf_numpy_dtype(source), leaf_numpy_dtype(target)
    if src is None or dst is None:
        return source == target
    if src.kind == "O" or dst.kind == "O":  # strings and binary, among themselves
        return src.kind == dst.kind
    return bool(np.can_cast(src, dst, "same_kind"))


def cast_checked(column: pa.ChunkedArray | pa.Array, target: pa.DataType):
    """Arrow's safe cast (an int that overflows, a float with a fraction to int: refused),
    which also refuses a float narrowed to infinity. An int to a float rounds, as numpy's
    same_kind cast (and so `columns.to_feeds`) does."""
    src, dst = _leaf(column.type), _leaf(target)
    rounds = pa.types.is_floating(dst) and (pa.types.is_integer(src) or pa.types.is_boolean(src))
    out = column.cast(target, safe=not rounds)
    if (
        pa.types.is_floating(src)
        and pa.types.is_floating(dst)
        and dst.bit_width < src.bit_width
        and _count_inf(out) != _count_inf(column)
    ):
        raise pa.ArrowInvalid(f"a value of {src} is out of the range of {dst}")
    return out


def text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Each value of `column` as text (Arrow's cast where it has one, else JSON)."""
    try:
        out = column.cast(pa.string())
        return out.combine_chunks() if isinstance(out, pa.ChunkedArray) else out
    except _CAST_ERRORS:  # lists, structs, binary that is not UTF-8: a dead-letter path only
        return pa.array(
            [None if v is None else json.dumps(v, default=repr) for v in column.to_pylist()],
            pa.string(),
        )


def _count_inf(column) -> int:
    leaf = column
    while is_list_type(leaf.type):
        leaf = pc.list_flatten(leaf)
    return int(pc.sum(pc.is_inf(leaf)).as_py() or 0)


def _leaf(t: pa.DataType) -> pa.DataType:
    while is_list_type(t):
        t = t.value_type
    return _undictionary(t)


def _undictionary(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t
