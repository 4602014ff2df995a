"""beam_v1.dtypes held to TensorFlow's own table, for every DataType enum TensorFlow has."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from beam_v1 import dtypes

ENUMS = [v for _, v in types_pb2.DataType.items() if v != types_pb2.DT_INVALID]


@pytest.mark.parametrize("enum", ENUMS, ids=[types_pb2.DataType.Name(v) for v in ENUMS])
def test_names_and_enums_are_tensorflows(enum):
    tf_dtype = tf.as_dtype(enum)
    name = dtypes.name_of(enum)
    assert name == tf_dtype.name
    assert dtypes.enum_of(name) == enum
    assert dtypes.is_ref(name) == tf_dtype._is_ref_dtype
    assert dtypes.base_name(name) == tf_dtype.base_dtype.name
    assert dtypes.is_floating(name) == tf_dtype.is_floating


@pytest.mark.parametrize("enum", ENUMS, ids=[types_pb2.DataType.Name(v) for v in ENUMS])
def test_numpy_dtypes_are_tensorflows(enum):
    tf_dtype = tf.as_dtype(enum)
    name = dtypes.name_of(enum)
    if not tf_dtype.is_numpy_compatible:  # resource, variant
        with pytest.raises(ValueError, match=name):
            dtypes.numpy_dtype(name)
        return
    string = tf_dtype.base_dtype == tf.string
    want = np.dtype(object) if string else np.dtype(tf_dtype.as_numpy_dtype)
    assert dtypes.numpy_dtype(name) == want


@pytest.mark.parametrize("enum", ENUMS, ids=[types_pb2.DataType.Name(v) for v in ENUMS])
def test_arrow_types_hold_the_values_tensorflow_gives(enum):
    """A dtype with an Arrow type: a tensor TensorFlow computes round-trips through an Arrow
    array of that type, bit-exact (strings as binary). Without one: numpy's dtype is not one
    Arrow takes (complex, bfloat16, float8, quantized) or there is none."""
    tf_dtype = tf.as_dtype(enum).base_dtype
    name = dtypes.name_of(enum)
    arrow = dtypes.arrow_type(name)
    if arrow is None:
        assert tf_dtype == tf.string or not _arrow_takes(tf_dtype)
        return
    if tf_dtype == tf.string:
        value = tf.constant([b"a", b"", b"\xff\x00"]).numpy()
    elif tf_dtype == tf.bool:
        value = tf.constant([True, False]).numpy()
    else:
        value = tf.cast(tf.constant([0, 1, 2, 100]), tf_dtype).numpy()
    array = pa.array(value, arrow)
    assert array.type == arrow
    assert array.to_pylist() == value.tolist()


def _arrow_takes(tf_dtype: tf.DType) -> bool:
    if not tf_dtype.is_numpy_compatible:
        return False
    try:
        pa.from_numpy_dtype(np.dtype(tf_dtype.as_numpy_dtype))
    except (pa.ArrowNotImplementedError, NotImplementedError, TypeError):
        return False
    return True


def test_invalid_and_unknown():
    assert dtypes.name_of(types_pb2.DT_INVALID) == "invalid"
    assert dtypes.name_of(99) == "unknown(99)"
    with pytest.raises(ValueError, match="nope"):
        dtypes.enum_of("nope")
    with pytest.raises(ValueError, match="nope"):
        dtypes.numpy_dtype("nope")
    assert dtypes.arrow_type("nope") is None
