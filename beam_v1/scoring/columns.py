"""Arrow columns <-> numpy tensors for one signature (SPEC §4). No Beam in here.

`make_plan` checks a schema against a signature once; `to_feeds` turns a batch into
numpy feeds, setting bad rows aside with their reason; `from_fetches` turns outputs
back into Arrow columns. Whole-batch Arrow/numpy operations only: no loop per row,
except for non-batched (scalar) inputs, which the model can only take one at a time.
A `coo_sparse` input is fed a `SparseFeed` (indices, values, dense_shape derived from a
list column's offsets), which slices by rows like an ndarray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from beam_v1 import dtypes
from beam_v1.errors import SchemaError
from beam_v1.model.metadata import SignatureInfo, TensorSpec

ERROR_COLUMN = "error"

def tensor_numpy_dtype(spec: TensorSpec) -> np.dtype:
    """The numpy dtype a tensor of `spec` is fed and fetched as, for dtypes Parquet can hold."""
    if dtypes.arrow_type(spec.base_dtype) is None:
        raise SchemaError(
            f"Tensor {spec.key!r} has dtype {spec.dtype}, which beam-v1 cannot map to Parquet."
        )
    return dtypes.numpy_dtype(spec.base_dtype)


def _arrow_scalar_type(spec: TensorSpec) -> pa.DataType:
    tensor_numpy_dtype(spec)  # refuses what Parquet cannot hold, naming the tensor
    return dtypes.arrow_type(spec.base_dtype)


# ------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class InputPlan:
    key: str  # signature input key
    column: str  # column that feeds it
    spec: TensorSpec
    depth: int  # list nesting depth of the column (0 = scalar column)

    @property
    def sparse(self) -> bool:
        return self.spec.encoding == "coo_sparse"


@dataclasses.dataclass(frozen=True)
class FeedPlan:
    """How one signature is fed from, and written back to, Arrow batches."""

    signature: SignatureInfo
    inputs: tuple[InputPlan, ...]
    outputs: tuple[TensorSpec, ...]
    output_types: tuple[pa.DataType, ...]
    keep_columns: tuple[str, ...]
    fixed_batch: int | None  # the signature's static batch size, if any
    row_by_row: bool  # some input is a non-batched scalar

    @property
    def output_keys(self) -> tuple[str, ...]:
        return tuple(o.key for o in self.outputs)

    @property
    def fed_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i.column for i in self.inputs))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        kept = [input_schema.field(c) for c in self.keep_columns]
        return pa.schema(
            kept + [pa.field(o.key, t) for o, t in zip(self.outputs, self.output_types)]
        )


def failed_schema(input_schema: pa.Schema) -> pa.Schema:
    """Dead-letter schema: every input column (fixed-size lists as lists) plus `error`."""
    fields = [pa.field(f.name, _nullable_list_type(f.type)) for f in input_schema]
    return pa.schema(fields + [pa.field(ERROR_COLUMN, pa.string())])


def _nullable_list_type(t: pa.DataType) -> pa.DataType:
    # pyarrow cannot read back a fixed_size_list column holding null rows; use list there.
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return pa.list_(_nullable_list_type(t.value_type))
    if pa.types.is_large_list(t):
        return pa.large_list(_nullable_list_type(t.value_type))
    return t


def _leaf_type(t: pa.DataType) -> tuple[pa.DataType, int]:
    depth = 0
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        depth += 1
    if pa.types.is_dictionary(t):
        t = t.value_type
    return t, depth


def leaf_numpy_dtype(t: pa.DataType) -> np.dtype | None:
    """The numpy dtype values of Arrow type `t` convert to (strings and binary: object), or
    None for a type that feeds no tensor (dates, structs, ...)."""
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return np.dtype(object)
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        return pa.array([], type=t).to_numpy(zero_copy_only=False).dtype
    return None


def _can_feed(leaf: pa.DataType, target: np.dtype) -> bool:
    source = leaf_numpy_dtype(leaf)
    if source is None:
        return False
    if target.kind == "O" or source.kind == "O":
        return target == source
    return bool(np.can_cast(source, target, "same_kind"))


def _output_type(spec: TensorSpec, per_row_shape: Sequence[int]) -> pa.DataType:
    t = _arrow_scalar_type(spec)
    for dim in reversed(per_row_shape):
        t = pa.list_(t, dim) if dim >= 0 else pa.list_(t)
    return t


def make_plan(
    signature: SignatureInfo,
    schema: pa.Schema,
    *,
    required_inputs: Sequence[str] | None = None,
    column_map: Mapping[str, str] | None = None,
    outputs: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = None,
    output_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> FeedPlan:
    """Check `schema` against `signature` and decide how each column feeds each input.

    `column_map` maps column name -> input key (SPEC `--map column=input_key`).
    `output_shapes` gives observed shapes for outputs whose rank the signature leaves unknown.
    """
    column_map = dict(column_map or {})
    names = schema.names
    unknown_inputs = sorted(set(column_map.values()) - set(signature.inputs))
    if unknown_inputs:
        raise SchemaError(
            f"--map names input(s) {unknown_inputs} that signature {signature.key!r} does not "
            f"have; its inputs are {sorted(signature.inputs)}."
        )
    missing_map_cols = sorted(set(column_map) - set(names))
    if missing_map_cols:
        raise SchemaError(
            f"--map names column(s) {missing_map_cols} that the input does not have; its "
            f"columns are {names}."
        )
    column_for = {key: key for key in signature.inputs}
    column_for.update({input_key: column for column, input_key in column_map.items()})
    required = list(signature.inputs) if required_inputs is None else list(required_inputs)
    plans = []
    problems = []
    for key, spec in signature.inputs.items():
        column = column_for[key]
        if column not in names:
            if key in required:
                problems.append(
                    f"input {key!r} ({spec.dtype} {spec.shape_str()}) has no column {column!r}"
                    + (" (for a sparse input that has no value in any row, give a column of "
                       "nulls)" if spec.encoding == "coo_sparse" else "")
                )
            continue
        if spec.encoding == "coo_sparse":
            plan, problem = _plan_sparse(key, column, spec, schema.field(column).type)
            if problem:
                problems.append(problem)
            else:
                plans.append(plan)
            continue
        if spec.encoding != "dense":
            problems.append(
                f"input {key!r} is a {spec.encoding} tensor, which cannot be fed from a column yet"
            )
            continue
        leaf, depth = _leaf_type(schema.field(column).type)
        target = tensor_numpy_dtype(spec)
        if not _can_feed(leaf, target):
            problems.append(
                f"column {column!r} has type {schema.field(column).type}, which does not cast "
                f"safely to input {key!r} ({spec.dtype})"
            )
            continue
        if not _depth_fits(spec.shape, depth):
            problems.append(
                f"column {column!r} ({schema.field(column).type}, list depth {depth}) cannot "
                f"feed input {key!r} of shape {spec.shape_str()}"
            )
            continue
        plans.append(InputPlan(key=key, column=column, spec=spec, depth=depth))
    if problems:
        raise SchemaError(
            f"The input data cannot feed signature {signature.key!r}: {'; '.join(problems)}. "
            f"The input columns are: {_describe_schema(schema)}. Rename columns with "
            "--map column=input_key (API: column_map={column: input_key})."
        )

    fixed = {p.spec.shape[0] for p in plans if p.spec.shape and p.spec.shape[0] > 0}
    if len(fixed) > 1:
        raise SchemaError(
            f"Signature {signature.key!r} has inputs with different fixed batch "
            f"sizes {sorted(fixed)}."
        )
    fixed_batch = fixed.pop() if fixed else None
    row_by_row = any(p.spec.shape == () for p in plans)
    if row_by_row and any(p.sparse for p in plans):
        raise SchemaError(
            f"Signature {signature.key!r} has a non-batched (scalar) input, run row by row, and "
            f"sparse input(s) {[p.key for p in plans if p.sparse]}, which are fed a batch of "
            "rows: beam-v1 cannot feed both from columns."
        )

    output_specs, output_types = _plan_outputs(
        signature, outputs, fixed_batch, row_by_row, output_shapes or {}
    )
    fed = {p.column for p in plans}
    if keep_columns is None:
        keep = tuple(n for n in names if n not in fed)
    else:
        missing = [c for c in keep_columns if c not in names]
        if missing:
            raise SchemaError(
                f"--keep-columns names column(s) {missing} that the input does "
                f"not have; its columns are {names}."
            )
        keep = tuple(keep_columns)
    clash = sorted(set(keep) & ({o.key for o in output_specs} | {ERROR_COLUMN}))
    if clash:
        raise SchemaError(
            f"Output name(s) {clash} clash with kept input column(s) of the same name "
            f"('{ERROR_COLUMN}' is reserved for the dead letter). Choose other kept columns "
            "with --keep-columns, or other outputs with --outputs."
        )
    return FeedPlan(
        signature=signature,
        inputs=tuple(plans),
        outputs=tuple(output_specs),
        output_types=tuple(output_types),
        keep_columns=keep,
        fixed_batch=fixed_batch,
        row_by_row=row_by_row,
    )


def _plan_sparse(key: str, column: str, spec: TensorSpec, column_type: pa.DataType):
    """(InputPlan, None) if `column_type` can feed the 2-D coo_sparse input, else (None, why)."""
    accepted = (
        "a sparse input takes a list column (list, large_list, fixed_size_list: one list of "
        "values per row, null = no value) or a scalar column (one value per row, null = none)"
    )
    if spec.shape is not None and len(spec.shape) != 2:
        return None, (
            f"input {key!r} is a coo_sparse tensor of shape {spec.shape_str()}; only 2-D sparse "
            "inputs ([batch, values]) can be fed from a column"
        )
    leaf, depth = _leaf_type(column_type)
    # a column of type null (all rows without a value) feeds an empty sparse tensor
    if not pa.types.is_null(leaf) and not _can_feed(leaf, tensor_numpy_dtype(spec)):
        return None, (
            f"column {column!r} has type {column_type}, which does not cast safely to sparse "
            f"input {key!r} ({spec.dtype}); {accepted}"
        )
    if depth > 1:
        return None, (
            f"column {column!r} ({column_type}, list depth {depth}) cannot feed sparse input "
            f"{key!r} of shape {spec.shape_str()}: {accepted}"
        )
    return InputPlan(key=key, column=column, spec=spec, depth=depth), None


def _depth_fits(shape: tuple[int, ...] | None, depth: int) -> bool:
    """Can a column with lists nested `depth` deep feed a tensor of `shape` (SPEC §4)?"""
    if shape is None:
        return True
    if len(shape) == 0:
        return depth == 0  # a non-batched scalar, fed row by row
    if depth == len(shape) - 1:
        return True
    return depth == 0 and len(shape) == 2 and shape[1] == 1  # [-1,1] from a scalar column


def _plan_outputs(signature, outputs, fixed_batch, row_by_row, output_shapes):
    keys = list(signature.outputs) if outputs is None else list(outputs)
    unknown = [k for k in keys if k not in signature.outputs]
    if unknown:
        raise SchemaError(
            f"Output(s) {unknown} are not in signature {signature.key!r}; its "
            f"outputs are {sorted(signature.outputs)}."
        )
    specs, types = [], []
    for key in keys:
        spec = signature.outputs[key]
        shape = output_shapes.get(key, spec.shape)
        if row_by_row:
            per_row = shape
        elif shape is None or len(shape) == 0:
            per_row = None
        elif shape[0] < 0 or shape[0] == fixed_batch:
            per_row = shape[1:]
        else:
            per_row = None
        if per_row is None:
            if outputs is not None:
                raise SchemaError(
                    f"Output {key!r} ({spec.dtype} {spec.shape_str()}) is not batch-aligned "
                    "(its first dimension is not the batch), so it cannot become a column."
                )
            continue  # by default only batch-aligned outputs become columns
        specs.append(spec)
        types.append(_output_type(spec, per_row))
    if not specs:
        raise SchemaError(
            f"Signature {signature.key!r} has no batch-aligned output to write; its outputs are "
            + ", ".join(f"{k} ({s.dtype} {s.shape_str()})" for k, s in signature.outputs.items())
        )
    return specs, types


def unknown_rank_outputs(signature: SignatureInfo, outputs: Sequence[str] | None) -> list[str]:
    keys = list(signature.outputs) if outputs is None else list(outputs)
    return [k for k in keys if k in signature.outputs and signature.outputs[k].shape is None]


def _describe_schema(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} ({f.type})" for f in schema)


# ------------------------------------------------------------------------ feeds


@dataclasses.dataclass(frozen=True, eq=False)
class SparseFeed:
    """Rows of a 2-D COO sparse input: row r holds `values[splits[r]:splits[r + 1]]` in
    columns 0, 1, ... . `indices` and `dense_shape` are derived from the splits (no loop per
    row), so `predict` takes it like a SparseTensorValue. Indexing by rows (a slice, an index
    array or a boolean mask) gives the SparseFeed of those rows, as for an ndarray feed."""

    values: np.ndarray  # [N], already of the input's dtype
    splits: np.ndarray  # int64 [rows + 1], splits[0] == 0 and splits[-1] == N
    width: int | None = None  # the input's fixed second dimension; None: the longest row

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray, width: int | None = None):
        splits = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])
        return cls(values, splits, width)

    def __len__(self) -> int:
        return len(self.splits) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.splits)

    @property
    def indices(self) -> np.ndarray:
        # each row's (row, -start) repeated once per value, then + the value's position:
        # one repeat of [rows, 2] (several times faster than two repeats and a column_stack)
        start = np.empty((len(self), 2), dtype=np.int64)
        start[:, 0] = np.arange(len(self))
        np.negative(self.splits[:-1], out=start[:, 1])
        indices = np.repeat(start, self.lengths, axis=0)
        indices[:, 1] += np.arange(len(self.values), dtype=np.int64)
        return indices

    @property
    def dense_shape(self) -> np.ndarray:
        n = len(self)
        width = self.width
        if width is None:
            width = int(self.lengths.max()) if n else 0
        return np.array([n, width], dtype=np.int64)

    def __getitem__(self, key) -> SparseFeed:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                stop = max(start, stop)
                first, last = self.splits[start], self.splits[stop]
                return SparseFeed(
                    self.values[first:last], self.splits[start : stop + 1] - first, self.width
                )
            key = np.arange(start, stop, step)
        rows = np.asarray(key)
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise TypeError("a SparseFeed is indexed by rows: a slice, an index array or a mask")
        starts = self.splits[rows]
        lengths = self.splits[rows + 1] - starts
        splits = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=splits[1:])
        gather = np.repeat(starts - splits[:-1], lengths) + np.arange(splits[-1], dtype=np.int64)
        return SparseFeed(self.values[gather], splits, self.width)

    def __repr__(self) -> str:
        return (
            f"SparseFeed(rows={len(self)}, values={len(self.values)} x {self.values.dtype}, "
            f"dense_shape={self.dense_shape.tolist()})"
        )


Feed = np.ndarray | SparseFeed


@dataclasses.dataclass
class Feeds:
    """A batch converted for the session: groups of rows with equal shapes, and bad rows."""

    groups: list[tuple[np.ndarray, dict[str, Feed]]]  # (row indices, {input key: feed})
    bad_rows: np.ndarray  # int64 indices into the batch
    bad_reasons: list[str]


def _as_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _list_lengths(arr: pa.Array) -> np.ndarray:
    if pa.types.is_fixed_size_list(arr.type):
        return np.full(len(arr), arr.type.list_size, dtype=np.int64)
    return np.diff(np.asarray(arr.offsets, dtype=np.int64))


def _row_shapes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row: its shape below the batch dim (n, depth) and a reason code (0 = ok).

    Codes: 1 null row, 2 null value inside, 3 ragged nested list.
    """
    n = len(arr)
    if not (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        codes = np.zeros(n, dtype=np.int8)
        if arr.null_count:
            codes[np.asarray(arr.is_null())] = 1
        return np.zeros((n, 0), dtype=np.int64), codes
    codes = np.zeros(n, dtype=np.int8)
    null_rows = np.asarray(arr.is_null()) if arr.null_count else None
    lengths = _list_lengths(arr)
    if null_rows is not None:
        lengths = np.where(null_rows, 0, lengths)
    values = arr.flatten()  # values of non-null rows, slice offsets applied
    if values.null_count == 0 and not is_list_type(values.type):
        # fast path: a list of non-null scalars has no bad child and no deeper shape, so
        # the per-value passes below (cumsum over every value) would only find zeros
        if null_rows is not None:
            codes[null_rows] = 1
        return lengths.astype(np.int64, copy=False).reshape(n, 1), codes
    child_dims, child_codes = _row_shapes(values)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n else np.zeros(0, np.int64)
    # a row is bad if any child is bad, or its children's shapes differ from its first child's
    child_bad = child_codes.astype(np.int64)
    if child_dims.shape[1]:
        first = np.repeat(np.arange(n), lengths)
        first_child = starts[first]
        ragged = np.any(child_dims != child_dims[first_child], axis=1)
    else:
        ragged = np.zeros(len(child_codes), dtype=bool)
    bad_null = _segment_any(child_bad > 0, lengths)
    bad_ragged = _segment_any(ragged, lengths)
    codes[bad_ragged] = 3
    codes[bad_null] = 2
    if null_rows is not None:
        codes[null_rows] = 1
    # a child code 3 (ragged deeper) stays ragged, not "null inside"
    deeper_ragged = _segment_any(child_codes == 3, lengths)
    codes[deeper_ragged & (codes == 2)] = 3
    inner = np.zeros((n, child_dims.shape[1]), dtype=np.int64)
    has_child = lengths > 0
    inner[has_child] = child_dims[starts[has_child]]
    return np.column_stack([lengths, inner]), codes


def is_list_type(t: pa.DataType) -> bool:
    """Whether `t` is a list, large list or fixed-size list."""
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _segment_any(mask: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    if not len(lengths):
        return np.zeros(0, dtype=bool)
    counts = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    ends = np.cumsum(lengths)
    return (counts[ends] - counts[ends - lengths]) > 0


_REASONS = {1: "is null", 2: "holds a null value", 3: "is a ragged nested list"}


def _leaf_values(arr: pa.Array) -> pa.Array:
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        arr = arr.flatten()
    return arr


def _to_numpy(values: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values.to_numpy(zero_copy_only=False)


def _out_of_range(values: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """Mask of values a same-kind cast to `target` would change (overflow), or None."""
    if target.kind == "O" or values.dtype == target or values.dtype.kind == "O":
        return None
    if target.kind in "iu" and values.dtype.kind in "iu":
        info = np.iinfo(target)
        return (values < info.min) | (values > info.max)
    if target.kind == "f" and values.dtype.kind == "f" and values.dtype.itemsize > target.itemsize:
        finite = np.isfinite(values)
        return finite & (np.abs(values) > np.finfo(target).max)
    return None


def to_feeds(batch: pa.Table | pa.RecordBatch, plan: FeedPlan) -> Feeds:
    """Convert `batch` into numpy feeds for `plan`; bad rows are set aside with a reason."""
    n = batch.num_rows
    reasons: dict[int, str] = {}
    shape_keys = []
    arrays = {}
    bad = np.zeros(n, dtype=bool)
    for inp in plan.inputs:
        arr = _as_array(batch.column(inp.column))
        arrays[inp.key] = arr
        if inp.sparse:  # one feed for every row: no shape to group rows by
            _note_sparse(reasons, bad, arr, inp)
            continue
        dims, codes = _row_shapes(arr)
        expected = _expected_row_shape(inp)
        wrong = np.zeros(n, dtype=bool)
        if expected is not None and dims.shape[1] == len(expected):
            for axis, want in enumerate(expected):
                if want >= 0:
                    wrong |= (dims[:, axis] != want) & (codes == 0)
        _note(reasons, bad, codes, inp, wrong, dims, expected)
        shape_keys.append(dims)

    good = np.flatnonzero(~bad)
    groups: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
    if len(good):
        all_dims = np.concatenate(shape_keys, axis=1) if shape_keys else np.zeros((n, 0))
        if all_dims.shape[1] and bool((all_dims[good] != all_dims[good[0]]).any()):
            _, inverse = np.unique(all_dims[good], axis=0, return_inverse=True)
            row_groups = [good[inverse.ravel() == g] for g in range(inverse.max() + 1)]
        else:
            row_groups = [good]
        for rows in row_groups:
            feeds, overflow = _group_feeds(arrays, plan, rows, n)
            if overflow is not None and overflow.any():
                for r in rows[overflow]:
                    reasons[int(r)] = overflow_reason(plan)
                keep = ~overflow
                rows = rows[keep]
                feeds = {k: v[keep] for k, v in feeds.items()}
            if len(rows):
                groups.append((rows, feeds))
    bad_rows = np.array(sorted(reasons), dtype=np.int64)
    return Feeds(groups=groups, bad_rows=bad_rows, bad_reasons=[reasons[int(i)] for i in bad_rows])


def overflow_reason(plan: FeedPlan) -> str:
    names = ", ".join(f"{i.column!r} ({i.spec.dtype})" for i in plan.inputs)
    return f"a value is out of range for the input's dtype: {names}"


def _expected_row_shape(inp: InputPlan) -> tuple[int, ...] | None:
    shape = inp.spec.shape
    if shape is None or shape == ():
        return None
    if inp.depth == 0:
        return ()
    return tuple(shape[1:])


def _note(reasons, bad, codes, inp: InputPlan, wrong, dims, expected) -> None:
    for code, text in _REASONS.items():
        for r in np.flatnonzero(codes == code):
            r = int(r)
            if r not in reasons:
                reasons[r] = (
                    f"column {inp.column!r} {text} (input {inp.key!r} needs a value)"
                    if code == 1
                    else f"column {inp.column!r} {text}"
                )
                bad[r] = True
    for r in np.flatnonzero(wrong):
        r = int(r)
        if r not in reasons:
            got = "x".join(str(d) for d in dims[r])
            want = "x".join("?" if d < 0 else str(d) for d in expected)
            reasons[r] = (
                f"column {inp.column!r} has a list of shape [{got}] where input "
                f"{inp.key!r} needs [{want}] (shape {inp.spec.shape_str()})"
            )
            bad[r] = True


def _sparse_parts(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(values per row, the values of every row in order) of a list or scalar column."""
    if is_list_type(arr.type):
        lengths = _list_lengths(arr)
        if arr.null_count:  # a null list is a row with no value
            lengths = np.where(np.asarray(arr.is_null()), 0, lengths)
        return lengths, arr.flatten()  # slice offset and values under null lists dropped
    if arr.null_count:  # a null scalar is a row with no value
        return np.asarray(arr.is_valid()).astype(np.int64), arr.drop_null()
    return np.ones(len(arr), dtype=np.int64), arr


def _sparse_width(inp: InputPlan) -> int | None:
    shape = inp.spec.shape
    return shape[1] if shape is not None and shape[1] >= 0 else None


def _note_sparse(reasons, bad, arr: pa.Array, inp: InputPlan) -> None:
    """Rows a sparse input cannot take: a null inside a list, more values than its width."""
    width = _sparse_width(inp)
    if not inp.depth and (width is None or width >= 1):
        return  # a scalar column: each row holds no value or one
    lengths, values = _sparse_parts(arr)
    marks = []
    if values.null_count:
        marks.append((
            _segment_any(np.asarray(values.is_null()), lengths),
            f"column {inp.column!r} holds a null value inside a list (sparse input {inp.key!r} "
            "takes no null values; a null list is a row with no value)",
        ))
    if width is not None:
        marks.append((
            lengths > width,
            f"column {inp.column!r} has more than {width} value(s) in a row where sparse input "
            f"{inp.key!r} (shape {inp.spec.shape_str()}) holds at most {width}",
        ))
    for mask, text in marks:
        for r in np.flatnonzero(mask):
            r = int(r)
            if r not in reasons:
                reasons[r] = text
                bad[r] = True


def _group_feeds(arrays, plan: FeedPlan, rows: np.ndarray, n: int):
    feeds = {}
    overflow = None
    take_all = len(rows) == n
    for inp in plan.inputs:
        arr = arrays[inp.key]
        if not take_all:
            arr = arr.take(pa.array(rows))
        target = tensor_numpy_dtype(inp.spec)
        if inp.sparse:
            lengths, leaf = _sparse_parts(arr)
        else:
            leaf = _leaf_values(arr)
        raw = _to_numpy(leaf)
        mask = _out_of_range(raw, target)
        if mask is not None and mask.any() and len(rows):
            if inp.sparse:
                row_mask = _segment_any(mask, lengths)
            else:
                row_mask = mask.reshape(len(rows), -1).any(axis=1)
            overflow = row_mask if overflow is None else overflow | row_mask
        if raw.dtype == target or target.kind == "O":
            values = raw
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # out-of-range rows are set aside
                values = raw.astype(target)
        if inp.sparse:
            feeds[inp.key] = SparseFeed.from_lengths(values, lengths, _sparse_width(inp))
        else:
            feeds[inp.key] = values.reshape(_feed_shape(inp, arr, len(rows)))
    return feeds, overflow


def _feed_shape(inp: InputPlan, arr: pa.Array, n: int) -> tuple[int, ...]:
    spec = inp.spec.shape
    if inp.depth == 0:
        if spec is not None and len(spec) == 2:
            return (n, 1)
        return (n,)
    dims = [n]
    level = arr
    for _ in range(inp.depth):
        lengths = _list_lengths(level)
        dims.append(int(lengths[0]) if len(lengths) else 0)
        level = level.flatten()
    return tuple(dims)


# ----------------------------------------------------------------------- fetches


def from_fetches(fetches: Mapping[str, np.ndarray], plan: FeedPlan, n: int) -> list[pa.Array]:
    """Output arrays (one per planned output) as Arrow columns of the planned types.

    Raises ValueError when an output does not have `n` rows or the planned shape.
    """
    columns = []
    for spec, arrow_type in zip(plan.outputs, plan.output_types):
        value = np.asarray(fetches[spec.key])
        if value.ndim == 0 or value.shape[0] != n:
            raise ValueError(
                f"output {spec.key!r} has shape {list(value.shape)}, not one row per input row "
                f"({n})"
            )
        columns.append(_to_arrow(value, arrow_type, spec.key))
    return columns


def _to_arrow(value: np.ndarray, arrow_type: pa.DataType, key: str) -> pa.Array:
    n = value.shape[0]
    if not (pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)):
        if value.ndim != 1:
            raise ValueError(
                f"output {key!r} has shape {list(value.shape)} where one value per row was expected"
            )
        if arrow_type == pa.binary():
            return pa.array(value.tolist(), type=pa.binary())
        return pa.array(value, type=arrow_type)
    if value.ndim < 2:
        raise ValueError(
            f"output {key!r} has shape {list(value.shape)} where a list per row "
            f"({arrow_type}) was expected"
        )
    per_row = value.shape[1]
    inner = _to_arrow(value.reshape((n * per_row,) + value.shape[2:]), arrow_type.value_type, key)
    if pa.types.is_fixed_size_list(arrow_type):
        if per_row != arrow_type.list_size:
            raise ValueError(
                f"output {key!r} has {per_row} values per row where "
                f"{arrow_type.list_size} were expected"
            )
        return pa.FixedSizeListArray.from_arrays(inner, arrow_type.list_size)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, inner)
