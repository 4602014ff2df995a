"""assign_variables: TF1 weights into native Keras 3 models / tf.Variables."""

from __future__ import annotations

import builders
import keras
import numpy as np
import pytest
import tensorflow as tf
from realmodels import REALMODELS

import beam_v1
from beam_v1.interop.weights import AssignError, ShapeMismatchError, assign_variables


def _native_mlp(n_in=4, hidden=8, n_out=3):
    x = keras.Input((n_in,))
    h = keras.layers.Dense(hidden, activation="relu", name="dense1")(x)
    y = keras.layers.Dense(n_out, activation="softmax", name="dense2")(h)
    return keras.Model(x, y, name="native_mlp")


def test_mnist_lr_rebuilt_natively_gives_same_predictions():
    path = REALMODELS / "mlnet__mnist_lr_model"
    if not path.is_dir():
        pytest.skip(f"real model mlnet__mnist_lr_model not found under {REALMODELS}")
    native = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", name="dense")]
    )
    report = assign_variables(str(path), native, {"W": "dense/kernel", "b": "dense/bias"})
    assert report.assigned == [("W", "dense/kernel"), ("b", "dense/bias")]
    assert report.unmatched_source == [] and report.unmatched_target == []
    x = np.random.RandomState(0).rand(16, 784).astype(np.float32)
    with beam_v1.load(str(path)) as model:
        want = model.predict({"Features": x})["Prediction"]
        weights = model.variables()
    np.testing.assert_allclose(native.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(native.get_layer("dense").kernel.numpy(), weights["W"])
    # and the predictions differ before assigning: the check above can fail
    fresh = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    assert not np.allclose(fresh.predict(x, verbose=0), want, atol=1e-3)


def test_regex_mapping_and_report(built_models):
    path = built_models["mlp"]
    native = _native_mlp()
    report = assign_variables(path, native, [(r"(dense\d)/(kernel|bias)", r"\1/\2")])
    assert [s for s, _ in report.assigned] == [
        "dense1/bias",
        "dense1/kernel",
        "dense2/bias",
        "dense2/kernel",
    ]
    assert report.unmatched_source == [] and report.unmatched_target == []
    k1, b1, k2, b2 = builders.mlp_weights()
    x = np.random.RandomState(1).normal(size=(6, 4)).astype(np.float32)
    with beam_v1.load(path) as model:
        want = model.predict({"x": x})["scores"]
    np.testing.assert_allclose(native.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(native.get_layer("dense2").bias.numpy(), b2)


def test_callable_mapping_partial_report_and_dict_target(built_models):
    path = built_models["mlp"]
    target = {
        "k1": tf.Variable(np.zeros((4, 8), np.float32)),
        "extra": tf.Variable(np.zeros(2, np.float32)),
    }
    report = assign_variables(path, target, lambda name: "k1" if name == "dense1/kernel" else None)
    assert report.assigned == [("dense1/kernel", "k1")]
    assert report.unmatched_source == ["dense1/bias", "dense2/bias", "dense2/kernel"]
    assert report.unmatched_target == ["extra"]
    np.testing.assert_array_equal(target["k1"].numpy(), builders.mlp_weights()[0])
    np.testing.assert_array_equal(target["extra"].numpy(), np.zeros(2))
    assert "unmatched in the target (1)" in str(report)


def test_exact_names_from_a_dump_and_a_dict(built_models, tmp_path):
    path = built_models["ref_and_resource"]
    with beam_v1.load(path) as model:
        values = model.variables()
    assert set(values) == {"ref_scale", "res_bias"}
    dump = tmp_path / "vars.npz"
    np.savez(dump, **values)
    target = {"ref_scale": tf.Variable(0.0), "res_bias": tf.Variable(0.0, dtype=tf.float64)}
    report = assign_variables(str(dump), target)  # a dump file; float32 -> float64 is safe
    assert sorted(report.assigned) == [("ref_scale", "ref_scale"), ("res_bias", "res_bias")]
    assert float(target["ref_scale"].numpy()) == builders.REF_SCALE
    assert float(target["res_bias"].numpy()) == builders.RES_BIAS
    report = assign_variables({"ref_scale": np.float32(7.0)}, target)
    assert report.unmatched_target == ["res_bias"]
    assert float(target["ref_scale"].numpy()) == 7.0


def test_shape_and_dtype_mismatch_assign_nothing(built_models):
    path = built_models["mlp"]
    native = _native_mlp()
    before = [w.numpy().copy() for w in native.weights]
    with pytest.raises(
        ShapeMismatchError, match=r"dense1/kernel.*\[4, 8\].*dense2/kernel.*\[8, 3\]"
    ):
        # dense1/bias is checked first and fits; the kernel does not: nothing is written
        assign_variables(
            path, native, {"dense1/bias": "dense1/bias", "dense1/kernel": "dense2/kernel"}
        )
    for w, b in zip(native.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    ints = {"dense1/bias": tf.Variable(np.zeros(8, np.int32))}
    with pytest.raises(AssignError, match="cast"):
        assign_variables(path, ints, {"dense1/bias": "dense1/bias"})
    with pytest.raises(AssignError, match="do not exist"):
        assign_variables(path, native, {"nope": "dense1/bias"})
    with pytest.raises(AssignError, match="both mapped"):
        assign_variables(path, native, lambda name: "dense1/bias" if "bias" in name else None)
    with pytest.raises(AssignError, match="strict"):
        assign_variables(path, native, {"dense1/bias": "dense1/bias"}, strict=True)


def test_from_a_parquet_dump_prefix(built_models, tmp_path):
    import apache_beam as beam

    from beam_v1.variables.dump import DumpVariables, WriteVariables

    path = built_models["mlp"]
    prefix = str(tmp_path / "dump" / "vars")
    with beam.Pipeline() as p:
        dumped = p | beam.Create([path]) | DumpVariables()
        _ = dumped.variables | WriteVariables(prefix, "parquet", dumped.failed)
    native = _native_mlp()
    report = assign_variables(prefix, native)  # exact names: dense1/kernel, ...
    assert len(report.assigned) == 4 and not report.unmatched_target
    x = np.random.RandomState(5).normal(size=(3, 4)).astype(np.float32)
    with beam_v1.load(path) as model:
        want = model.predict({"x": x})["scores"]
    np.testing.assert_allclose(native.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
