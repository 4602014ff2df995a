"""Graph rewrites for ops this TensorFlow lost: each replaces one op by ops that still exist.

A rewrite is applied to the GraphDef of a MetaGraph before `import_meta_graph`, and only when
this TensorFlow cannot run the op (no op registered, or no CPU kernel). The replacement keeps
the node's name: a final `IdentityN` named like the lost node carries its outputs, so every
consumer (`name`, `name:k`, `^name`) is untouched.

Registry (op -> what it reproduces):

`BucketizeWithInputBoundaries` (tf.contrib.boosted_trees, used by TF Transform 0.12/0.13's
`tft.bucketize`): inputs `input: T` (T in int32, int64, float, double) and
`boundaries: float` (a sorted vector); output `int32` of the input's shape. Each value becomes
`std::upper_bound(boundaries, value) - begin`: the number of boundaries <= value, so a value
equal to a boundary goes to the bucket above it; values below every boundary give 0, above
every boundary give len(boundaries). The kernel converts the float boundaries to T first (a
C++ conversion, i.e. truncation toward zero for integer T). Rewritten as
`Cast(boundaries -> T)`, `UpperBound([1,B], [1,N], out_type=int32)`, reshaped to the input's
shape.

`BoostedTreesBucketize` (core, registered in TF 2.21 but without a kernel; used by TF Transform
0.15's `tft.bucketize`): attr `num_features`, inputs `float_values: num_features * float` and
`bucket_boundaries: num_features * float` (vectors); outputs `buckets: num_features * int32`,
each of shape [number of values] (the kernel flattens its input). Each value becomes
`std::lower_bound(boundaries, value) - begin` (the number of boundaries < value, so a value
equal to a boundary stays in that boundary's bucket), clamped to len(boundaries) - 1; empty
boundaries give 0. Rewritten per feature as `LowerBound([1,B], [1,N], out_type=int32)`
then `Minimum(., Maximum(Size(boundaries) - 1, 0))`, reshaped to [-1].

NaN behaves as in the kernels: every comparison with NaN is false, so `lower_bound` returns the
first position (bucket 0) and `upper_bound` the last (len(boundaries)); TensorFlow's
LowerBound/UpperBound CPU kernels use the same std algorithms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tensorflow.core.framework import (
    attr_value_pb2,
    graph_pb2,
    node_def_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorflow.core.protobuf import meta_graph_pb2

from beam_v1.model import kernels


@dataclasses.dataclass(frozen=True)
class Rewrite:
    op: str
    uses_ops: tuple[str, ...]
    summary: str
    build: Callable[[node_def_pb2.NodeDef], list[node_def_pb2.NodeDef]]


# ---------------------------------------------------------------- NodeDef helpers


def _type(dtype: int) -> attr_value_pb2.AttrValue:
    return attr_value_pb2.AttrValue(type=dtype)


def _node(name: str, op: str, inputs: list[str], device: str, **attrs) -> node_def_pb2.NodeDef:
    node = node_def_pb2.NodeDef(name=name, op=op, input=inputs, device=device)
    for key, value in attrs.items():
        node.attr[key].CopyFrom(value)
    return node


def _int32_const(name: str, values: list[int], device: str) -> node_def_pb2.NodeDef:

    tensor = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]
        ),
        int_val=values,
    )
    return _node(
        name,
        "Const",
        [],
        device,
        dtype=_type(types_pb2.DT_INT32),
        value=attr_value_pb2.AttrValue(tensor=tensor),
    )


def _data_and_control(node: node_def_pb2.NodeDef) -> tuple[list[str], list[str]]:
    data = [i for i in node.input if not i.startswith("^")]
    control = [i for i in node.input if i.startswith("^")]
    return data, control


def _search(
    prefix: str,
    values: str,
    boundaries: str,
    dtype: int,
    op: str,
    device: str,
    control: list[str],
) -> tuple[list[node_def_pb2.NodeDef], str]:
    """Nodes computing `op` (LowerBound/UpperBound) of every value of `values` in `boundaries`,
    flat int32 [N]; returns (nodes, output tensor name)."""
    T = _type(dtype)
    i32 = _type(types_pb2.DT_INT32)
    nodes = [
        _int32_const(f"{prefix}/row", [1, -1], device),
        _node(
            f"{prefix}/sorted",
            "Reshape",
            [boundaries, f"{prefix}/row", *control],
            device,
            T=T,
            Tshape=i32,
        ),
        _node(
            f"{prefix}/values",
            "Reshape",
            [values, f"{prefix}/row", *control],
            device,
            T=T,
            Tshape=i32,
        ),
        _node(
            f"{prefix}/search",
            op,
            [f"{prefix}/sorted", f"{prefix}/values"],
            device,
            T=T,
            out_type=i32,
        ),
        _int32_const(f"{prefix}/flat", [-1], device),
        _node(
            f"{prefix}/index",
            "Reshape",
            [f"{prefix}/search", f"{prefix}/flat"],
            device,
            T=i32,
            Tshape=i32,
        ),
    ]
    return nodes, f"{prefix}/index"


def _identity_n(node: node_def_pb2.NodeDef, outputs: list[str]) -> node_def_pb2.NodeDef:
    out = _node(
        node.name,
        "IdentityN",
        outputs,
        node.device,
        T=attr_value_pb2.AttrValue(
            list=attr_value_pb2.AttrValue.ListValue(type=[types_pb2.DT_INT32] * len(outputs))
        ),
    )
    if "_output_shapes" in node.attr:
        out.attr["_output_shapes"].CopyFrom(node.attr["_output_shapes"])
    return out


# ---------------------------------------------------------------- the rewrites


def _bucketize_with_input_boundaries(node: node_def_pb2.NodeDef) -> list[node_def_pb2.NodeDef]:
    (values, boundaries), control = _data_and_control(node)
    dtype = node.attr["T"].type if "T" in node.attr else types_pb2.DT_FLOAT
    prefix = f"{node.name}/beam_v1_rewrite"
    nodes = []
    if dtype != types_pb2.DT_FLOAT:
        nodes.append(
            _node(
                f"{prefix}/boundaries_as_T",
                "Cast",
                [boundaries, *control],
                node.device,
                SrcT=_type(types_pb2.DT_FLOAT),
                DstT=_type(dtype),
                Truncate=attr_value_pb2.AttrValue(b=False),
            )
        )
        boundaries = f"{prefix}/boundaries_as_T"
    search, index = _search(prefix, values, boundaries, dtype, "UpperBound", node.device, control)
    nodes += search
    i32 = _type(types_pb2.DT_INT32)
    nodes += [
        _node(f"{prefix}/shape", "Shape", [values], node.device, T=_type(dtype), out_type=i32),
        _node(
            f"{prefix}/buckets",
            "Reshape",
            [index, f"{prefix}/shape"],
            node.device,
            T=i32,
            Tshape=i32,
        ),
    ]
    # A plain Identity keeps the single output `name:0` with its int32 dtype.
    final = _identity_n(node, [f"{prefix}/buckets"])
    return [*nodes, final]


def _boosted_trees_bucketize(node: node_def_pb2.NodeDef) -> list[node_def_pb2.NodeDef]:
    data, control = _data_and_control(node)
    n = node.attr["num_features"].i
    if len(data) != 2 * n:
        raise ValueError(
            f"BoostedTreesBucketize node {node.name!r} has {len(data)} inputs, "
            f"expected 2 * num_features = {2 * n}"
        )
    f32, i32 = _type(types_pb2.DT_FLOAT), _type(types_pb2.DT_INT32)
    nodes: list[node_def_pb2.NodeDef] = []
    outputs = []
    for k in range(n):
        values, boundaries = data[k], data[n + k]
        prefix = f"{node.name}/beam_v1_rewrite/feature_{k}"
        search, index = _search(prefix, values, boundaries, types_pb2.DT_FLOAT, "LowerBound",
                                node.device, control)
        nodes += search
        nodes += [
            _node(f"{prefix}/size", "Size", [boundaries], node.device, T=f32, out_type=i32),
            _int32_const(f"{prefix}/one", [1], node.device),
            _int32_const(f"{prefix}/zero", [0], node.device),
            _node(f"{prefix}/last", "Sub", [f"{prefix}/size", f"{prefix}/one"], node.device, T=i32),
            _node(
                f"{prefix}/last_or_zero",
                "Maximum",
                [f"{prefix}/last", f"{prefix}/zero"],
                node.device,
                T=i32,
            ),
            _node(
                f"{prefix}/buckets",
                "Minimum",
                [index, f"{prefix}/last_or_zero"],
                node.device,
                T=i32,
            ),
        ]
        outputs.append(f"{prefix}/buckets")
    return [*nodes, _identity_n(node, outputs)]


REWRITES: dict[str, Rewrite] = {
    r.op: r
    for r in (
        Rewrite(
            "BucketizeWithInputBoundaries",
            ("Cast", "Reshape", "UpperBound", "Shape", "Const", "IdentityN"),
            "upper_bound of each value in the boundaries (converted to T), int32, input's shape",
            _bucketize_with_input_boundaries,
        ),
        Rewrite(
            "BoostedTreesBucketize",
            ("Reshape", "LowerBound", "Size", "Sub", "Maximum", "Minimum", "Const", "IdentityN"),
            "lower_bound of each value, clamped to len(boundaries)-1, flat int32 per feature",
            _boosted_trees_bucketize,
        ),
    )
}


# ---------------------------------------------------------------- applying them


def _runnable(op: str) -> bool:
    return kernels.op_status(op) is None


def available(op: str) -> bool:
    """True when `op` has a rewrite whose replacement ops all run here."""
    rewrite = REWRITES.get(op)
    return rewrite is not None and all(_runnable(o) for o in rewrite.uses_ops)


def needed(graph_def: graph_pb2.GraphDef) -> dict[str, list[str]]:
    """Rewrites this graph needs here: op -> nodes (top-level nodes only), for lost ops only."""
    found: dict[str, list[str]] = {}
    for node in graph_def.node:
        if node.op in REWRITES:
            found.setdefault(node.op, []).append(node.name)
    return {op: nodes for op, nodes in found.items() if not _runnable(op) and available(op)}


def missing_ops(
    graph_def: graph_pb2.GraphDef, rewrites: bool = True
) -> dict[str, tuple[list[str], str]]:
    """`kernels.missing_ops`, where an op a rewrite replaces counts as runnable if `rewrites`."""
    return kernels.missing_ops(graph_def, set(needed(graph_def)) if rewrites else ())


def rewrite_graph_def(
    graph_def: graph_pb2.GraphDef, ops_to_rewrite: set[str] | None = None
) -> tuple[graph_pb2.GraphDef, dict[str, list[str]]]:
    """A copy of `graph_def` with every node of a lost, rewritable op replaced.

    `ops_to_rewrite` forces the set of ops (tests use it to rewrite ops that still run here);
    by default the ops `needed` reports. Returns (new graph_def, {op: rewritten nodes}).
    """
    if ops_to_rewrite is None:
        ops_to_rewrite = set(needed(graph_def))
    if not ops_to_rewrite:
        return graph_def, {}
    out = graph_pb2.GraphDef()
    out.CopyFrom(graph_def)
    del out.node[:]
    done: dict[str, list[str]] = {}
    for node in graph_def.node:
        if node.op in ops_to_rewrite:
            out.node.extend(REWRITES[node.op].build(node))
            done.setdefault(node.op, []).append(node.name)
        else:
            out.node.add().CopyFrom(node)
    return out, done


def rewrite_meta_graph(
    meta_graph: meta_graph_pb2.MetaGraphDef, ops_to_rewrite: set[str] | None = None
) -> tuple[meta_graph_pb2.MetaGraphDef, dict[str, list[str]]]:
    """`rewrite_graph_def` on a MetaGraph's graph; the MetaGraph is copied only when changed."""
    graph_def, done = rewrite_graph_def(meta_graph.graph_def, ops_to_rewrite)
    if not done:
        return meta_graph, {}
    out = meta_graph_pb2.MetaGraphDef()
    out.CopyFrom(meta_graph)
    out.graph_def.CopyFrom(graph_def)
    # the stripped op list describes the ops the graph uses; keep it consistent
    kept = [o for o in out.meta_info_def.stripped_op_list.op if o.name not in done]
    del out.meta_info_def.stripped_op_list.op[:]
    out.meta_info_def.stripped_op_list.op.extend(kept)
    return out, done
