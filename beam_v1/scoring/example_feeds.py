"""Feeding a serialized-tf.Example signature from Arrow feature columns. No Beam here.

Two feed paths give the same outputs: "serialize" builds each row's serialized tf.Example
(the exact path: the graph parses them), "direct" feeds the parse ops' outputs as they would
produce them (dense values with defaults, sparse indices/values/shape), which skips
serializing and parsing where `beam_v1.model.example_spec.direct_feed_blocker` finds nothing
against it. `ExampleScorer` is the feed strategy `beam_v1.scoring.scorer.BatchScorer` uses
for such signatures; the spec itself is read from the graph in `beam_v1.model.example_spec`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_v1.errors import BeamV1Error
from beam_v1.io import varint
from beam_v1.model.example_spec import (
    ExampleSpec,
    FeatureSpec,
    direct_feed_blocker,
    example_input_without_column,
    parse_node_features,
)
from beam_v1.scoring.bisection import ModelRunError, run_or_bisect
from beam_v1.text import first_line

# ------------------------------------------------------------------ columns -> features


@dataclasses.dataclass
class _Column:
    """One feature's values over a batch: flat leaf values, per-row counts, per-row state."""

    values: np.ndarray  # flat leaf values in row order (object for strings)
    counts: np.ndarray  # int64 per row: number of values (0 for absent rows)
    present: np.ndarray  # bool per row: the feature is in the example


def _arrow(column):

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _leaf_kind(t) -> str:

    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or (
        pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
    ):
        return "string"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def _fits(feature_dtype: str, leaf: str) -> bool:
    """Which Arrow leaf kinds a feature takes: the same rules in both feed paths."""
    if leaf == "null":
        return True
    return {"string": leaf == "string", "int64": leaf == "int",
            "float32": leaf in ("int", "float")}.get(feature_dtype, False)


def _column_values(column, feature: FeatureSpec, n: int, errors: list[str | None]) -> _Column:
    """Flatten one column for `feature`; rows it cannot feed get an error (first one wins)."""

    arr = _arrow(column)
    is_list = pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or (
        pa.types.is_fixed_size_list(arr.type)
    )
    present = ~np.asarray(arr.is_null(), dtype=bool) if arr.null_count else np.ones(n, bool)
    if is_list:
        if pa.types.is_fixed_size_list(arr.type):
            counts = np.full(n, arr.type.list_size, dtype=np.int64)
        else:
            counts = np.diff(np.asarray(arr.offsets, dtype=np.int64))
        counts = np.where(present, counts, 0)
        leaf = arr.flatten()
        if pa.types.is_list(leaf.type) or pa.types.is_large_list(leaf.type) or (
            pa.types.is_fixed_size_list(leaf.type)
        ):
            for i in np.flatnonzero(present):
                errors[i] = errors[i] or f"column {feature.key!r} holds nested lists"
            return _Column(np.zeros(0), np.zeros(n, np.int64), np.zeros(n, bool))
    else:
        counts = present.astype(np.int64)
        leaf = arr.filter(pa.array(present)) if arr.null_count else arr
    kind = _leaf_kind(leaf.type)
    if not _fits(feature.dtype, kind):
        for i in np.flatnonzero(present):
            errors[i] = errors[i] or (
                f"column {feature.key!r} holds {leaf.type} values but feature {feature.key!r} "
                f"is {feature.dtype}"
            )
        return _Column(np.zeros(0), np.zeros(n, np.int64), np.zeros(n, bool))
    if leaf.null_count:
        starts = np.concatenate([[0], np.cumsum(counts)])
        null_at = np.flatnonzero(np.asarray(leaf.is_null()))
        for r in np.searchsorted(starts, null_at, side="right") - 1:
            errors[r] = errors[r] or f"column {feature.key!r} holds a null value inside a list"
        leaf = pc.fill_null(leaf, "" if kind == "string" else 0)
    if kind == "string":
        values = np.asarray(
            [v if isinstance(v, bytes) else v.encode() for v in leaf.to_pylist()], dtype=object
        )
    elif feature.dtype == "int64":
        values = leaf.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    else:
        values = leaf.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return _Column(values, counts, present)


def feature_columns(table, spec: ExampleSpec) -> tuple[dict[str, _Column], list[str | None]]:
    """Every feature of `spec` from the table's columns, plus a reason per row it cannot feed:
    a required feature absent, a dense feature with the wrong number of values, a value of
    the wrong type. Absent column = absent feature on every row."""
    n = table.num_rows
    names = set(table.column_names)
    errors: list[str | None] = [None] * n
    out: dict[str, _Column] = {}
    for key, feature in spec.features.items():
        if key in names:
            col = _column_values(table.column(key), feature, n, errors)
        else:
            col = _Column(np.zeros(0), np.zeros(n, np.int64), np.zeros(n, bool))
        if feature.kind == "dense":
            if feature.required:
                for i in np.flatnonzero(~col.present):
                    errors[i] = errors[i] or (
                        f"feature {key!r} is required (the model has no default) but "
                        + ("null" if key in names else f"there is no column {key!r}")
                    )
            if feature.shape is not None and all(d >= 0 for d in feature.shape):
                want = int(np.prod(feature.shape)) if feature.shape else 1
                for i in np.flatnonzero(col.present & (col.counts != want)):
                    errors[i] = errors[i] or (
                        f"feature {key!r} needs {want} value(s) (shape "
                        f"[{','.join(map(str, feature.shape))}]) but the row has "
                        f"{int(col.counts[i])}"
                    )
        out[key] = col
    return out, errors


# ------------------------------------------------------------------ the serialize path


_varint = functools.lru_cache(maxsize=65536)(varint.encode)  # the same few values recur


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _encoded_lists(col: _Column, dtype: str) -> list[bytes]:
    """Per present row, the serialized `Feature` of its values (packed, as protobuf writes)."""
    starts = np.concatenate([[0], np.cumsum(col.counts)]).tolist()
    rows = np.flatnonzero(col.present).tolist()
    out = []
    if dtype == "float32":
        raw = np.ascontiguousarray(col.values, dtype="<f4").tobytes()
        for r in rows:
            a, b = starts[r], starts[r + 1]
            inner = _ld(1, raw[4 * a:4 * b]) if b > a else b""
            out.append(_ld(2, inner))  # Feature.float_list = 2
    elif dtype == "int64":
        cache: dict[int, bytes] = {}
        ints = col.values.tolist()
        for r in rows:
            chunk = b"".join(
                cache.get(v) or cache.setdefault(v, _varint(v))
                for v in ints[starts[r]:starts[r + 1]]
            )
            inner = _ld(1, chunk) if chunk else b""
            out.append(_ld(3, inner))  # Feature.int64_list = 3
    else:
        strings = col.values.tolist()
        for r in rows:
            inner = b"".join(_ld(1, v) for v in strings[starts[r]:starts[r + 1]])
            out.append(_ld(1, inner))  # Feature.bytes_list = 1
    return out


def serialize_columns(table, spec: ExampleSpec) -> tuple[np.ndarray, list[str | None]]:
    """Serialized tf.Example per row, built from the columns named after the features (the
    exact path: the graph's own parse op reads them). Returns (object array of bytes, errors);
    rows with an error hold b"" and are not to be scored.

    Encoding works per feature column (float values are packed with numpy, varints cached), so
    no protobuf message is built per row; each row's bytes are one join of its map entries.
    """
    cols, errors = feature_columns(table, spec)
    n = table.num_rows
    parts: list[list[bytes]] = [[] for _ in range(n)]
    for key, feature in spec.features.items():
        col = cols[key]
        if not col.present.any():
            continue
        key_field = _ld(1, key.encode())
        for r, encoded in zip(np.flatnonzero(col.present).tolist(),
                              _encoded_lists(col, feature.dtype)):
            # Features.feature map entry: {key = 1, value = 2}
            entry = key_field + b"\x12" + _varint(len(encoded)) + encoded
            parts[r].append(b"\x0a" + _varint(len(entry)) + entry)
    out = np.empty(n, dtype=object)
    for r in range(n):
        out[r] = b"" if errors[r] else _ld(1, b"".join(parts[r]))  # Example.features = 1
    return out, errors


# ------------------------------------------------------------------ the direct-feed path

def _dense_default(feature: FeatureSpec) -> np.ndarray:
    """The flat default of a dense feature that has one (strings as bytes)."""
    if feature.default is None:
        raise ValueError(f"feature {feature.key!r} is required: it has no default")
    if feature.dtype == "string":
        return np.asarray([d if isinstance(d, bytes) else str(d).encode() for d in feature.default],
                          dtype=object)
    return np.asarray(feature.default, dtype=feature.dtype)


def parse_op_features(graph_def, spec: ExampleSpec) -> dict[str, list[FeatureSpec]]:
    """{parse node of `spec`: its features, in the order of the node's outputs}."""
    nodes = {n.name: n for n in graph_def.node}
    return {name: parse_node_features(nodes[name], nodes) for name in spec.parse_nodes}


def _dense_block(col: _Column, size: int, rows: np.ndarray) -> np.ndarray | None:
    """The values of `rows` as [len(rows), size] when every row of the batch holds `size`
    values (a view when `rows` are consecutive), else None."""
    if size == 0 or len(col.values) != len(col.counts) * size or not np.all(col.counts == size):
        return None
    block = col.values.reshape(-1, size)
    if len(rows) and int(rows[-1]) - int(rows[0]) == len(rows) - 1:  # sorted, unique
        return block[int(rows[0]):int(rows[-1]) + 1]
    return block[rows]


def direct_feeds(
    cols: Mapping[str, _Column], features_by_op: Mapping[str, list[FeatureSpec]],
    rows: np.ndarray,
) -> dict[str, np.ndarray]:
    """{parse op output tensor: value} for the rows `rows` (sorted, unique), as the parse ops
    would produce them: dense [n, *shape] with the default where absent; sparse indices
    [nnz, 2] (row, position), values [nnz], dense_shape [n, max count]. `features_by_op`:
    `parse_op_features` of the spec."""
    n = len(rows)
    feeds: dict[str, np.ndarray] = {}
    for name, features in features_by_op.items():
        n_sparse = sum(f.kind == "sparse" for f in features)
        for f in features:
            col = cols[f.key]
            if f.kind == "dense" and f.dtype != "string" and f.shape is not None:
                shape = tuple(f.shape)
                block = _dense_block(col, int(np.prod(shape)) if shape else 1, rows)
                if block is not None:
                    feeds[f.output] = block.astype(f.dtype, copy=False).reshape((n, *shape))
                    continue
            starts = np.concatenate([[0], np.cumsum(col.counts)])
            counts = col.counts[rows]
            # positions of the picked rows' values: row start + position within the row
            row_starts = np.repeat(np.cumsum(counts) - counts, counts)
            within = np.arange(int(counts.sum()), dtype=np.int64) - row_starts
            picked = np.repeat(starts[rows], counts) + within
            values = col.values[picked] if len(picked) else np.zeros(
                0, dtype=object if f.dtype == "string" else f.dtype
            )
            if f.dtype != "string":
                values = values.astype(f.dtype, copy=False)
            if f.kind == "sparse":
                k = int(f.output.split(":")[1]) - n_sparse  # output holds the values' index
                row_ids = np.repeat(np.arange(n, dtype=np.int64), counts)
                feeds[f"{name}:{k}"] = np.stack([row_ids, within], axis=1).reshape(-1, 2)
                feeds[f"{name}:{n_sparse + k}"] = values
                feeds[f"{name}:{2 * n_sparse + k}"] = np.array(
                    [n, int(counts.max()) if n else 0], dtype=np.int64
                )
            else:
                shape = tuple(f.shape)
                size = int(np.prod(shape)) if shape else 1
                out = np.empty((n, size), dtype=object if f.dtype == "string" else f.dtype)
                present = col.present[rows]
                if (~present).any():  # `feature_columns` set aside absent rows of required ones
                    out[~present] = np.broadcast_to(_dense_default(f).reshape(-1), (size,))
                if present.any():
                    out[present] = values.reshape(-1, size)
                feeds[f.output] = out.reshape((n, *shape))
    return feeds


# ------------------------------------------------------------------ the feed strategy


class ExampleScorer:
    """Feeds an Arrow table to a serialized-example signature of a loaded V1Model.

    mode "auto": feed the parse ops' outputs directly when `direct_feed_blocker` finds nothing
    against it, else serialize; "serialize": always build examples (the exact path); "direct":
    direct feed or an error saying why not. As a feed strategy of `BatchScorer` it gives
    `groups` (rows that can be fed, and their feeds) and `run`; `score` scores a table alone.
    """

    def __init__(self, model, signature: str | None = None, input_key: str | None = None,
                 mode: str = "auto", outputs: Iterable[str] | None = None):

        self.model = model
        self.sig = model.signature(signature)
        self.graph_def = model.prepared.meta_graph.graph_def  # the graph the session runs
        specs = model.prepared.example_specs(self.sig.key)
        if not specs:
            raise BeamV1Error(f"Signature {self.sig.key!r} has no serialized tf.Example input.")
        if input_key is None:
            if len(specs) != 1:
                raise BeamV1Error(f"Signature {self.sig.key!r} has several example inputs "
                                  f"{sorted(specs)}; name one.")
            input_key = next(iter(specs))
        self.input_key = input_key
        self.spec = specs[input_key]
        others = [k for k, s in self.sig.inputs.items() if s.tensor_name != self.spec.tensor_name]
        if others:
            raise BeamV1Error(f"Signature {self.sig.key!r} has inputs {others} besides the "
                              "serialized examples; feed it with V1Model.predict.")
        self.blocker = direct_feed_blocker(self.graph_def, self.spec)
        if mode not in ("auto", "serialize", "direct"):
            raise ValueError(f"mode must be auto, serialize or direct, not {mode!r}")
        if mode == "direct" and self.blocker:
            raise BeamV1Error(f"Cannot feed signature {self.sig.key!r} directly: {self.blocker}.")
        self.direct = mode == "direct" or (mode == "auto" and self.blocker is None)
        self.features_by_op = parse_op_features(self.graph_def, self.spec) if self.direct else {}
        self.output_keys = tuple(outputs) if outputs is not None else tuple(self.sig.outputs)
        self.session_seconds, self.session_runs = 0.0, 0  # of `run` calls, until reset

    @property
    def path(self) -> str:
        return "direct" if self.direct else "serialize"

    def groups(self, table) -> tuple[list[tuple[np.ndarray, Callable]], dict[int, str]]:
        """([(rows that can be fed, feeds_for(start, stop) over those rows)], {bad row: why})."""
        if self.direct:
            cols, errors = feature_columns(table, self.spec)
        else:
            serialized, errors = serialize_columns(table, self.spec)
        failing = np.not_equal(np.asarray(errors, dtype=object), None)
        good = np.flatnonzero(~failing)
        bad = {i: errors[i] for i in np.flatnonzero(failing).tolist()}
        if not len(good):
            return [], bad

        def feeds_for(start: int, stop: int) -> dict[str, np.ndarray]:
            if self.direct:
                return direct_feeds(cols, self.features_by_op, good[start:stop])
            return {self.spec.tensor_name: serialized[good[start:stop]]}

        return [(good, feeds_for)], bad

    def run(self, feeds: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """The outputs for `feeds` ({tensor name: value}); ModelRunError if the session fails."""
        import tensorflow as tf  # deferred: importing this module starts no TensorFlow

        names = tuple(sorted(feeds))
        started = time.perf_counter()
        try:
            values = self.model.callable(self.sig.key, names, self.output_keys)(
                *[feeds[k] for k in names]
            )
        except tf.errors.OpError as e:
            raise ModelRunError(first_line(e)) from e
        finally:
            self.session_seconds += time.perf_counter() - started
            self.session_runs += 1
        return dict(zip(self.output_keys, (np.asarray(v) for v in values)))

    def score(self, table) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, str]]:
        """(indices of scored rows, {output key: array over those rows}, {bad row: reason}).

        Rows the columns cannot feed are set aside first; if the session then fails on the
        batch, it is bisected until the failing rows are found (SPEC §5)."""
        groups, bad = self.groups(table)
        self.session_seconds, self.session_runs = 0.0, 0
        parts = []
        for rows, feeds_for in groups:
            def run(start: int, stop: int, feeds_for=feeds_for):
                return self.run(feeds_for(start, stop), stop - start)

            parts += [(rows[s:e], out) for s, e, out in run_or_bisect(run, rows, bad)]
        if not parts:
            return np.zeros(0, np.int64), {}, bad
        rows = np.concatenate([p[0] for p in parts])
        outputs = {k: np.concatenate([p[1][k] for p in parts]) for k in self.output_keys}
        return rows, outputs, bad

    def score_serialized(self, serialized) -> dict[str, np.ndarray]:
        """Outputs for already-serialized examples (a binary column or TFRecord records)."""
        array = np.asarray(list(serialized), dtype=object)
        return self.run({self.spec.tensor_name: array}, len(array))


# ------------------------------------------------------------------ pipeline glue


def learn_output_shapes(scorer: ExampleScorer, sample, probe_rows: int = 8):
    """Like `preflight.learn_output_shapes` for a signature fed from feature columns: score the
    first `probe_rows` rows of `sample` with `scorer` (rows that fail are skipped) and return
    ({output key: (-1,) * rank}, None), or (None, why) when none of them scores."""
    rows, outputs, bad = scorer.score(sample.slice(0, probe_rows))
    if not len(rows):
        return None, "; ".join(sorted(set(bad.values()))[:3]) or "no rows"
    return {k: (-1,) * outputs[k].ndim for k in scorer.output_keys}, None


def scorer_for_columns(model, signature: str, schema, column_map, mode: str, outputs):
    """An ExampleScorer when `signature` is fed from feature columns, else None."""
    spec = example_input_without_column(model.prepared.meta_graph, signature, schema, column_map)
    if spec is None:
        return None
    return ExampleScorer(model, signature, spec.input_key, mode=mode, outputs=outputs)
