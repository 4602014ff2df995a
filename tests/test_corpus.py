"""beam_v1 against the 36 real TF1-era SavedModels in /work/shared/realmodels.

No mocks: every expected value comes from the model files themselves, either parsed here with
TensorFlow's own protos or computed by TensorFlow's own TF1 loader
(`tf.compat.v1.saved_model.loader.load` + `Session.run`) on the same inputs.
"""

from __future__ import annotations

import base64
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from realmodels import REALMODELS
from tensorflow.core.protobuf import saved_model_pb2

import beam_v1
from beam_v1.errors import FeedError, MissingOpsError, SignatureNotFoundError, TagsNotFoundError

if not REALMODELS.is_dir():
    pytest.skip(
        f"real-model corpus not found at {REALMODELS} (set BEAM_V1_REALMODELS to its folder)",
        allow_module_level=True,
    )

MODELS = sorted(p.name for p in REALMODELS.iterdir() if p.is_dir() and not p.name.startswith("_"))

# Models TensorFlow 2.21 cannot run, and the op each one lacks.
UNRUNNABLE = {
    "stfs__custom_op_zeroout": "ZeroOut",
}
# Models whose lost op beam_v1.model.rewrites replaces: they run with rewrites
# (tests/test_rewrites.py, tests/test_examples.py) and fail naming the op with rewrites=False.
REWRITTEN = {
    "tfx__chicago_taxi_estimator_tf1.12_1551382555": "BucketizeWithInputBoundaries",
    "tfx__chicago_taxi_estimator_tf1.13_1551303840": "BucketizeWithInputBoundaries",
    "tfx__chicago_taxi_estimator_tf1.15_1571697424": "BoostedTreesBucketize",
    "tfx__benchmark_trained_saved_model_tf1.15": "BoostedTreesBucketize",
    "tfx__transform_fn_tf1.15": "BoostedTreesBucketize",
}
COUNTER = "serving__saved_model_counter"  # stateful: tested on its own
RUST = [m for m in MODELS if m.startswith("rust__")]
RUNNABLE = [m for m in MODELS if m not in UNRUNNABLE and m not in REWRITTEN and m != COUNTER]

INIT_OP_KEY = "__saved_model_init_op"
BATCH = 3
PARSE_OPS = ("ParseExample", "ParseExampleV2")


# ------------------------------------------------------------------- model files


def model_path(name: str) -> str:
    return str(REALMODELS / name)


def saved_model_root(name: str) -> str:
    """The SavedModel folder: the directory itself, else its highest numbered version folder."""
    path = REALMODELS / name
    if (path / "saved_model.pb").is_file():
        return str(path)
    versions = [p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
    assert versions, f"{path} holds no saved_model.pb"
    return str(max(versions, key=lambda p: int(p.name)))


def read_proto(name: str) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(saved_model_root(name)) / "saved_model.pb").read_bytes())
    return proto


def only_meta_graph(name: str):
    proto = read_proto(name)
    assert len(proto.meta_graphs) == 1, name  # every model in the corpus has one MetaGraph
    return proto.meta_graphs[0]


def proto_signature_keys(meta_graph) -> set[str]:
    return set(meta_graph.signature_def) - {INIT_OP_KEY}


def has_known_rank(tensor_info) -> bool:
    """False for an unknown rank, and for no shape at all (TF 1.0 wrote none)."""
    return tensor_info.HasField("tensor_shape") and not tensor_info.tensor_shape.unknown_rank


def dtype_str(enum: int) -> str:
    return tf.dtypes.as_dtype(enum).name  # DT_FLOAT -> float32, DT_FLOAT_REF -> float32_ref


def test_corpus_is_complete():
    assert len(MODELS) == 36, MODELS
    assert set(UNRUNNABLE) <= set(MODELS) and COUNTER in MODELS and len(RUST) == 2
    assert set(REWRITTEN) <= set(MODELS) and len(UNRUNNABLE) + len(REWRITTEN) == 6
    assert len(RUNNABLE) == 29


# ------------------------------------------------------------------ 1. inspect


@pytest.mark.parametrize("name", MODELS)
def test_inspect_matches_saved_model_proto(name):
    meta_graph = only_meta_graph(name)
    placeholder_dtypes = {
        n.name + ":0": n.attr["dtype"].type
        for n in meta_graph.graph_def.node
        if n.op in ("Placeholder", "PlaceholderWithDefault")
    }
    info = beam_v1.inspect(model_path(name))

    assert info.path == saved_model_root(name)
    assert info.tags == tuple(meta_graph.meta_info_def.tags)
    assert info.tag_sets == [tuple(meta_graph.meta_info_def.tags)]
    assert info.tensorflow_version == meta_graph.meta_info_def.tensorflow_version
    assert set(info.signatures) == proto_signature_keys(meta_graph)
    for key, sig in info.signatures.items():
        sig_proto = meta_graph.signature_def[key]
        assert sig.key == key
        assert sig.method_name == sig_proto.method_name
        for specs, protos in ((sig.inputs, sig_proto.inputs), (sig.outputs, sig_proto.outputs)):
            assert set(specs) == set(protos), (key, specs.keys())
            for k, tensor_info in protos.items():
                spec = specs[k]
                assert spec.key == k
                # The graph wins where a (malformed) signature declares another dtype for an
                # input placeholder.
                dtype = tensor_info.dtype
                if specs is sig.inputs and tensor_info.WhichOneof("encoding") == "name":
                    dtype = placeholder_dtypes.get(tensor_info.name, dtype)
                assert spec.dtype == dtype_str(dtype), (key, k)
                if tensor_info.WhichOneof("encoding") == "coo_sparse":
                    assert spec.encoding == "coo_sparse"
                    assert spec.tensor_name == tensor_info.coo_sparse.values_tensor_name
                    assert spec.components == {
                        "values": tensor_info.coo_sparse.values_tensor_name,
                        "indices": tensor_info.coo_sparse.indices_tensor_name,
                        "dense_shape": tensor_info.coo_sparse.dense_shape_tensor_name,
                    }
                else:
                    assert spec.encoding == "dense"
                    assert spec.tensor_name == tensor_info.name
                if not has_known_rank(tensor_info):
                    assert spec.shape is None, (key, k)
                else:
                    assert spec.shape == tuple(d.size for d in tensor_info.tensor_shape.dim)
    if name not in UNRUNNABLE:
        assert info.missing_ops == {}


def test_inspect_reads_half_plus_three_like_tensorflow_1_0_meant_it():
    """TF 1.0 wrote TensorInfo without shapes and declared the regress input (serialized
    tf.Examples, a string placeholder) as float."""
    info = beam_v1.inspect(model_path("serving__saved_model_half_plus_three"))
    assert info.path.endswith("00000123")
    assert info.signatures["serving_default"].inputs["x"].shape is None
    assert info.signatures["serving_default"].outputs["y"].shape is None
    regress = info.signatures["tensorflow/serving/regress"].inputs["inputs"]
    assert (regress.dtype, regress.shape, regress.tensor_name) == ("string", None, "tf_example:0")


# ------------------------------------------------------------ shared V1Model cache


@pytest.fixture(scope="module")
def v1_model():
    """load(name) with default tags and signature, once per model for this module."""
    cache: dict[str, beam_v1.V1Model] = {}

    def get(name: str) -> beam_v1.V1Model:
        if name not in cache:
            cache[name] = beam_v1.load(model_path(name))
        return cache[name]

    yield get
    for model in cache.values():
        model.close()


# --------------------------------------------------------- 2. inputs and reference


def rng_for(*parts: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(parts).encode()))


def random_values(rng: np.random.Generator, dtype: tf.DType, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == tf.string:
        words = [
            f"w{rng.integers(0, 1000)} {rng.integers(0, 1000)}".encode()
            for _ in range(math.prod(shape))
        ]
        return np.array(words, dtype=object).reshape(shape)
    if dtype == tf.bool:
        return rng.integers(0, 2, size=shape).astype(bool)
    np_dtype = np.dtype(dtype.as_numpy_dtype)
    if np_dtype.kind == "f":
        return rng.uniform(-2.0, 2.0, size=shape).astype(np_dtype)
    if np_dtype.kind == "u":
        return rng.integers(0, 100, size=shape).astype(np_dtype)
    return rng.integers(-50, 50, size=shape).astype(np_dtype)


# Signatures whose outputs have a fixed batch dimension of 1 (a [1,10,10,1] Conv2D result is
# added to the [-1,1] input), so only a batch of 1 runs.
BATCH_OF_ONE = {
    ("serving__saved_model_half_plus_two_mkl", "regress_x2_to_y3"),
    ("serving__saved_model_half_plus_two_mkl", "regress_x_to_y2"),
}


def feed_shape(tensor_info, graph: tf.Graph, batch: int) -> tuple[int, ...]:
    """Signature shape with -1 -> batch. Where the signature gives no shape (TF 1.0 wrote none)
    the graph tensor's static shape is used; an unknown rank becomes a 1-D batch."""
    if has_known_rank(tensor_info):
        dims = [d.size for d in tensor_info.tensor_shape.dim]
    else:
        static = graph.get_tensor_by_name(tensor_info.name).shape
        dims = [-1] if static.rank is None else [-1 if d is None else d for d in static.as_list()]
    return tuple(batch if d < 0 else d for d in dims)


def _source(tensor: tf.Tensor) -> tf.Tensor:
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def _consumers(graph: tf.Graph, tensor_name: str, op_types: tuple[str, ...]) -> list:
    target = graph.get_tensor_by_name(tensor_name)
    return [
        op
        for op in graph.get_operations()
        if op.type in op_types and op.inputs and _source(op.inputs[0]).name == target.name
    ]


def _strings(tensor: tf.Tensor) -> list[str]:
    value = tf.get_static_value(tensor)
    assert value is not None, tensor.name
    return [v.decode() for v in np.atleast_1d(value)]


def example_features(parse_op) -> tuple[list, list]:
    """(dense [(key, dtype, shape)], sparse [(key, dtype)]) read from a ParseExample(V2) op."""
    if parse_op.type == "ParseExample":
        n_sparse, n_dense = parse_op.get_attr("Nsparse"), parse_op.get_attr("Ndense")
        inputs = list(parse_op.inputs)
        sparse_keys = [k for t in inputs[2 : 2 + n_sparse] for k in _strings(t)]
        dense_keys = [k for t in inputs[2 + n_sparse : 2 + n_sparse + n_dense] for k in _strings(t)]
    else:
        sparse_keys = _strings(parse_op.inputs[2]) if parse_op.get_attr("num_sparse") else []
        dense_keys = _strings(parse_op.inputs[3]) if parse_op.get_attr("Tdense") else []
        assert not parse_op.get_attr("ragged_value_types"), "ragged features not generated"
    dense_shapes = [tuple(tf.TensorShape(s).as_list()) for s in parse_op.get_attr("dense_shapes")]
    dense = list(zip(dense_keys, parse_op.get_attr("Tdense"), dense_shapes))
    sparse = list(zip(sparse_keys, parse_op.get_attr("sparse_types")))
    assert dense or sparse
    return dense, sparse


def _feature(dtype: tf.DType, values: np.ndarray) -> tf.train.Feature:
    values = values.reshape(-1).tolist()
    if dtype == tf.string:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if dtype == tf.int64:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    assert dtype == tf.float32, dtype
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def serialized_examples(rng, parse_ops, shape) -> np.ndarray:
    """Real tf.train.Example protos holding every feature the graph's parse ops read."""
    dense, sparse = [], []
    for op in parse_ops:
        d, s = example_features(op)
        dense += d
        sparse += s
    records = []
    for _ in range(math.prod(shape)):
        features = {}
        for key, dtype, dims in dense:
            assert all(d >= 0 for d in dims), (key, dims)
            features[key] = _feature(dtype, random_values(rng, dtype, (math.prod(dims),)))
        for key, dtype in sparse:
            features[key] = _feature(dtype, random_values(rng, dtype, (int(rng.integers(1, 3)),)))
        example = tf.train.Example(features=tf.train.Features(feature=features))
        records.append(example.SerializeToString())
    return np.array(records, dtype=object).reshape(shape)


def base64_jpegs(rng, shape) -> np.ndarray:
    """Web-safe base64 of real JPEG files (what a DecodeBase64 -> DecodeJpeg graph reads)."""
    images = []
    for _ in range(math.prod(shape)):
        pixels = rng.integers(0, 256, size=(24, 40, 3)).astype(np.uint8)
        jpeg = tf.io.encode_jpeg(pixels).numpy()
        assert jpeg[:2] == b"\xff\xd8"
        images.append(base64.urlsafe_b64encode(jpeg))
    return np.array(images, dtype=object).reshape(shape)


def make_inputs(name: str, graph: tf.Graph, sig_key: str, sig_proto) -> dict[str, np.ndarray]:
    """One deterministic value per signature input; keys sharing a tensor share the value."""
    by_tensor: dict[str, np.ndarray] = {}
    feeds = {}
    for key in sorted(sig_proto.inputs):
        info = sig_proto.inputs[key]
        assert info.WhichOneof("encoding") == "name", (sig_key, key)
        if info.name not in by_tensor:
            rng = rng_for(name, sig_key, info.name)
            batch = 1 if (name, sig_key) in BATCH_OF_ONE else BATCH
            shape = feed_shape(info, graph, batch)
            parse_ops = _consumers(graph, info.name, PARSE_OPS)
            if parse_ops:
                value = serialized_examples(rng, parse_ops, shape)
            elif _consumers(graph, info.name, ("DecodeBase64",)):
                value = base64_jpegs(rng, shape)
            else:
                value = random_values(rng, tf.dtypes.as_dtype(info.dtype), shape)
            by_tensor[info.name] = value
        feeds[key] = by_tensor[info.name]
    return feeds


def reference_session(name: str):
    """TensorFlow's own TF1 loader on a fresh graph: (session, MetaGraphDef)."""
    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    session = tf.compat.v1.Session(graph=graph, config=config)
    tags = list(only_meta_graph(name).meta_info_def.tags)
    with graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, tags, saved_model_root(name))
    return session, meta_graph


def reference_run(session, sig_proto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    feed_dict = {sig_proto.inputs[k].name: v for k, v in feeds.items()}
    keys = sorted(sig_proto.outputs)
    values = session.run([sig_proto.outputs[k].name for k in keys], feed_dict=feed_dict)
    return dict(zip(keys, values))


def assert_same_outputs(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), where
    for key, expected in want.items():
        actual = got[key]
        msg = f"{where} output {key!r}"
        assert isinstance(actual, np.ndarray), msg
        expected = np.asarray(expected)
        assert actual.shape == expected.shape, msg
        assert actual.dtype == expected.dtype, msg
        if expected.dtype.kind == "f":
            assert not np.isnan(expected).any(), msg  # NaN == NaN would compare nothing
            np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, err_msg=msg)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=msg)


@pytest.mark.parametrize("name", RUNNABLE)
def test_predict_matches_tf_loader_on_every_signature(name, v1_model):
    model = v1_model(name)
    session, meta_graph = reference_session(name)
    try:
        keys = sorted(proto_signature_keys(meta_graph))
        assert keys and set(model.signatures) == set(keys)
        for sig_key in keys:
            sig_proto = meta_graph.signature_def[sig_key]
            feeds = make_inputs(name, session.graph, sig_key, sig_proto)
            want = reference_run(session, sig_proto, feeds)
            got = model.predict(feeds, signature=sig_key)
            assert_same_outputs(got, want, f"{name} signature {sig_key!r}")
    finally:
        session.close()


def test_counter_model_is_stateful_through_its_signatures():
    meta_graph = only_meta_graph(COUNTER)
    keys = proto_signature_keys(meta_graph)
    assert keys == {"get_counter", "incr_counter", "incr_counter_by", "reset_counter"}

    with pytest.raises(SignatureNotFoundError) as excinfo:
        beam_v1.load(model_path(COUNTER))
    for key in keys:
        assert repr(key) in str(excinfo.value)

    with beam_v1.load(model_path(COUNTER), signature="get_counter") as model:
        assert model.default_signature == "get_counter"
        assert model.required_inputs("incr_counter_by") == ["delta"]

        def run(signature, **feeds):
            out = model.predict(feeds, signature=signature)
            assert list(out) == ["output"]
            assert out["output"].dtype == np.float32 and out["output"].shape == ()
            return float(out["output"])

        assert run("get_counter") == 0.0  # the checkpoint holds counter = 0
        assert run("incr_counter") == 1.0
        assert run("incr_counter_by", delta=np.float32(3)) == 4.0
        assert run("get_counter") == 4.0
        assert model.variables() == {"counter": np.float32(4.0)}
        assert run("reset_counter") == 0.0
        assert run("get_counter") == 0.0
        # The default signature needs no feeds.
        assert float(model.predict({})["output"]) == 0.0


# ------------------------------------------------------------------ 3. rust tags


@pytest.mark.parametrize("name", RUST)
def test_rust_models_need_train_serve_tags(name, v1_model):
    model = v1_model(name)  # default tags: the model's only tag set
    assert set(model.tags) == {"train", "serve"}
    assert list(model.signatures) == ["tensorflow/serving/regress"]
    assert model.default_signature == "tensorflow/serving/regress"

    for call in (
        lambda: beam_v1.load(model_path(name), tags=["serve"]),
        lambda: beam_v1.inspect(model_path(name), tags="serve"),
    ):
        with pytest.raises(TagsNotFoundError) as excinfo:
            call()
        assert "train,serve" in str(excinfo.value)

    info = beam_v1.inspect(model_path(name), tags="train,serve")
    assert set(info.tags) == {"train", "serve"}


# -------------------------------------------------------------- 4. unrunnable


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_rewritable_models_need_a_rewrite_and_no_op_is_missing(name):
    info = beam_v1.inspect(model_path(name))
    assert info.missing_ops == {}
    assert list(info.rewrites) == [REWRITTEN[name]]
    graph_nodes_with_op = {
        n.name for n in only_meta_graph(name).graph_def.node if n.op == REWRITTEN[name]
    }
    assert set(info.rewrites[REWRITTEN[name]]) == graph_nodes_with_op


@pytest.mark.parametrize("name", sorted({**UNRUNNABLE, **REWRITTEN}))
def test_unrunnable_models_name_the_missing_op(name):
    op = {**UNRUNNABLE, **REWRITTEN}[name]
    # rewritable ops count as missing only with the rewrites turned off
    off = {"rewrites": False} if name in REWRITTEN else {}
    meta_graph = only_meta_graph(name)
    node_names = {n.name for n in meta_graph.graph_def.node}
    node_names |= {
        f"{f.signature.name}/{n.name}"
        for f in meta_graph.graph_def.library.function
        for n in f.node_def
    }
    graph_nodes_with_op = {n.name for n in meta_graph.graph_def.node if n.op == op}

    info = beam_v1.inspect(model_path(name), **off)
    assert list(info.missing_ops) == [op]
    assert set(info.missing_ops[op]) <= node_names
    assert graph_nodes_with_op <= set(info.missing_ops[op])
    assert info.missing_ops[op]

    with pytest.raises(MissingOpsError) as excinfo:
        beam_v1.load(model_path(name), **off)
    message = str(excinfo.value)
    assert op in message
    assert "--op-library" in message
    assert list(excinfo.value.missing) == [op]
    assert set(excinfo.value.missing[op]) == set(info.missing_ops[op])


# ------------------------------------------------------------------ 5. feed errors


def test_unsafe_dtype_and_unknown_key_raise_feed_error(v1_model):
    model = v1_model("stfs__simplest_model")
    keys = np.arange(BATCH, dtype=np.int32).reshape(BATCH, 1)
    np.testing.assert_array_equal(model.predict({"keys": keys})["keys"], keys)

    with pytest.raises(FeedError) as excinfo:
        model.predict({"keys": keys.astype(np.float32) + 0.5})
    message = str(excinfo.value)
    assert "'keys'" in message and "int32" in message

    with pytest.raises(FeedError) as excinfo:
        model.predict({"keys": keys, "not_an_input": keys})
    message = str(excinfo.value)
    assert "not_an_input" in message
    assert "keys" in message.replace("not_an_input", "")  # lists the signature's inputs
