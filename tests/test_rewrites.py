"""Graph rewrites for the ops TensorFlow 2.21 lost, against references computed with `bisect`.

`bisect.bisect_left` / `bisect_right` compare exactly as C++ `std::lower_bound` / `upper_bound`
(`a[mid] < x` / `x < a[mid]`), NaN included, so they reproduce the lost kernels independently of
TensorFlow. The taxi models are then run end to end and every rewritten node's output is checked
against that reference on the node's own inputs.
"""

from __future__ import annotations

import bisect
import gzip

import numpy as np
import pytest
import tensorflow as tf
from realmodels import REALMODELS
from tensorflow.core.framework import graph_pb2, types_pb2

import beam_v1
from beam_v1.errors import MissingOpsError
from beam_v1.model import example_spec as examples_mod
from beam_v1.model import metadata as savedmodel
from beam_v1.model import rewrites

TAXI_DATA = REALMODELS / "_data" / "tfx_chicago_taxi_examples"
TAXI = {
    "tfx__chicago_taxi_estimator_tf1.12_1551382555": "BucketizeWithInputBoundaries",
    "tfx__chicago_taxi_estimator_tf1.13_1551303840": "BucketizeWithInputBoundaries",
    "tfx__chicago_taxi_estimator_tf1.15_1571697424": "BoostedTreesBucketize",
    "tfx__benchmark_trained_saved_model_tf1.15": "BoostedTreesBucketize",
}


def upper_bound_ref(values, boundaries) -> np.ndarray:
    """contrib BucketizeWithInputBoundaries: upper_bound, boundaries converted to the input type."""
    flat = np.asarray(values).ravel()
    # python ints/floats: exact, no numpy promotion rules in the comparisons
    cast = [int(np.trunc(b)) if flat.dtype.kind in "iu" else float(b) for b in boundaries]
    out = [bisect.bisect_right(cast, v) for v in flat.tolist()]
    return np.asarray(out, np.int32).reshape(np.shape(values))


def boosted_ref(values, boundaries) -> np.ndarray:
    """BoostedTreesBucketize: lower_bound clamped to len-1; empty boundaries give 0; flat."""
    out = []
    for v in np.asarray(values, np.float32).ravel().tolist():
        if not len(boundaries):
            out.append(0)
            continue
        out.append(min(bisect.bisect_left(list(boundaries), v), len(boundaries) - 1))
    return np.asarray(out, np.int32)


def run_graph_def(graph_def: graph_pb2.GraphDef, fetches, feeds) -> list[np.ndarray]:
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(fetches, feed_dict=feeds)


# ----------------------------------------------------------- BucketizeWithInputBoundaries


def bucketize_graph_def(dtype: tf.DType, shape) -> graph_pb2.GraphDef:
    """x -> BucketizeWithInputBoundaries(x, b) -> Identity `out`, with a control input on the
    lost node; the op is not registered here, so its NodeDef is written by hand."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(dtype, shape, name="x")
        tf.compat.v1.placeholder(tf.float32, [None], name="b")
        tf.no_op(name="dep")
        tf.identity(tf.zeros([], tf.int32), name="placeholder_for_lost")
    graph_def = graph.as_graph_def()
    lost = graph_def.node.add()
    lost.name = "bucketize"
    lost.op = "BucketizeWithInputBoundaries"
    lost.input.extend(["x", "b", "^dep"])
    lost.attr["T"].type = x.dtype.as_datatype_enum
    out = graph_def.node.add()
    out.name = "out"
    out.op = "Identity"
    out.input.append("bucketize:0")
    out.attr["T"].type = types_pb2.DT_INT32
    return graph_def


def test_bucketize_with_input_boundaries_is_lost_and_rewritable():
    graph_def = bucketize_graph_def(tf.float32, [None])
    assert "BucketizeWithInputBoundaries" in rewrites.missing_ops(graph_def, rewrites=False)
    assert "BucketizeWithInputBoundaries" not in rewrites.missing_ops(graph_def)
    assert rewrites.needed(graph_def) == {"BucketizeWithInputBoundaries": ["bucketize"]}


@pytest.mark.parametrize(
    "dtype,values",
    [
        # below all, on each boundary, between, above all, NaN, infinities
        (tf.float32, [-5.0, 0.0, 10.0, 100.0, 5.0, 10000.0, 9.999, 10.001, np.nan, -np.inf,
                      np.inf]),
        (tf.float64, [-5.0, 0.0, 10.0, 100.0, 2.5, 2.4999999, 150.0]),
        (tf.int64, [-5, 0, 2, 3, 10, 99, 100, 101, -1]),
        (tf.int32, [-5, 0, 2, 3, 10, 99, 100, 101, -1, -2]),
    ],
)
def test_bucketize_with_input_boundaries_rewrite_matches_reference(dtype, values):
    boundaries = np.array([-1.5, 0.0, 2.5, 10.0, 100.0], np.float32)
    graph_def = bucketize_graph_def(dtype, [None])
    rewritten, done = rewrites.rewrite_graph_def(graph_def)
    assert done == {"BucketizeWithInputBoundaries": ["bucketize"]}
    x = np.array(values, dtype.as_numpy_dtype)
    (got,) = run_graph_def(rewritten, ["out:0"], {"x:0": x, "b:0": boundaries})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, upper_bound_ref(x, boundaries))
    if dtype == tf.float32:
        # the doc example of the op, and numpy's searchsorted for the non-NaN values
        finite = ~np.isnan(x)
        np.testing.assert_array_equal(
            got[finite], np.searchsorted(boundaries, x[finite], side="right")
        )
        assert got[np.isnan(x)].tolist() == [len(boundaries)]  # upper_bound of NaN: the end


def test_bucketize_with_input_boundaries_keeps_the_input_shape_and_the_doc_example():
    graph_def = bucketize_graph_def(tf.float32, [None, 2])
    rewritten, _ = rewrites.rewrite_graph_def(graph_def)
    x = np.array([[-5, 10000], [150, 10], [5, 100]], np.float32)
    (got,) = run_graph_def(rewritten, ["out:0"], {"x:0": x, "b:0": np.array([0, 10, 100],
                                                                            np.float32)})
    np.testing.assert_array_equal(got, [[0, 3], [3, 2], [1, 3]])
    (empty,) = run_graph_def(rewritten, ["out:0"], {"x:0": x, "b:0": np.zeros(0, np.float32)})
    np.testing.assert_array_equal(empty, np.zeros((3, 2), np.int32))


# ------------------------------------------------------------------ BoostedTreesBucketize


def boosted_graph_def(num_features: int) -> graph_pb2.GraphDef:
    graph = tf.Graph()
    with graph.as_default():
        xs = [tf.compat.v1.placeholder(tf.float32, [None], name=f"x{k}") for k in
              range(num_features)]
        bs = [tf.compat.v1.placeholder(tf.float32, [None], name=f"b{k}") for k in
              range(num_features)]
        buckets = tf.raw_ops.BoostedTreesBucketize(float_values=xs, bucket_boundaries=bs,
                                                   name="bucketize")
        for k, b in enumerate(buckets):
            tf.identity(b, name=f"out{k}")
    return graph.as_graph_def()


def test_boosted_trees_bucketize_has_no_kernel_and_is_rewritable():
    graph_def = boosted_graph_def(1)
    missing = rewrites.missing_ops(graph_def, rewrites=False)
    assert missing["BoostedTreesBucketize"][1] == "registered, but no CPU kernel"
    assert rewrites.missing_ops(graph_def) == {}
    assert rewrites.needed(graph_def) == {"BoostedTreesBucketize": ["bucketize"]}


def test_boosted_trees_bucketize_rewrite_matches_reference():
    boundaries = [np.array([-1.5, 0.0, 2.5, 10.0, 100.0], np.float32),
                  np.array([3.0], np.float32),
                  np.zeros(0, np.float32)]
    values = np.array([-5.0, -1.5, 0.0, 1.0, 2.5, 10.0, 99.0, 100.0, 1e9, np.nan, -np.inf,
                       np.inf], np.float32)
    graph_def = boosted_graph_def(3)
    rewritten, done = rewrites.rewrite_graph_def(graph_def)
    assert done == {"BoostedTreesBucketize": ["bucketize"]}
    feeds = {}
    for k in range(3):
        feeds[f"x{k}:0"] = values[::-1] if k == 1 else values
        feeds[f"b{k}:0"] = boundaries[k]
    got = run_graph_def(rewritten, ["out0:0", "out1:0", "out2:0", "bucketize:2"], feeds)
    for k in range(3):
        assert got[k].dtype == np.int32
        np.testing.assert_array_equal(got[k], boosted_ref(feeds[f"x{k}:0"], boundaries[k]))
    np.testing.assert_array_equal(got[3], np.zeros(len(values), np.int32))  # empty: bucket 0
    # spelled out for the first feature: a value on a boundary stays in its bucket, past the
    # last boundary clamps to the last bucket, NaN goes to bucket 0
    assert got[0].tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 4, 0, 0, 4]


def test_rewrites_can_be_turned_off_and_ops_that_exist_are_not_rewritten():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        tf.raw_ops.Bucketize(input=x, boundaries=[0.0, 1.0], name="core_bucketize")
    graph_def = graph.as_graph_def()
    assert rewrites.needed(graph_def) == {}
    same, done = rewrites.rewrite_graph_def(graph_def)
    assert same is graph_def and done == {}


# ------------------------------------------------------------------------- taxi models


def taxi_examples() -> list[bytes]:
    (path,) = TAXI_DATA.glob("*.gz")
    records = []
    with gzip.open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):  # TFRecord framing: length, crc, data, crc
        length = int.from_bytes(data[offset:offset + 8], "little")
        records.append(data[offset + 12:offset + 12 + length])
        offset += 16 + length
    return records


needs_corpus = pytest.mark.skipif(not REALMODELS.is_dir(), reason="real-model corpus absent")


@needs_corpus
@pytest.mark.parametrize("name", sorted(TAXI))
def test_taxi_model_loads_with_rewrites_and_each_rewritten_node_matches_reference(name):
    op = TAXI[name]
    info = beam_v1.inspect(str(REALMODELS / name))
    assert info.missing_ops == {}
    assert list(info.rewrites) == [op] and info.rewrites[op]
    with pytest.raises(MissingOpsError) as excinfo:
        beam_v1.load(str(REALMODELS / name), rewrites=False)
    assert op in str(excinfo.value)

    meta_graph = savedmodel.select_meta_graph(
        savedmodel.read_saved_model(info.path), None
    )
    spec = examples_mod.specs_of_signature(meta_graph, "serving_default")["inputs"]
    examples = np.array(retyped_examples(taxi_examples(), spec), dtype=object)
    assert len(examples) == 414
    with beam_v1.load(str(REALMODELS / name)) as model:
        assert model.rewritten == info.rewrites
        graph = model.graph
        sig = model.signature("serving_default")
        feed = {graph.get_tensor_by_name(sig.inputs["inputs"].tensor_name): examples}
        checked = 0
        for node_name in model.rewritten[op]:
            identity = graph.get_operation_by_name(node_name)
            lost_inputs = [t for t in _lost_node_inputs(model, node_name)]
            values = model.session.run(
                [identity.outputs[0], *lost_inputs], feed_dict=feed
            )
            out, x, b = values
            assert len(out) == 414 or out.shape == x.shape
            if op == "BucketizeWithInputBoundaries":
                np.testing.assert_array_equal(out, upper_bound_ref(x, np.ravel(b)))
            else:
                np.testing.assert_array_equal(out, boosted_ref(x, np.ravel(b)))
            assert len(set(out.tolist())) > 1  # the data spread over several buckets
            checked += 1
        assert checked == len(info.rewrites[op]) >= 1
        # every signature end to end: tests/test_examples.py
        scores = model.predict({"inputs": examples})["scores"]
        assert scores.shape == (414, 2) and np.isfinite(scores).all()
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def retyped_examples(records: list[bytes], spec) -> list[bytes]:
    """The examples with each feature in the list kind the model parses it as: the benchmark
    export reads `trip_seconds` and the census tracts as int64 where this data holds floats
    (whole numbers), so those are re-encoded as int64; everything else is kept byte for byte."""
    out = []
    for record in records:
        example = tf.train.Example.FromString(record)
        changed = False
        for key, feature in example.features.feature.items():
            want = spec.features.get(key)
            if want is None or feature.WhichOneof("kind") != "float_list" or want.dtype != "int64":
                continue
            values = list(feature.float_list.value)
            assert all(v == int(v) for v in values)
            feature.ClearField("float_list")
            feature.int64_list.value.extend(int(v) for v in values)
            changed = True
        out.append(example.SerializeToString() if changed else record)
    return out


def _lost_node_inputs(model, node_name):
    """The (values, boundaries) tensors the lost node read, from the model's MetaGraph."""
    meta_graph = savedmodel.select_meta_graph(savedmodel.read_saved_model(model.path), None)
    (node,) = [n for n in meta_graph.graph_def.node if n.name == node_name]
    data = [i for i in node.input if not i.startswith("^")]
    return [model.graph.get_tensor_by_name(i if ":" in i else i + ":0") for i in data]


@needs_corpus
def test_transform_fn_runs_its_transform_signature_with_the_rewrite():
    """tfx__transform_fn_tf1.15 (tag `transform`, coo_sparse inputs): every input fed as a
    SparseTensorValue built from the taxi examples; each rewritten BoostedTreesBucketize node
    matches the reference on the values it read."""
    name = "tfx__transform_fn_tf1.15"
    with beam_v1.load(str(REALMODELS / name)) as model:
        assert list(model.rewritten) == ["BoostedTreesBucketize"]
        sig = model.signature()
        records = [tf.train.Example.FromString(r) for r in taxi_examples()]
        feeds = {}
        for key, spec in sig.inputs.items():
            rows, values = [], []
            for i, example in enumerate(records):
                feature = example.features.feature.get(key)
                kind = feature.WhichOneof("kind") if feature is not None else None
                if kind is None:
                    continue
                for v in getattr(feature, kind).value:
                    rows.append(i)
                    values.append(v)
            dtype = {"float32": np.float32, "int64": np.int64, "string": object}[spec.dtype]
            values = np.array(values, dtype=dtype) if values else np.zeros(0, dtype)
            feeds[key] = tf.compat.v1.SparseTensorValue(
                np.array([[r, 0] for r in rows], np.int64).reshape(-1, 2), values,
                np.array([len(records), 1], np.int64),
            )
        outputs = model.predict(feeds)
        assert all(len(v) == 414 for v in outputs.values() if v.ndim)
        graph = model.graph
        feed_dict = {}
        for key, spec in sig.inputs.items():
            for part in ("indices", "values", "dense_shape"):
                feed_dict[graph.get_tensor_by_name(spec.components[part])] = getattr(
                    feeds[key], part
                )
        for node_name in model.rewritten["BoostedTreesBucketize"]:
            out, x, b = model.session.run(
                [graph.get_operation_by_name(node_name).outputs[0],
                 *_lost_node_inputs(model, node_name)],
                feed_dict=feed_dict,
            )
            np.testing.assert_array_equal(out, boosted_ref(x, np.ravel(b)))
            assert len(set(out.tolist())) > 1
