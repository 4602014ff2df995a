"""`beam_v1.load` / `V1Model` and `beam_v1.inspect` on real TF1 SavedModels (tests/builders.py).

Every prediction is checked against a reference computed here: a numpy formula and
TensorFlow's own TF1 loader (`tf.compat.v1.saved_model.loader.load` + `sess.run`).
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import builders
import numpy as np
import pytest
import tensorflow as tf

import beam_v1
from beam_v1.errors import (
    BeamV1Error,
    FeedError,
    ModelFileError,
    SignatureNotFoundError,
    TagsNotFoundError,
)

v1 = tf.compat.v1
RNG = np.random.RandomState(1234)


# ------------------------------------------------------------------ references


def tf_reference(path, feeds, signature="serving_default", outputs=None):
    """Run `signature` with TensorFlow's own TF1 loader, in a fresh graph and session."""
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess:
        meta_graph = v1.saved_model.loader.load(sess, ["serve"], path)
        sig = meta_graph.signature_def[signature]
        keys = list(outputs or sig.outputs)
        feed_dict = {sig.inputs[k].name: v for k, v in feeds.items()}
        values = sess.run([sig.outputs[k].name for k in keys], feed_dict=feed_dict)
    return dict(zip(keys, values))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mlp_numpy(x):
    k1, b1, k2, b2 = builders.mlp_weights()
    scores = _softmax(np.maximum(x @ k1 + b1, 0.0) @ k2 + b2)
    return {"scores": scores, "label": scores.argmax(axis=1).astype(np.int64)}


def _x(*shape):
    return RNG.normal(size=shape).astype(np.float32)


VOCAB_IDS = {w: i for i, w in enumerate(builders.VOCAB)}
WORDS = np.array(["banana", "apple", "kiwi", "date", "cherry", ""], dtype=object)

# name -> (feeds, numpy reference of the outputs)
CASES = {
    "mlp": (lambda: {"x": _x(7, 4)}, lambda f: mlp_numpy(f["x"])),
    "multi_input": (
        lambda: {
            "a": _x(5, 3),
            "b": np.array([1, -2, 3, 40, 0], dtype=np.int64),
            "c": RNG.normal(size=(5, 1)),
        },
        lambda f: {
            "total": f["a"].sum(axis=1) + f["b"] + f["c"][:, 0].astype(np.float32),
            "a_scaled": f["a"] * builders.MULTI_INPUT_W,
        },
    ),
    "string_lookup": (
        lambda: {"word": WORDS},
        lambda f: {
            "id": np.array([VOCAB_IDS.get(w, -1) for w in f["word"]], dtype=np.int64),
            "score": np.array([VOCAB_IDS.get(w, -1) for w in f["word"]], dtype=np.float32) * 0.5
            + builders.STRING_LOOKUP_V,
        },
    ),
    "fixed_batch": (lambda: {"x": _x(4, 3)}, lambda f: {"y": f["x"] * 2 + 1}),
    "scalar_input": (lambda: {"x": np.float32(2.5)}, lambda f: {"y": np.float32(6.5)}),
    "nested": (
        lambda: {"x": _x(3, 2, 3)},
        lambda f: {"total": f["x"].sum(axis=(1, 2)), "doubled": f["x"] * 2},
    ),
    "variable_len": (
        lambda: {"x": _x(2, 5)},
        lambda f: {"total": f["x"].sum(axis=1), "count": np.array([5, 5], dtype=np.int32)},
    ),
    "unknown_rank": (lambda: {"x": _x(2, 3, 4)}, lambda f: {"y": f["x"] * 2}),
    "partitioned": (lambda: {"x": _x(6, 8)}, lambda f: {"y": f["x"] @ builders.PARTITIONED_W}),
    "ref_and_resource": (
        lambda: {"x": np.array([1.0, -2.0, 3.5], dtype=np.float32)},
        lambda f: {"y": np.array([2.5, -3.5, 7.5], dtype=np.float32)},
    ),
}


def assert_outputs(got, want, exact=False):
    assert sorted(got) == sorted(want)
    for key, expected in want.items():
        expected = np.asarray(expected)
        value = got[key]
        assert isinstance(value, np.ndarray), key
        assert value.shape == expected.shape, (key, value.shape, expected.shape)
        if exact or expected.dtype.kind in "iub":
            np.testing.assert_array_equal(value, expected, err_msg=key)
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6, err_msg=key)


def copy_model(built_models, name, tmp_path, new_name="copy"):
    dest = str(tmp_path / new_name)
    shutil.copytree(built_models[name], dest)
    return dest


# -------------------------------------------------------------------- predict


def test_every_builder_has_a_case():
    assert sorted(CASES) == sorted(builders.BUILDERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_predict_matches_numpy_and_tf_loader(built_models, name):
    make_feeds, numpy_reference = CASES[name]
    feeds = make_feeds()
    path = built_models[name]
    with beam_v1.load(path) as model:
        got = model.predict(feeds)
    reference = tf_reference(path, feeds)
    # same dtypes as TensorFlow's own loader gives, and the same values
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in reference.items()}
    assert_outputs(got, reference, exact=True)
    assert_outputs(got, numpy_reference(feeds))


def test_mlp_output_dtypes_and_label_is_argmax(built_models):
    x = _x(9, 4)
    with beam_v1.load(built_models["mlp"]) as model:
        got = model.predict({"x": x})
    assert got["scores"].dtype == np.float32 and got["scores"].shape == (9, 3)
    assert got["label"].dtype == np.int64 and got["label"].shape == (9,)
    np.testing.assert_allclose(got["scores"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(got["label"], got["scores"].argmax(axis=1))


def test_mlp_with_other_sizes_and_seed(tmp_path):
    path = builders.build_mlp(str(tmp_path / "m"), n_in=6, hidden=5, n_out=2, seed=7)
    k1, b1, k2, b2 = builders.mlp_weights(6, 5, 2, 7)
    x = _x(4, 6)
    with beam_v1.load(path) as model:
        assert model.signature().inputs["x"].shape == (-1, 6)
        got = model.predict({"x": x})
        np.testing.assert_array_equal(model.variables()["dense2/kernel"], k2)
    want = _softmax(np.maximum(x @ k1 + b1, 0) @ k2 + b2)
    np.testing.assert_allclose(got["scores"], want, rtol=1e-5, atol=1e-6)


def test_builders_are_deterministic(tmp_path):
    a = builders.build_mlp(str(tmp_path / "a"))
    b = builders.build_mlp(str(tmp_path / "b"))
    with beam_v1.load(a) as ma, beam_v1.load(b) as mb:
        va, vb = ma.variables(), mb.variables()
    assert sorted(va) == sorted(vb)
    for name in va:
        np.testing.assert_array_equal(va[name], vb[name])


def test_builder_refuses_existing_folder(tmp_path):
    with pytest.raises(FileExistsError):
        builders.build_fixed_batch(str(tmp_path))


def test_string_lookup_accepts_str_bytes_and_lists(built_models):
    with beam_v1.load(built_models["string_lookup"]) as model:
        from_str = model.predict({"word": np.array(["cherry", "nope", "apple"])})
        from_bytes = model.predict({"word": np.array([b"cherry", b"nope", b"apple"], dtype=object)})
        from_list = model.predict({"word": ["cherry", "nope", "apple"]})
    for got in (from_str, from_bytes, from_list):
        np.testing.assert_array_equal(got["id"], [2, -1, 0])
        np.testing.assert_allclose(got["score"], [2.0, 0.5, 1.0])


def test_variable_len_rows_of_other_lengths(built_models):
    with beam_v1.load(built_models["variable_len"]) as model:
        one = model.predict({"x": np.ones((3, 1), np.float32)})
        seven = model.predict({"x": np.full((2, 7), 0.5, np.float32)})
    np.testing.assert_array_equal(one["count"], [1, 1, 1])
    np.testing.assert_array_equal(one["total"], [1, 1, 1])
    np.testing.assert_array_equal(seven["count"], [7, 7])
    np.testing.assert_allclose(seven["total"], [3.5, 3.5])


def test_unknown_rank_takes_any_rank(built_models):
    with beam_v1.load(built_models["unknown_rank"]) as model:
        scalar = model.predict({"x": np.float32(4.0)})
        rank4 = model.predict({"x": np.ones((1, 2, 1, 3), np.float32)})
    assert scalar["y"].shape == () and scalar["y"] == 8.0
    assert rank4["y"].shape == (1, 2, 1, 3)
    np.testing.assert_array_equal(rank4["y"], 2.0)


def test_scalar_input_accepts_python_number(built_models):
    with beam_v1.load(built_models["scalar_input"]) as model:
        got = model.predict({"x": -1.0})
    assert got["y"].shape == () and got["y"].dtype == np.float32
    assert got["y"] == -4.0


def test_second_signature_and_output_subset(built_models):
    x = _x(2, 2, 3)
    with beam_v1.load(built_models["nested"]) as model:
        double = model.predict({"x": x}, signature="double")
        only_total = model.predict({"x": x}, outputs=["total"])
        with pytest.raises(SignatureNotFoundError, match="doubled"):
            model.predict({"x": x}, outputs=["nope"])
    assert list(double) == ["doubled"]
    np.testing.assert_array_equal(double["doubled"], x * 2)
    assert list(only_total) == ["total"]
    np.testing.assert_allclose(only_total["total"], x.sum(axis=(1, 2)), rtol=1e-5)
    reference = tf_reference(built_models["nested"], {"x": x}, signature="double")
    np.testing.assert_array_equal(double["doubled"], reference["doubled"])


def test_load_with_signature_argument_sets_default(built_models):
    with beam_v1.load(built_models["nested"], signature="double") as model:
        assert model.default_signature == "double"
        got = model.predict({"x": np.ones((1, 2, 3), np.float32)})
    assert list(got) == ["doubled"]


# -------------------------------------------------------------------- inspect


def test_inspect_mlp(built_models):
    info = beam_v1.inspect(built_models["mlp"])
    assert info.tags == ("serve",)
    assert info.tag_sets == [("serve",)]
    assert info.tensorflow_version == tf.__version__
    assert list(info.signatures) == ["serving_default"]
    sig = info.signatures["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    (x,) = sig.inputs.values()
    assert (x.key, x.dtype, x.shape, x.tensor_name, x.encoding) == (
        "x",
        "float32",
        (-1, 4),
        "x:0",
        "dense",
    )
    assert {k: (s.dtype, s.shape, s.tensor_name) for k, s in sig.outputs.items()} == {
        "scores": ("float32", (-1, 3), "scores:0"),
        "label": ("int64", (-1,), "label:0"),
    }
    assert {v.name: (v.dtype, v.shape, v.kind) for v in info.variables} == {
        "dense1/kernel": ("float32", (4, 8), "resource"),
        "dense1/bias": ("float32", (8,), "resource"),
        "dense2/kernel": ("float32", (8, 3), "resource"),
        "dense2/bias": ("float32", (3,), "resource"),
    }
    assert all(v.trainable and v.in_graph and v.in_checkpoint for v in info.variables)
    assert info.assets == []
    assert info.init_ops == {}
    assert info.missing_ops == {}


def test_inspect_multi_input(built_models):
    info = beam_v1.inspect(built_models["multi_input"])
    sig = info.signatures["serving_default"]
    assert {k: (s.dtype, s.shape, s.tensor_name) for k, s in sig.inputs.items()} == {
        "a": ("float32", (-1, 3), "a:0"),
        "b": ("int64", (-1,), "b:0"),
        "c": ("float64", (-1, 1), "c:0"),
    }
    assert {k: (s.dtype, s.shape) for k, s in sig.outputs.items()} == {
        "total": ("float32", (-1,)),
        "a_scaled": ("float32", (-1, 3)),
    }
    assert [(v.name, v.dtype, v.shape, v.kind) for v in info.variables] == [
        ("w", "float32", (3,), "ref"),
    ]


def test_inspect_string_lookup(built_models):
    info = beam_v1.inspect(built_models["string_lookup"])
    sig = info.signatures["serving_default"]
    assert (sig.inputs["word"].dtype, sig.inputs["word"].shape) == ("string", (-1,))
    assert {k: (s.dtype, s.shape) for k, s in sig.outputs.items()} == {
        "id": ("int64", (-1,)),
        "score": ("float32", (-1,)),
    }
    assert [a.filename for a in info.assets] == ["vocab.txt"]
    assert info.assets[0].tensor_name == "vocab_path:0"
    assert "saved_model_main_op" in info.init_ops
    assert len(info.init_ops["saved_model_main_op"]) == 1
    assert [(v.name, v.kind, v.shape) for v in info.variables] == [("v", "resource", ())]
    # the asset really is in the model folder
    assets_dir = os.path.join(built_models["string_lookup"], "assets")
    with open(os.path.join(assets_dir, "vocab.txt"), encoding="utf-8") as f:
        assert f.read().split() == builders.VOCAB


@pytest.mark.parametrize(
    "name, inputs, outputs",
    [
        ("fixed_batch", {"x": ("float32", (4, 3))}, {"y": ("float32", (4, 3))}),
        ("scalar_input", {"x": ("float32", ())}, {"y": ("float32", ())}),
        (
            "nested",
            {"x": ("float32", (-1, 2, 3))},
            {"total": ("float32", (-1,)), "doubled": ("float32", (-1, 2, 3))},
        ),
        (
            "variable_len",
            {"x": ("float32", (-1, -1))},
            {"total": ("float32", (-1,)), "count": ("int32", (-1,))},
        ),
        ("unknown_rank", {"x": ("float32", None)}, {"y": ("float32", None)}),
        ("partitioned", {"x": ("float32", (-1, 8))}, {"y": ("float32", (-1, 2))}),
        ("ref_and_resource", {"x": ("float32", (-1,))}, {"y": ("float32", (-1,))}),
    ],
)
def test_inspect_shapes(built_models, name, inputs, outputs):
    sig = beam_v1.inspect(built_models[name]).signatures["serving_default"]
    assert {k: (s.dtype, s.shape) for k, s in sig.inputs.items()} == inputs
    assert {k: (s.dtype, s.shape) for k, s in sig.outputs.items()} == outputs
    for spec in (*sig.inputs.values(), *sig.outputs.values()):
        assert spec.tensor_name == f"{spec.key}:0"


def test_inspect_nested_lists_both_signatures(built_models):
    info = beam_v1.inspect(built_models["nested"])
    assert sorted(info.signatures) == ["double", "serving_default"]
    assert list(info.signatures["double"].outputs) == ["doubled"]


def test_inspect_partitioned_variable_once_with_full_shape(built_models):
    info = beam_v1.inspect(built_models["partitioned"])
    assert [v.name for v in info.variables] == ["w"]
    (w,) = info.variables
    assert w.shape == (8, 2)
    assert w.dtype == "float32"
    assert w.kind == "ref"
    assert len(w.parts) == 4
    assert sorted(w.parts) == [f"w/part_{i}" for i in range(4)]
    assert w.in_checkpoint and w.in_graph


def test_inspect_partitioned_other_part_count(tmp_path):
    path = builders.build_partitioned(str(tmp_path / "p2"), parts=2)
    (w,) = beam_v1.inspect(path).variables
    assert (w.name, w.shape, len(w.parts)) == ("w", (8, 2), 2)
    x = _x(3, 8)
    with beam_v1.load(path) as model:
        np.testing.assert_allclose(
            model.predict({"x": x})["y"], x @ builders.PARTITIONED_W, rtol=1e-5, atol=1e-6
        )


def test_inspect_ref_and_resource_kinds(built_models):
    info = beam_v1.inspect(built_models["ref_and_resource"])
    assert {v.name: v.kind for v in info.variables} == {
        "ref_scale": "ref",
        "res_bias": "resource",
    }
    assert {v.name: v.shape for v in info.variables} == {"ref_scale": (), "res_bias": ()}


def test_inspect_reads_only_metadata(built_models, tmp_path):
    """Without the checkpoint's data shards, inspect still lists variables (index only)."""
    path = copy_model(built_models, "mlp", tmp_path)
    variables_dir = os.path.join(path, "variables")
    data = [f for f in os.listdir(variables_dir) if f.startswith("variables.data")]
    assert data
    for name in data:
        os.remove(os.path.join(variables_dir, name))
    info = beam_v1.inspect(path)
    assert len(info.variables) == 4
    with pytest.raises(ModelFileError):
        beam_v1.load(path)


def test_inspect_to_dict_is_json_ready(built_models):
    import json

    data = json.loads(beam_v1.inspect(built_models["string_lookup"]).to_json())
    assert data["signatures"]["serving_default"]["inputs"]["word"]["dtype"] == "string"
    assert data["assets"][0]["filename"] == "vocab.txt"


# ------------------------------------------------------------ assets, variables


def test_string_lookup_after_model_folder_moved_and_original_deleted(built_models, tmp_path):
    feeds = {"word": WORDS}
    want = CASES["string_lookup"][1](feeds)
    first = copy_model(built_models, "string_lookup", tmp_path, "first")
    # the graph's asset constant names a file that no longer exists (the builder's scratch)
    with beam_v1.load(first) as model:
        const = model.graph.get_tensor_by_name("vocab_path:0").op.get_attr("value")
        original_vocab = const.string_val[0].decode()
        assert not os.path.exists(original_vocab)
        assert_outputs(model.predict(feeds), want)

    moved = str(tmp_path / "elsewhere" / "moved")
    os.makedirs(os.path.dirname(moved))
    shutil.move(first, moved)
    assert not os.path.exists(first)
    copied = str(tmp_path / "copied")
    shutil.copytree(moved, copied)
    with beam_v1.load(moved) as model:
        assert_outputs(model.predict(feeds), want)
    shutil.rmtree(moved)
    with beam_v1.load(copied) as model:
        assert_outputs(model.predict(feeds), want)
        assert model.variables() == {"v": np.float32(builders.STRING_LOOKUP_V)}


def test_string_lookup_uses_its_own_asset_file(built_models, tmp_path):
    """Changing assets/vocab.txt in the model folder changes the ids: the asset is really used."""
    path = copy_model(built_models, "string_lookup", tmp_path)
    with open(os.path.join(path, "assets", "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("date\ncherry\n")
    with beam_v1.load(path) as model:
        got = model.predict({"word": ["cherry", "date", "apple"]})
    np.testing.assert_array_equal(got["id"], [1, 0, -1])


def test_string_lookup_missing_asset_is_a_model_file_error(built_models, tmp_path):
    path = copy_model(built_models, "string_lookup", tmp_path)
    os.remove(os.path.join(path, "assets", "vocab.txt"))
    with pytest.raises(ModelFileError, match="init op"):
        beam_v1.load(path)


def test_variables_equal_initial_values(built_models):
    k1, b1, k2, b2 = builders.mlp_weights()
    expected = {
        "mlp": {"dense1/kernel": k1, "dense1/bias": b1, "dense2/kernel": k2, "dense2/bias": b2},
        "multi_input": {"w": builders.MULTI_INPUT_W},
        "string_lookup": {"v": np.float32(builders.STRING_LOOKUP_V)},
        "ref_and_resource": {
            "ref_scale": np.float32(builders.REF_SCALE),
            "res_bias": np.float32(builders.RES_BIAS),
        },
        "fixed_batch": {},
        "unknown_rank": {},
    }
    for name, want in expected.items():
        with beam_v1.load(built_models[name]) as model:
            got = model.variables()
        assert sorted(got) == sorted(want), name
        for var, value in want.items():
            assert got[var].dtype == np.float32, (name, var)
            np.testing.assert_array_equal(got[var], value, err_msg=f"{name}:{var}")


def test_variables_of_partitioned_model(built_models):
    with beam_v1.load(built_models["partitioned"]) as model:
        got = model.variables()
    if "w" in got:  # the full variable
        full = got["w"]
    else:  # its parts, in order
        names = sorted(got, key=lambda n: int(n.rsplit("_", 1)[1]))
        assert names == [f"w/part_{i}" for i in range(4)]
        full = np.concatenate([got[n] for n in names], axis=0)
    np.testing.assert_array_equal(full, builders.PARTITIONED_W)


# ------------------------------------------------------------------ feeding


def test_int64_feeds_float32_input(built_models):
    x = np.arange(12, dtype=np.int64).reshape(3, 4) - 5
    with beam_v1.load(built_models["mlp"]) as model:
        from_int = model.predict({"x": x})
        from_float = model.predict({"x": x.astype(np.float32)})
    np.testing.assert_array_equal(from_int["scores"], from_float["scores"])
    assert_outputs(from_int, mlp_numpy(x.astype(np.float32)))


def test_float64_into_int64_input_raises_feed_error(built_models):
    feeds = CASES["multi_input"][0]()
    feeds["b"] = feeds["b"].astype(np.float64)
    with beam_v1.load(built_models["multi_input"]) as model:
        with pytest.raises(FeedError) as excinfo:
            model.predict(feeds)
    message = str(excinfo.value)
    assert "'b'" in message
    assert "int64" in message


def test_wrong_shape_raises_feed_error_naming_expected_shape(built_models):
    with beam_v1.load(built_models["mlp"]) as model:
        with pytest.raises(FeedError, match=r"\[-1,4\]"):
            model.predict({"x": np.zeros((2, 3), np.float32)})
        with pytest.raises(FeedError, match=r"\[-1,4\]"):
            model.predict({"x": np.zeros((4,), np.float32)})
    with beam_v1.load(built_models["fixed_batch"]) as model:
        with pytest.raises(FeedError, match=r"\[4,3\]"):
            model.predict({"x": np.zeros((3, 3), np.float32)})
    with beam_v1.load(built_models["scalar_input"]) as model:
        with pytest.raises(FeedError, match=r"\[\]"):
            model.predict({"x": np.zeros((2,), np.float32)})


def test_numbers_into_string_input_raise_feed_error(built_models):
    with beam_v1.load(built_models["string_lookup"]) as model:
        with pytest.raises(FeedError, match="word"):
            model.predict({"word": np.array([1, 2], dtype=np.int64)})


def test_unknown_and_missing_inputs_raise_feed_error(built_models):
    feeds = CASES["multi_input"][0]()
    with beam_v1.load(built_models["multi_input"]) as model:
        with pytest.raises(FeedError, match="'zzz'"):
            model.predict({**feeds, "zzz": np.zeros(5)})
        del feeds["c"]
        with pytest.raises(FeedError, match="'c'"):
            model.predict(feeds)


# ------------------------------------------------------------------ errors


def test_unknown_signature_lists_keys(built_models):
    with pytest.raises(SignatureNotFoundError) as excinfo:
        beam_v1.load(built_models["nested"], signature="nope")
    assert "'nope'" in str(excinfo.value)
    assert "'serving_default'" in str(excinfo.value) and "'double'" in str(excinfo.value)
    with beam_v1.load(built_models["mlp"]) as model:
        with pytest.raises(SignatureNotFoundError, match="serving_default"):
            model.predict({"x": _x(1, 4)}, signature="classify")


def test_unknown_tags_list_available(built_models):
    with pytest.raises(TagsNotFoundError, match="serve"):
        beam_v1.load(built_models["mlp"], tags=["train"])
    with pytest.raises(TagsNotFoundError, match="gpu"):
        beam_v1.inspect(built_models["mlp"], tags="serve,gpu")
    assert beam_v1.inspect(built_models["mlp"], tags=["serve"]).tags == ("serve",)


def test_missing_saved_model_pb(built_models, tmp_path):
    path = copy_model(built_models, "mlp", tmp_path)
    os.remove(os.path.join(path, "saved_model.pb"))
    for call in (beam_v1.inspect, beam_v1.load):
        with pytest.raises(ModelFileError, match="saved_model.pb") as excinfo:
            call(path)
        assert path in str(excinfo.value)


def test_nonexistent_model_path(tmp_path):
    missing = str(tmp_path / "no-such-model")
    for call in (beam_v1.inspect, beam_v1.load):
        with pytest.raises(ModelFileError, match="no-such-model"):
            call(missing)


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_damaged_saved_model_pb(built_models, tmp_path, damage):
    path = copy_model(built_models, "mlp", tmp_path)
    pb = os.path.join(path, "saved_model.pb")
    with open(pb, "rb") as f:
        data = f.read()
    payload = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"\xff" * 64}[damage]
    with open(pb, "wb") as f:
        f.write(payload)
    for call in (beam_v1.inspect, beam_v1.load):
        with pytest.raises(ModelFileError) as excinfo:
            call(path)
        assert pb in str(excinfo.value)
    # the shared model is untouched
    assert os.path.getsize(os.path.join(built_models["mlp"], "saved_model.pb")) == len(data)


def test_missing_variables_index(built_models, tmp_path):
    path = copy_model(built_models, "mlp", tmp_path)
    os.remove(os.path.join(path, "variables", "variables.index"))
    with pytest.raises(ModelFileError, match=r"variables\.index"):
        beam_v1.load(path)


def test_model_without_variables_needs_no_checkpoint(built_models, tmp_path):
    path = copy_model(built_models, "fixed_batch", tmp_path)
    shutil.rmtree(os.path.join(path, "variables"), ignore_errors=True)
    with beam_v1.load(path) as model:
        got = model.predict({"x": np.ones((4, 3), np.float32)})
    np.testing.assert_array_equal(got["y"], np.full((4, 3), 3.0, np.float32))


def test_nonexistent_op_library_names_the_path(built_models):
    with pytest.raises(BeamV1Error, match="/nonexistent.so"):
        beam_v1.load(built_models["fixed_batch"], op_libraries=["/nonexistent.so"])


# ------------------------------------------------------------------ options, sessions


def test_thread_options_accepted(built_models):
    x = _x(3, 4)
    with beam_v1.load(built_models["mlp"], intra_op_threads=1, inter_op_threads=2) as model:
        assert model.options.intra_op_threads == 1
        assert model.options.inter_op_threads == 2
        got = model.predict({"x": x})
    assert_outputs(got, mlp_numpy(x))


def test_unknown_option_raises_type_error(built_models):
    with pytest.raises(TypeError, match="num_threads"):
        beam_v1.load(built_models["mlp"], num_threads=4)


def test_predict_is_thread_safe(built_models):
    threads, calls = 8, 50
    inputs = [
        [
            np.random.RandomState(t * 1000 + i).normal(size=(1 + (t + i) % 5, 4)).astype(np.float32)
            for i in range(calls)
        ]
        for t in range(threads)
    ]
    with beam_v1.load(built_models["mlp"]) as model:
        expected = [[model.predict({"x": x}) for x in per_thread] for per_thread in inputs]
        barrier = threading.Barrier(threads)

        def work(t):
            barrier.wait()
            return [model.predict({"x": x}) for x in inputs[t]]

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(work, range(threads)))
    for t in range(threads):
        for i in range(calls):
            for key in ("scores", "label"):
                np.testing.assert_array_equal(results[t][i][key], expected[t][i][key])
    # and the single-thread results are right
    assert_outputs(expected[3][7], mlp_numpy(inputs[3][7]))


def test_context_manager_closes_session(built_models):
    with beam_v1.load(built_models["ref_and_resource"]) as model:
        got = model.predict({"x": np.array([1.0], np.float32)})
        assert not model.session._closed
    np.testing.assert_array_equal(got["y"], [2.5])
    assert model.session._closed
    # a closed session refuses to run (today TensorFlow's CancelledError surfaces as is)
    with pytest.raises((RuntimeError, BeamV1Error, tf.errors.OpError), match="[Cc]losed"):
        model.predict({"x": np.array([1.0], np.float32)})
