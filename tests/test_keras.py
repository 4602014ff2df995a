"""V1Layer: a v1 signature as a Keras 3 layer, compared with a direct session run."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from realmodels import REALMODELS

import beam_v1
from beam_v1.errors import FeedError
from beam_v1.keras import V1Layer


def _real(name: str) -> str:
    path = REALMODELS / name
    if not path.is_dir():
        pytest.skip(f"real model {name} not found under {REALMODELS}")
    return str(path)


def _reference(path, feeds, signature=None):
    with beam_v1.load(path, signature=signature) as model:
        return model.predict(feeds, signature=signature)


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


def _multi_feeds(n=5):
    rng = np.random.RandomState(0)
    return {
        "a": rng.rand(n, 3).astype(np.float32),
        "b": np.arange(n, dtype=np.int64),
        "c": rng.rand(n, 1),
    }


def test_multi_input_eager_functional_predict(built_models):
    path = built_models["multi_input"]
    feeds = _multi_feeds()
    ref = _reference(path, feeds)
    layer = V1Layer(path)
    assert layer.input_keys == ("a", "b", "c")
    assert set(layer.output_keys) == {"total", "a_scaled"}

    eager = layer(feeds)  # dict in
    for k in ref:
        _close(eager[k], ref[k])
    listed = layer([feeds["a"], feeds["b"], feeds["c"]])  # list in input_keys order
    _close(listed["total"], ref["total"])

    a = keras.Input((3,), name="a")
    b = keras.Input((), dtype="int64", name="b")
    c = keras.Input((1,), dtype="float64", name="c")
    outs = layer({"a": a, "b": b, "c": c})
    assert tuple(outs["a_scaled"].shape) == (None, 3) and outs["a_scaled"].dtype == "float32"
    assert tuple(outs["total"].shape) == (None,)
    model = keras.Model([a, b, c], outs)
    got = model.predict([feeds["a"], feeds["b"], feeds["c"]], batch_size=2, verbose=0)
    for k in ref:
        _close(got[k], ref[k])
    called = model([feeds["a"], feeds["b"], feeds["c"]])  # eager call of the functional model
    _close(called["a_scaled"], ref["a_scaled"])

    traced = tf.function(lambda x: layer(x))(feeds)  # under tf.function
    _close(traced["total"], ref["total"])


def test_single_output_and_config_roundtrip(built_models, tmp_path):
    path = built_models["multi_input"]
    feeds = _multi_feeds(3)
    ref = _reference(path, feeds)
    layer = V1Layer(path, outputs="total", name="legacy")
    single = layer(feeds)
    assert not isinstance(single, dict)
    _close(single, ref["total"])
    config = layer.get_config()
    assert config["path"] == path
    assert config["signature"] == "serving_default"
    assert config["tags"] == ["serve"]
    assert config["outputs"] == ["total"]
    clone = V1Layer.from_config(config)
    _close(clone(feeds), ref["total"])

    a = keras.Input((3,), name="a")
    b = keras.Input((), dtype="int64", name="b")
    c = keras.Input((1,), dtype="float64", name="c")
    model = keras.Model([a, b, c], keras.layers.Rescaling(2.0)(layer([a, b, c])))
    saved = str(tmp_path / "m.keras")
    model.save(saved)
    loaded = keras.saving.load_model(saved)
    _close(loaded.predict([feeds["a"], feeds["b"], feeds["c"]], verbose=0), ref["total"] * 2.0)


def test_refusals(built_models):
    with pytest.raises(ValueError, match="not trainable"):
        V1Layer(built_models["mlp"], trainable=True)
    with pytest.raises(beam_v1.SignatureNotFoundError):
        V1Layer(built_models["mlp"], outputs=["nope"])
    layer = V1Layer(built_models["multi_input"])
    with pytest.raises(FeedError, match="needs input"):
        layer({"a": np.ones((1, 3), np.float32)})
    with pytest.raises(FeedError, match="takes 3"):
        layer([np.ones((1, 3), np.float32)])
    assert layer.trainable is False and layer.weights == []


def _three_ways(layer, inputs, feeds_list, ref_out):
    """Eager, in a functional model (eager call) and through predict."""
    _close(layer(dict(zip(layer.input_keys, feeds_list))), ref_out)
    model = keras.Model(inputs, layer(inputs))
    _close(model(feeds_list), ref_out)
    _close(model.predict(feeds_list, verbose=0), ref_out)


def test_corpus_model_matmul_two_inputs():
    path = _real("mlnet__model_matmul")
    rng = np.random.RandomState(1)
    a = rng.rand(4, 2, 2).astype(np.float32)
    b = rng.rand(4, 2, 2).astype(np.float32)
    ref = _reference(path, {"a": a, "b": b})["c"]
    np.testing.assert_allclose(ref, a @ b, rtol=1e-5)  # the reference is what we think
    layer = V1Layer(path)
    assert layer.input_keys == ("a", "b")
    inputs = [keras.Input((2, 2), name="a"), keras.Input((2, 2), name="b")]
    _three_ways(layer, inputs, [a, b], ref)


def test_corpus_redundant_inputs_fixed_batch_one():
    path = _real("tf2onnx__saved_model_with_redundant_inputs")
    rng = np.random.RandomState(2)
    x = rng.rand(1, 10).astype(np.float32)
    y = rng.rand(1, 10).astype(np.float32)
    ref = _reference(path, {"x": x, "y": y})["z"]
    layer = V1Layer(path)
    inputs = [keras.Input((10,), name="x"), keras.Input((10,), name="y")]
    _three_ways(layer, inputs, [x, y], ref)
    # more rows than the fixed batch of 1: run row by row, each equal to the session
    xs = rng.rand(3, 10).astype(np.float32)
    ys = rng.rand(3, 10).astype(np.float32)
    many = layer({"x": xs, "y": ys}).numpy()
    for i in range(3):
        _close(many[i : i + 1], _reference(path, {"x": xs[i : i + 1], "y": ys[i : i + 1]})["z"])


def test_corpus_half_plus_two_cpu():
    path = _real("serving__saved_model_half_plus_two_cpu")
    x = np.array([[0.0], [1.0], [-4.0], [10.5]], np.float32)
    ref = _reference(path, {"x": x})["y"]
    np.testing.assert_allclose(ref, 0.5 * x + 2.0)
    layer = V1Layer(path)
    _three_ways(layer, [keras.Input((1,), name="x")], [x], ref)
    # another signature of the same model (regress over a float input, main_op + assets)
    reg = V1Layer(path, signature="regress_x2_to_y3")
    (key,) = reg.input_keys
    want = _reference(path, {key: x}, signature="regress_x2_to_y3")
    _close(reg(x), next(iter(want.values())))


def test_corpus_aliased_keys_that_tf_saved_model_load_rejects():
    # several signature keys share one tensor (u8 -> i8 ...): tf.saved_model.load fails here
    path = _real("mlnet__model_types_test")
    from beam_v1.model.session import numpy_dtype

    with beam_v1.load(path) as model:
        sig = model.signature()
        layer = V1Layer(path)
        feeds = {}
        for i, k in enumerate(layer.input_keys):
            spec = sig.inputs[k]
            shape = [2 if d < 0 else d for d in spec.shape]
            feeds[k] = (np.arange(np.prod(shape)).reshape(shape) + i).astype(numpy_dtype(spec))
        ref = model.predict(feeds)
    assert "u8" in sig.inputs and "u8" not in layer.input_keys  # fed once, through i8
    got = layer(feeds)
    assert set(got) == set(ref)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k])
    aliased = {("u8" if k == "i8" else k): v for k, v in feeds.items()}
    np.testing.assert_array_equal(np.asarray(layer(aliased)["o_i8"]), ref["o_i8"])


def _build_init_writer(path, marker):
    """A harmless y = x * 2 whose main_op writes `marker` (an unsafe model, SPEC §7)."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.multiply(x, 2.0, name="y")
        main_op = tf.group(
            v1.saved_model.main_op.main_op(),
            tf.io.write_file(marker, tf.constant("ran"), name="write_marker"),
        )
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                sess,
                ["serve"],
                signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})
                },
                main_op=main_op,
            )
            builder.save()
    return path


def test_unsafe_model_refused_before_anything_runs(tmp_path):
    from beam_v1.model.audit import UnsafeModelError

    marker = tmp_path / "marker.txt"
    path = _build_init_writer(str(tmp_path / "unsafe"), str(marker))
    with pytest.raises(UnsafeModelError, match="write_marker"):
        V1Layer(path)
    assert not marker.exists()  # the init op never ran
    layer = V1Layer(path, allow_unsafe_ops=True)
    assert marker.exists()  # now it did: the init op runs on import
    _close(layer(np.array([1.0, 2.5], np.float32)), [2.0, 5.0])
    assert layer.get_config()["allow_unsafe_ops"] is True


def test_corpus_tfx_estimator_serialized_examples_with_rewrites():
    # string input of serialized tf.Example; the graph needs beam_v1.model.rewrites
    # (BoostedTrees...)
    path = _real("tfx__chicago_taxi_estimator_tf1.15_1571697424")
    data = REALMODELS / "_data" / "tfx_chicago_taxi_examples"
    (shard,) = sorted(data.glob("*.gz"))
    records = tf.data.TFRecordDataset(str(shard), compression_type="GZIP").take(16)
    examples = np.array([r.numpy() for r in records], dtype=object)
    ref = _reference(path, {"examples": examples}, signature="predict")
    layer = V1Layer(path, signature="predict", outputs=["probabilities", "classes"])
    got = layer(tf.constant(examples))
    _close(got["probabilities"], ref["probabilities"])
    assert got["classes"].numpy().tolist() == ref["classes"].tolist()
    inp = keras.Input((), dtype="string")
    model = keras.Model(inp, layer(inp))
    # Keras data adapters refuse numpy object arrays: give strings as a tf.Tensor
    got = model.predict(tf.constant(examples), batch_size=8, verbose=0)
    _close(got["probabilities"], ref["probabilities"])
