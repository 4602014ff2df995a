"""tf.Example inputs: the feature spec behind a serialized-example input, read from the graph
(building examples from Arrow columns is `beam_v1.scoring.example_feeds`).

A signature input of dtype string that feeds `ParseExample` / `ParseExampleV2` nodes (directly
or through Identity-like ops) is a serialized-example input. Its feature spec comes from the
parse nodes' attrs (dense dtypes and shapes, sparse and ragged value types) and their constant
inputs (dense, sparse and ragged keys; dense defaults). A dense feature whose default tensor is
empty has no default: the feature is required.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from beam_v1 import dtypes
from beam_v1.errors import SchemaError
from beam_v1.model import metadata as savedmodel

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


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _const_value(nodes: Mapping[str, Any], tensor: str, depth: int = 0) -> np.ndarray | None:
    """The value of a constant tensor (Const, through Identity/Reshape of constants), else None."""
    from tensorflow.python.framework import tensor_util  # deferred: TensorFlow start-up

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
    dense_types = [dtypes.name_of(t) for t in attr["Tdense"].list.type]
    dense_shapes = [
        tuple(d.size for d in s.dim) if not s.unknown_rank else None
        for s in attr["dense_shapes"].list.shape
    ]
    sparse_types = [dtypes.name_of(t) for t in attr["sparse_types"].list.type]
    ragged_types = (
        [dtypes.name_of(t) for t in attr["ragged_value_types"].list.type]
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


def example_input_without_column(meta_graph, signature: str, schema,
                                 column_map: Mapping[str, str] | None = None):
    """The ExampleSpec of `signature` when its only input is serialized examples and no
    column feeds it (none of its name, no --map): the features then come from the columns.
    A required feature with no column is a SchemaError (every row would fail)."""

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
