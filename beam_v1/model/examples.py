"""tf.Example inputs: the feature spec behind a serialized-example input, read from the graph,
and building serialized examples from Arrow columns.

A signature input of dtype string that feeds `ParseExample` / `ParseExampleV2` nodes (directly
or through Identity-like ops) is a serialized-example input. Its feature spec comes from the
parse nodes' attrs (dense dtypes and shapes, sparse and ragged value types) and their constant
inputs (dense, sparse and ragged keys; dense defaults). A dense feature whose default tensor is
empty has no default: the feature is required.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from beam_v1.io import varint
from beam_v1.text import first_line

PARSE_OPS = ("ParseExample", "ParseExampleV2")
_PASS_THROUGH = ("Identity", "IdentityN", "Snapshot", "Reshape", "ExpandDims", "Squeeze")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One feature of a parse op: kind 'dense' | 'sparse' | 'ragged'."""

    key: str
    kind: str
    dtype: str  # float32 | int64 | string
    shape: tuple[int, ...] | None = None  # dense only: per-example shape
    default: Any = None  # dense only: list of values, or None when required
    required: bool = False
    default_known: bool = True  # False when the default is computed by non-constant ops
    parse_node: str = ""
    output: str = ""  # tensor the parse op produces for this feature (values for sparse)


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """Everything the parse ops behind one serialized-example input read."""

    input_key: str
    tensor_name: str
    parse_nodes: tuple[str, ...]
    features: dict[str, FeatureSpec]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ reading the graph


def _dtype_name(enum: int) -> str:
    from tensorflow.python.framework import dtypes

    return dtypes.as_dtype(enum).name


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _const_value(nodes: Mapping[str, Any], tensor: str, depth: int = 0) -> np.ndarray | None:
    """The value of a constant tensor (Const, through Identity/Reshape of constants), else None."""
    from tensorflow.python.framework import tensor_util

    node = nodes.get(_node_name(tensor))
    if node is None or depth > 8:
        return None
    if node.op == "Const":
        value = tensor_util.MakeNdarray(node.attr["value"].tensor)
        return value
    data = [i for i in node.input if not i.startswith("^")]
    if node.op in ("Identity", "Snapshot") and data:
        return _const_value(nodes, data[0], depth + 1)
    if node.op == "Reshape" and len(data) == 2:
        value, shape = _const_value(nodes, data[0], depth + 1), _const_value(nodes, data[1],
                                                                            depth + 1)
        if value is None or shape is None:
            return None
        try:
            return np.reshape(value, shape)
        except ValueError:
            return None
    return None


def _consumers(graph_def) -> dict[str, list[tuple[Any, int]]]:
    out: dict[str, list[tuple[Any, int]]] = {}
    for node in graph_def.node:
        for position, name in enumerate(node.input):
            if name.startswith("^"):
                continue
            out.setdefault(_node_name(name), []).append((node, position))
    return out


def _parse_nodes_of(graph_def, tensor_name: str, consumers=None) -> list[Any]:
    """ParseExample(V2) nodes whose `serialized` input is `tensor_name` (through pass-throughs)."""
    consumers = consumers if consumers is not None else _consumers(graph_def)
    found, seen = [], set()
    frontier = [_node_name(tensor_name)]
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node, position in consumers.get(name, []):
            if node.op in PARSE_OPS and position == 0:
                found.append(node)
            elif node.op in _PASS_THROUGH and position == 0:
                frontier.append(node.name)
    return found


def _strings(value: np.ndarray | None) -> list[str]:
    if value is None:
        return []
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.ravel(value).tolist()]


def parse_node_features(node, nodes: Mapping[str, Any]) -> list[FeatureSpec]:
    """The features one ParseExample / ParseExampleV2 node reads, in its output order."""
    data = [i for i in node.input if not i.startswith("^")]
    attr = node.attr
    dense_types = [_dtype_name(t) for t in attr["Tdense"].list.type]
    dense_shapes = [
        tuple(d.size for d in s.dim) if not s.unknown_rank else None
        for s in attr["dense_shapes"].list.shape
    ]
    sparse_types = [_dtype_name(t) for t in attr["sparse_types"].list.type]
    ragged_types = (
        [_dtype_name(t) for t in attr["ragged_value_types"].list.type]
        if "ragged_value_types" in attr
        else []
    )
    if node.op == "ParseExample":
        n_sparse, n_dense = attr["Nsparse"].i, attr["Ndense"].i
        sparse_keys = [_strings(_const_value(nodes, t))[0] for t in data[2:2 + n_sparse]]
        dense_keys = [
            _strings(_const_value(nodes, t))[0] for t in data[2 + n_sparse:2 + n_sparse + n_dense]
        ]
        defaults = data[2 + n_sparse + n_dense:]
        ragged_keys: list[str] = []
    else:  # ParseExampleV2: serialized, names, sparse_keys, dense_keys, ragged_keys, defaults
        n_sparse = attr["num_sparse"].i
        sparse_keys = _strings(_const_value(nodes, data[2]))
        dense_keys = _strings(_const_value(nodes, data[3]))
        ragged_keys = _strings(_const_value(nodes, data[4]))
        defaults = data[5:]
        n_dense = len(dense_types)
    features = []
    # outputs: sparse_indices[n_sparse], sparse_values[n_sparse], sparse_shapes[n_sparse],
    # dense_values[n_dense], (V2) ragged_values[n_ragged], ragged_row_splits[n_ragged]
    for k, (key, dtype) in enumerate(zip(sparse_keys, sparse_types)):
        features.append(
            FeatureSpec(key, "sparse", dtype, parse_node=node.name,
                        output=f"{node.name}:{n_sparse + k}")
        )
    for k, (key, dtype, shape) in enumerate(zip(dense_keys, dense_types, dense_shapes)):
        value = _const_value(nodes, defaults[k]) if k < len(defaults) else None
        known = value is not None
        required = known and value.size == 0
        default = None
        if known and not required:
            default = [v.decode() if isinstance(v, bytes) else v for v in value.ravel().tolist()]
        features.append(
            FeatureSpec(key, "dense", dtype, shape=shape, default=default, required=required,
                        default_known=known, parse_node=node.name,
                        output=f"{node.name}:{3 * n_sparse + k}")
        )
    for k, (key, dtype) in enumerate(zip(ragged_keys, ragged_types)):
        features.append(
            FeatureSpec(key, "ragged", dtype, parse_node=node.name,
                        output=f"{node.name}:{3 * n_sparse + n_dense + k}")
        )
    return features


def example_spec(graph_def, input_key: str, tensor_name: str, consumers=None) -> ExampleSpec | None:
    """The ExampleSpec behind one string input, or None when no parse op reads it."""
    parse_nodes = _parse_nodes_of(graph_def, tensor_name, consumers)
    if not parse_nodes:
        return None
    nodes = {n.name: n for n in graph_def.node}
    features: dict[str, FeatureSpec] = {}
    for node in parse_nodes:
        for feature in parse_node_features(node, nodes):
            features.setdefault(feature.key, feature)
    return ExampleSpec(input_key, tensor_name, tuple(n.name for n in parse_nodes), features)


def describe_meta_graph(meta_graph) -> dict[str, dict[str, dict[str, Any]]]:
    """{signature: {input key: ExampleSpec as a dict}} for every serialized-example input."""
    from beam_v1.model import metadata as savedmodel

    out: dict[str, dict[str, dict[str, Any]]] = {}
    consumers = _consumers(meta_graph.graph_def)
    for key, sig in savedmodel.signatures(meta_graph).items():
        for input_key, spec in sig.inputs.items():
            if spec.encoding != "dense" or spec.base_dtype != "string":
                continue
            found = example_spec(meta_graph.graph_def, input_key, spec.tensor_name, consumers)
            if found is not None:
                out.setdefault(key, {})[input_key] = found.to_dict()
    return out


def specs_of_signature(meta_graph, signature: str) -> dict[str, ExampleSpec]:
    """{input key: ExampleSpec} of one signature."""
    from beam_v1.model import metadata as savedmodel

    sig = savedmodel.signatures(meta_graph)[signature]
    consumers = _consumers(meta_graph.graph_def)
    out = {}
    for input_key, spec in sig.inputs.items():
        if spec.encoding == "dense" and spec.base_dtype == "string":
            found = example_spec(meta_graph.graph_def, input_key, spec.tensor_name, consumers)
            if found is not None:
                out[input_key] = found
    return out


def format_specs(specs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Text lines for `inspect`: one block per (signature, input)."""
    lines = []
    for sig_key, inputs in specs.items():
        for input_key, spec in inputs.items():
            lines.append(f"  {sig_key} / {input_key} (parsed by {', '.join(spec['parse_nodes'])})")
            for f in spec["features"].values():
                if f["kind"] == "dense":
                    shape = "[" + ",".join(map(str, f["shape"] or ())) + "]"
                    if f["required"]:
                        default = "required"
                    elif not f["default_known"]:
                        default = "default computed in graph"
                    else:
                        shown = f["default"] if len(f["default"]) <= 4 else f["default"][:4] + [
                            "..."]
                        default = f"default {shown}"
                    lines.append(f"    {f['key']:<28} dense  {f['dtype']:<8} {shape:<8} {default}")
                else:
                    lines.append(f"    {f['key']:<28} {f['kind']:<6} {f['dtype']:<8} var-len")
    return lines


# ------------------------------------------------------------------ columns -> features


@dataclasses.dataclass
class _Column:
    """One feature's values over a batch: flat leaf values, per-row counts, per-row state."""

    values: np.ndarray  # flat leaf values in row order (object for strings)
    counts: np.ndarray  # int64 per row: number of values (0 for absent rows)
    present: np.ndarray  # bool per row: the feature is in the example


def _arrow(column):
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column


def _leaf_kind(t) -> str:
    import pyarrow as pa

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
    import pyarrow as pa
    import pyarrow.compute as pc

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
        values = leaf.to_numpy(zero_copy_only=False).astype(np.int64)
    else:
        values = leaf.to_numpy(zero_copy_only=False).astype(np.float32)
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


def direct_feed_blocker(graph_def, spec: ExampleSpec) -> str | None:
    """None when feeding the parse ops' outputs is provably the same as parsing; else why not.

    Conditions: every consumer of the serialized input is one of the parse ops (read directly,
    no pass-through op in between, no other use such as its shape); every feature is dense with
    a fully known shape and a constant default, or sparse (var-len); no ragged features; a
    feature key read by two parse ops is read the same way by both.
    """
    consumers = _consumers(graph_def)
    users = consumers.get(_node_name(spec.tensor_name), [])
    if spec.tensor_name.split(":")[-1] not in ("0",) and ":" in spec.tensor_name:
        return "the serialized input is not an op's first output"
    for node, position in users:
        if node.op not in PARSE_OPS or position != 0:
            return f"the serialized input is also read by {node.op} node {node.name!r}"
    if {n.name for n, _ in users} != set(spec.parse_nodes):
        return "a parse op reads the serialized input through other ops"
    nodes = {n.name: n for n in graph_def.node}
    seen: dict[str, FeatureSpec] = {}
    for name in spec.parse_nodes:
        for f in parse_node_features(nodes[name], nodes):
            if f.kind == "ragged":
                return f"feature {f.key!r} is ragged"
            if f.kind == "dense":
                if f.shape is None or any(d < 0 for d in f.shape):
                    return f"dense feature {f.key!r} has a shape that is not fully known"
                if not f.default_known:
                    return f"the default of feature {f.key!r} is computed in the graph"
            other = seen.setdefault(f.key, f)
            if (other.kind, other.dtype, other.shape, other.default) != (
                f.kind, f.dtype, f.shape, f.default
            ):
                return f"feature {f.key!r} is parsed differently by two parse ops"
    return None


def _dense_default(feature: FeatureSpec) -> np.ndarray:
    """The flat default of a dense feature that has one (strings as bytes)."""
    if feature.default is None:
        raise ValueError(f"feature {feature.key!r} is required: it has no default")
    if feature.dtype == "string":
        return np.asarray([d if isinstance(d, bytes) else str(d).encode() for d in feature.default],
                          dtype=object)
    return np.asarray(feature.default, dtype=feature.dtype)


def direct_feeds(
    cols: Mapping[str, _Column], graph_def, spec: ExampleSpec, rows: np.ndarray
) -> dict[str, np.ndarray]:
    """{parse op output tensor: value} for the rows `rows`, as the parse op would produce them:
    dense [n, *shape] with the default where absent; sparse indices [nnz, 2] (row, position),
    values [nnz], dense_shape [n, max count]."""
    nodes = {n.name: n for n in graph_def.node}
    n = len(rows)
    feeds: dict[str, np.ndarray] = {}
    for name in spec.parse_nodes:
        features = parse_node_features(nodes[name], nodes)
        n_sparse = sum(f.kind == "sparse" for f in features)
        for f in features:
            col = cols[f.key]
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
                values = values.astype(f.dtype)
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


# ------------------------------------------------------------------ scoring a table


class ExampleScorer:
    """Scores an Arrow table through a serialized-example signature of a loaded V1Model.

    mode "auto": feed the parse ops' outputs directly when `direct_feed_blocker` finds nothing
    against it, else serialize; "serialize": always build examples (the exact path); "direct":
    direct feed or an error saying why not. Returns per batch the outputs of the good rows and
    the reason of each bad row.
    """

    def __init__(self, model, signature: str | None = None, input_key: str | None = None,
                 mode: str = "auto", outputs: Iterable[str] | None = None):
        from beam_v1.errors import BeamV1Error

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
        self.output_keys = tuple(outputs) if outputs is not None else tuple(self.sig.outputs)
        self._callables: dict[tuple[str, ...], Any] = {}

    @property
    def path(self) -> str:
        return "direct" if self.direct else "serialize"

    def _callable(self, feed_names: tuple[str, ...]):
        run = self._callables.get(feed_names)
        if run is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions(
                feed=list(feed_names),
                fetch=[self.sig.outputs[k].tensor_name for k in self.output_keys],
            )
            run = self.model.session._make_callable_from_options(options)
            self._callables[feed_names] = run
        return run

    def score(self, table) -> tuple[np.ndarray, dict[str, np.ndarray], dict[int, str]]:
        """(indices of scored rows, {output key: array over those rows}, {bad row: reason}).

        Rows the columns cannot feed are set aside first; if the session then fails on the
        batch, it is bisected until the failing rows are found (SPEC §5)."""
        n = table.num_rows
        if self.direct:
            cols, errors = feature_columns(table, self.spec)
        else:
            serialized, errors = serialize_columns(table, self.spec)
        good = np.array([i for i in range(n) if errors[i] is None], dtype=np.int64)
        bad = {i: e for i, e in enumerate(errors) if e is not None}
        self.session_seconds, self.session_runs = 0.0, 0
        if not len(good):
            return good, {}, bad

        def feeds_for(rows):
            if self.direct:
                return direct_feeds(cols, self.graph_def, self.spec, rows)
            return {self.spec.tensor_name: serialized[rows]}

        parts = list(self._run_or_bisect(good, feeds_for, bad))
        if not parts:
            return np.zeros(0, np.int64), {}, bad
        rows = np.concatenate([p[0] for p in parts])
        outputs = {k: np.concatenate([p[1][k] for p in parts]) for k in self.output_keys}
        return rows, outputs, bad

    def _run_or_bisect(self, rows, feeds_for, bad):
        import time

        import tensorflow as tf

        feeds = feeds_for(rows)
        names = tuple(sorted(feeds))
        started = time.perf_counter()
        try:
            values = self._callable(names)(*[feeds[k] for k in names])
        except tf.errors.OpError as e:
            if len(rows) == 1:
                bad[int(rows[0])] = f"the model failed on this row: {first_line(e)}"
                return
            half = len(rows) // 2
            yield from self._run_or_bisect(rows[:half], feeds_for, bad)
            yield from self._run_or_bisect(rows[half:], feeds_for, bad)
            return
        finally:
            self.session_seconds += time.perf_counter() - started
            self.session_runs += 1
        yield rows, dict(zip(self.output_keys, (np.asarray(v) for v in values)))

    def score_serialized(self, serialized) -> dict[str, np.ndarray]:
        """Outputs for already-serialized examples (a binary column or TFRecord records)."""
        array = np.asarray(list(serialized), dtype=object)
        return dict(zip(self.output_keys, (np.asarray(v) for v in self._callable(
            (self.spec.tensor_name,))(array))))


# ------------------------------------------------------------------ pipeline glue


def learn_output_shapes(scorer: ExampleScorer, sample, probe_rows: int = 8):
    """Like `preflight.learn_output_shapes` for a signature fed from feature columns: score the
    first `probe_rows` rows of `sample` with `scorer` (rows that fail are skipped) and return
    ({output key: (-1,) * rank}, None), or (None, why) when none of them scores."""
    rows, outputs, bad = scorer.score(sample.slice(0, probe_rows))
    if not len(rows):
        return None, "; ".join(sorted(set(bad.values()))[:3]) or "no rows"
    return {k: (-1,) * outputs[k].ndim for k in scorer.output_keys}, None



def example_input_without_column(meta_graph, signature: str, schema,
                                 column_map: Mapping[str, str] | None = None):
    """The ExampleSpec of `signature` when its only input is serialized examples and no
    column feeds it (none of its name, no --map): the features then come from the columns.
    A required feature with no column is a SchemaError (every row would fail)."""
    from beam_v1.errors import SchemaError
    from beam_v1.model import metadata as savedmodel

    sig = savedmodel.signatures(meta_graph)[signature]
    specs = specs_of_signature(meta_graph, signature)
    if len(specs) != 1 or len({s.tensor_name for s in sig.inputs.values()}) != 1:
        return None
    (key, spec), = specs.items()
    mapped = set((column_map or {}).values())
    if key in schema.names or key in mapped:
        return None
    missing = [k for k, f in spec.features.items() if f.required and k not in schema.names]
    if missing:
        raise SchemaError(
            f"Signature {signature!r} parses tf.Examples whose feature(s) {missing} have no "
            f"default, and the input has no column of that name; its columns are "
            f"{schema.names}. (A binary column of serialized examples can be fed as is with "
            f"--map COLUMN={key}.)"
        )
    return spec


def plan_schema(schema, input_key: str):
    """`schema` plus a binary column standing for the serialized examples, for make_plan."""
    import pyarrow as pa

    return schema.append(pa.field(input_key, pa.binary()))


def scorer_for_columns(model, signature: str, schema, column_map, mode: str, outputs):
    """An ExampleScorer when `signature` is fed from feature columns, else None."""
    spec = example_input_without_column(model.prepared.meta_graph, signature, schema, column_map)
    if spec is None:
        return None
    return ExampleScorer(model, signature, spec.input_key, mode=mode, outputs=outputs)
