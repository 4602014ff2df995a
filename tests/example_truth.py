"""TensorFlow's own tf.Example path, the oracle for beam-v1's tf.Example feeds.

`build_parse_model` saves a model the way an Estimator export is built (a string placeholder,
`tf.compat.v1.io.parse_example` or the ParseExample op itself, then a computation).
`TruthSession` runs rows serialized with `tf.train.Example` one at a time through a signature
in a plain tf.compat.v1 Session: its output for that row, or the error TensorFlow gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import builders
import numpy as np
import tensorflow as tf

v1 = tf.compat.v1


def build_parse_model(path: str, features: Mapping, output: Callable[[dict], dict], *,
                      v1_op: bool = False) -> str:
    """Placeholder -> parse (ParseExampleV2 via `tf.compat.v1.io.parse_example`, or the
    ParseExample op with `v1_op`) -> `output(parsed)`, saved with a serving signature whose
    input key is "examples"."""
    from tensorflow.python.ops import gen_parsing_ops, parsing_config, parsing_ops

    def make():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        if v1_op:
            params = parsing_config._ParseOpParams.from_features(
                parsing_ops._prepend_none_dimension(dict(features)),  # as parse_example does
                [parsing_config.FixedLenFeature, parsing_config.VarLenFeature,
                                 parsing_config.FixedLenSequenceFeature])
            indices, values, shapes, dense = gen_parsing_ops.parse_example(
                serialized, tf.constant([], tf.string),
                [tf.constant(k) for k in params.sparse_keys],
                [tf.constant(k) for k in params.dense_keys],
                params.dense_defaults_vec, params.sparse_types, params.dense_shapes_as_proto)
            parsed = dict(zip(params.dense_keys, dense))
            parsed.update({k: tf.SparseTensor(i, v, s) for k, i, v, s in
                           zip(params.sparse_keys, indices, values, shapes)})
        else:
            parsed = v1.io.parse_example(serialized, dict(features))
        return {"serving_default": builders.predict({"examples": serialized},
                                                    output(parsed))}, None

    return builders.build(path, make)


def example_bytes(row: Mapping, dtypes: Mapping[str, str]) -> bytes:
    """One row as TensorFlow's own `tf.train.Example`: None = the feature is absent; a value
    or a list of values goes in the list of the feature's dtype (`dtypes[key]`)."""
    features = {}
    for key, value in row.items():
        if value is None or key not in dtypes:
            continue
        values = value if isinstance(value, list) else [value]
        if dtypes[key] == "string":
            kind = dict(bytes_list=tf.train.BytesList(
                value=[v if isinstance(v, bytes) else v.encode() for v in values]))
        elif dtypes[key] == "float32":
            kind = dict(float_list=tf.train.FloatList(value=[float(v) for v in values]))
        else:
            kind = dict(int64_list=tf.train.Int64List(value=values))
        features[key] = tf.train.Feature(**kind)
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


class TruthSession:
    """A SavedModel loaded with `tf.compat.v1.saved_model.loader` in a plain Session."""

    def __init__(self, path: str, signature: str = "serving_default"):
        self.graph = tf.Graph()
        self.sess = v1.Session(graph=self.graph)
        meta = v1.saved_model.loader.load(self.sess, ["serve"], path)
        sig = meta.signature_def[signature]
        (self.feed,) = [t.name for t in sig.inputs.values()]
        self.fetch = {k: t.name for k, t in sig.outputs.items()}

    def run_alone(self, serialized: bytes) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(outputs of this one example, None), or (None, TensorFlow's error message)."""
        try:
            return self.sess.run(self.fetch, {self.feed: [serialized]}), None
        except tf.errors.OpError as e:
            return None, e.message

    def rows(self, rows: list[Mapping], dtypes: Mapping[str, str]):
        return [self.run_alone(example_bytes(row, dtypes)) for row in rows]

    def close(self) -> None:
        self.sess.close()
