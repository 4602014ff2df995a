"""Builders of small, real TF1-style SavedModels for the tests.

Every builder uses `tf.compat.v1` graph mode in its own `tf.Graph` (no Keras), writes a
SavedModel with `tf.compat.v1.saved_model.Builder` under tag `serve` and signature
`serving_default` (some add a second signature), and is deterministic (constant initial
values; `build_mlp` draws its weights from a seeded numpy RandomState, see `mlp_weights`).
Each takes the output directory `path` (which must not exist yet) and returns `path`.

- `build_mlp`: x [-1,n_in] -> scores (softmax of a relu MLP) and label (argmax); resource vars.
- `build_multi_input`: a [-1,3] float32, b [-1] int64, c [-1,1] float64 -> total, a_scaled
  (a * ref variable w = [1,2,3]).
- `build_string_lookup`: word [-1] string -> id (vocab.txt asset, hash table filled by a main_op)
  and score = id * 0.5 + v (v = 1.0).
- `build_fixed_batch`: x [batch,3] -> y = x*2+1.
- `build_scalar_input`: x [] -> y = x*3-1 (a non-batched input).
- `build_nested`: x [-1,2,3] -> total (sum over axes 1,2), doubled; also signature `double`.
- `build_variable_len`: x [-1,-1] -> total (row sums), count (row length, int32).
- `build_unknown_rank`: x of unknown rank -> y = x*2.
- `build_partitioned`: variable w [8,2] in `parts` partitions (ref variables), x [-1,8] -> x @ w.
- `build_ref_and_resource`: y = x * ref_scale + res_bias (one ref, one resource variable).

The `*_VALUES` constants and `mlp_weights` give the initial variable values, so tests can
compute references with numpy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

TAGS = ["serve"]
VOCAB = ["apple", "banana", "cherry", "date"]
MULTI_INPUT_W = np.array([1.0, 2.0, 3.0], dtype=np.float32)
STRING_LOOKUP_V = 1.0
PARTITIONED_W = (np.arange(16, dtype=np.float32).reshape(8, 2) - 5.0) / 4.0
REF_SCALE = 2.0
RES_BIAS = 0.5


def mlp_weights(n_in: int = 4, hidden: int = 8, n_out: int = 3, seed: int = 0):
    """(kernel1 [n_in,hidden], bias1 [hidden], kernel2 [hidden,n_out], bias2 [n_out]), float32."""
    rng = np.random.RandomState(seed)
    return (
        rng.normal(0.0, 0.5, size=(n_in, hidden)).astype(np.float32),
        rng.normal(0.0, 0.1, size=(hidden,)).astype(np.float32),
        rng.normal(0.0, 0.5, size=(hidden, n_out)).astype(np.float32),
        rng.normal(0.0, 0.1, size=(n_out,)).astype(np.float32),
    )


def _check_new(path) -> str:
    path = os.fspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; builders write a new SavedModel folder")
    return path


def _save(
    path: str,
    graph: tf.Graph,
    sess,
    signatures: dict,
    *,
    main_op=None,
    assets_collection=None,
    saver=None,
) -> str:
    with graph.as_default():
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess,
            TAGS,
            signature_def_map=signatures,
            main_op=main_op,
            assets_collection=assets_collection,
            strip_default_attrs=True,
            saver=saver,
        )
        builder.save()
    return path


def build(
    path, make: Callable[[], tuple[dict, object]], *, sharded_saver=False, session_config=None
) -> str:
    """Run `make()` inside a fresh graph; it returns (signature map, main_op or None).
    `sharded_saver`: save with `Saver(sharded=True)` (one data shard per device)."""
    path = _check_new(path)
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        signatures, main_op = make()
        saver = v1.train.Saver(sharded=True) if sharded_saver else None
        with v1.Session(graph=graph, config=session_config) as sess:
            sess.run(v1.global_variables_initializer())
            return _save(path, graph, sess, signatures, main_op=main_op, saver=saver)


def predict(inputs: dict, outputs: dict):
    """A predict SignatureDef."""
    return v1.saved_model.predict_signature_def(inputs=inputs, outputs=outputs)


def build_mlp(path, n_in=4, hidden=8, n_out=3, seed=0):
    k1, b1, k2, b2 = mlp_weights(n_in, hidden, n_out, seed)

    def make():
        x = v1.placeholder(tf.float32, [None, n_in], name="x")

        def var(name, value):
            return v1.get_variable(
                name,
                initializer=v1.constant_initializer(value),
                shape=value.shape,
                dtype=tf.float32,
                use_resource=True,
            )

        with v1.variable_scope("dense1"):
            h = tf.nn.relu(tf.matmul(x, var("kernel", k1)) + var("bias", b1))
        with v1.variable_scope("dense2"):
            logits = tf.matmul(h, var("kernel", k2)) + var("bias", b2)
        scores = tf.nn.softmax(logits, name="scores")
        label = tf.argmax(scores, axis=1, output_type=tf.int64, name="label")
        return {"serving_default": predict({"x": x}, {"scores": scores, "label": label})}, None

    return build(path, make)


def build_multi_input(path):
    def make():
        a = v1.placeholder(tf.float32, [None, 3], name="a")
        b = v1.placeholder(tf.int64, [None], name="b")
        c = v1.placeholder(tf.float64, [None, 1], name="c")
        w = v1.Variable(MULTI_INPUT_W, name="w", use_resource=False)
        total = tf.add_n(
            [tf.reduce_sum(a, axis=1), tf.cast(b, tf.float32), tf.cast(c[:, 0], tf.float32)],
            name="total",
        )
        a_scaled = tf.multiply(a, w, name="a_scaled")
        sig = predict({"a": a, "b": b, "c": c}, {"total": total, "a_scaled": a_scaled})
        return {"serving_default": sig}, None

    return build(path, make)


def build_string_lookup(path):
    path = _check_new(path)
    scratch = tempfile.mkdtemp(prefix="vocab-")
    try:
        vocab_file = os.path.join(scratch, "vocab.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            f.write("\n".join(VOCAB) + "\n")
        graph = tf.Graph()
        with graph.as_default():
            word = v1.placeholder(tf.string, [None], name="word")
            vocab_path = tf.constant(vocab_file, name="vocab_path")
            # TF1's index_table_from_file(vocab_path, default_value=-1), spelled with the
            # public tf.compat.v1 API (a HashTable filled from the text file's whole lines)
            table = v1.lookup.StaticHashTable(
                v1.lookup.TextFileInitializer(
                    vocab_path,
                    tf.string,
                    v1.lookup.TextFileIndex.WHOLE_LINE,
                    tf.int64,
                    v1.lookup.TextFileIndex.LINE_NUMBER,
                ),
                default_value=-1,
            )
            if vocab_path not in v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS):
                v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, vocab_path)
            ids = tf.identity(table.lookup(word), name="id")
            v = v1.get_variable(
                "v",
                initializer=v1.constant_initializer(STRING_LOOKUP_V),
                shape=[],
                dtype=tf.float32,
                use_resource=True,
            )
            score = tf.add(tf.cast(ids, tf.float32) * 0.5, v, name="score")
            main_op = v1.saved_model.main_op.main_op()
            signatures = {"serving_default": predict({"word": word}, {"id": ids, "score": score})}
            with v1.Session(graph=graph) as sess:
                sess.run(v1.global_variables_initializer())
                sess.run(v1.tables_initializer())
                return _save(
                    path,
                    graph,
                    sess,
                    signatures,
                    main_op=main_op,
                    assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                )
    finally:
        # the model must find vocab.txt in its own assets/ folder, never here
        shutil.rmtree(scratch, ignore_errors=True)


def build_fixed_batch(path, batch=4):
    def make():
        x = v1.placeholder(tf.float32, [batch, 3], name="x")
        y = tf.add(x * 2.0, 1.0, name="y")
        return {"serving_default": predict({"x": x}, {"y": y})}, None

    return build(path, make)


def build_scalar_input(path):
    def make():
        x = v1.placeholder(tf.float32, [], name="x")
        y = tf.subtract(x * 3.0, 1.0, name="y")
        return {"serving_default": predict({"x": x}, {"y": y})}, None

    return build(path, make)


def build_nested(path):
    def make():
        x = v1.placeholder(tf.float32, [None, 2, 3], name="x")
        total = tf.reduce_sum(x, axis=[1, 2], name="total")
        doubled = tf.multiply(x, 2.0, name="doubled")
        return {
            "serving_default": predict({"x": x}, {"total": total, "doubled": doubled}),
            "double": predict({"x": x}, {"doubled": doubled}),
        }, None

    return build(path, make)


def build_variable_len(path):
    def make():
        x = v1.placeholder(tf.float32, [None, None], name="x")
        total = tf.reduce_sum(x, axis=1, name="total")
        shape = tf.shape(x, out_type=tf.int32)
        count = tf.fill(shape[:1], shape[1], name="count")
        return {"serving_default": predict({"x": x}, {"total": total, "count": count})}, None

    return build(path, make)


def build_unknown_rank(path):
    def make():
        x = v1.placeholder(tf.float32, shape=None, name="x")
        y = tf.multiply(x, 2.0, name="y")
        return {"serving_default": predict({"x": x}, {"y": y})}, None

    return build(path, make)


def _slice_initializer(full: np.ndarray):
    """An initializer giving each partition its slice of `full` (constant_initializer cannot)."""

    def init(shape, dtype=tf.float32, partition_info=None):
        value = full
        if partition_info is not None:
            offset = partition_info.var_offset
            value = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
        return tf.constant(value, dtype=dtype)

    return init


def build_partitioned(path, parts=4):
    def make():
        x = v1.placeholder(tf.float32, [None, 8], name="x")
        w = v1.get_variable(
            "w",
            shape=[8, 2],
            dtype=tf.float32,
            initializer=_slice_initializer(PARTITIONED_W),
            partitioner=v1.fixed_size_partitioner(parts),
            use_resource=False,
        )
        y = tf.matmul(x, w, name="y")
        return {"serving_default": predict({"x": x}, {"y": y})}, None

    return build(path, make)


def build_ref_and_resource(path):
    def make():
        x = v1.placeholder(tf.float32, [None], name="x")
        ref = v1.Variable(REF_SCALE, dtype=tf.float32, name="ref_scale", use_resource=False)
        res = v1.get_variable(
            "res_bias",
            initializer=v1.constant_initializer(RES_BIAS),
            shape=[],
            dtype=tf.float32,
            use_resource=True,
        )
        y = tf.add(x * ref, res, name="y")
        return {"serving_default": predict({"x": x}, {"y": y})}, None

    return build(path, make)


BUILDERS: dict[str, Callable[..., str]] = {
    "mlp": build_mlp,
    "multi_input": build_multi_input,
    "string_lookup": build_string_lookup,
    "fixed_batch": build_fixed_batch,
    "scalar_input": build_scalar_input,
    "nested": build_nested,
    "variable_len": build_variable_len,
    "unknown_rank": build_unknown_rank,
    "partitioned": build_partitioned,
    "ref_and_resource": build_ref_and_resource,
}


def build_sparse_input(path):
    """sp (float32 sparse [-1,-1]), words (string sparse [-1,-1]), x (float32 [-1]) ->
    per row: sp_sum (sum of sp's values), sp_weighted (sum of value * (column index + 1)),
    sp_count (int64, values in the row), word_hits (int64, words equal to b"x"),
    y = x + sp_sum. Every output is [-1]. Inputs are `tf.compat.v1.sparse_placeholder`s, so
    the signature lists them as coo_sparse (indices, values, dense_shape). A NaN or inf in
    sp's values fails the run (CheckNumerics): a model error on that row."""

    def make():
        sp = v1.sparse_placeholder(tf.float32, [None, None], name="sp")
        words = v1.sparse_placeholder(tf.string, [None, None], name="words")
        x = v1.placeholder(tf.float32, [None], name="x")

        def per_row(values, like):
            total = tf.sparse.reduce_sum(
                tf.SparseTensor(like.indices, values, like.dense_shape), axis=1
            )
            return tf.reshape(total, [-1])

        values = v1.debugging.check_numerics(sp.values, "sp holds a NaN or inf")
        sp_sum = tf.identity(per_row(values, sp), name="sp_sum")
        column = tf.cast(sp.indices[:, 1] + 1, tf.float32)
        sp_weighted = tf.identity(per_row(values * column, sp), name="sp_weighted")
        sp_count = tf.identity(per_row(tf.ones_like(sp.indices[:, 0]), sp), name="sp_count")
        hits = tf.cast(tf.equal(words.values, "x"), tf.int64)
        word_hits = tf.identity(per_row(hits, words), name="word_hits")
        y = tf.add(x, sp_sum, name="y")
        outputs = {"sp_sum": sp_sum, "sp_weighted": sp_weighted, "sp_count": sp_count,
                   "word_hits": word_hits, "y": y}
        return {"serving_default": predict({"sp": sp, "words": words, "x": x}, outputs)}, None

    return build(path, make)
