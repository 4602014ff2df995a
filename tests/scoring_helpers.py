"""Helpers shared by the scoring tests: TF1 references, small failing models, running
RunV1Inference on the DirectRunner, and writing/reading/checking MLP Parquet files.

Scores are compared with TensorFlow's own TF1 loader (`tf.compat.v1.saved_model.loader.load`
+ `sess.run`) or an exact numpy formula.
"""

from __future__ import annotations

import glob
import os
import re
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter

from beam_v1 import RunV1Inference

v1 = tf.compat.v1
MULTI_THREADING = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
FINAL_FILE = re.compile(r"-(\d{5})-of-(\d{5})\.parquet$")


# ------------------------------------------------------------------ references


def tf_reference(path, feeds, signature="serving_default"):
    """Run `signature` with TensorFlow's own TF1 loader, in a fresh graph and session."""
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess:
        meta_graph = v1.saved_model.loader.load(sess, ["serve"], path)
        sig_def = meta_graph.signature_def[signature]
        keys = sorted(sig_def.outputs)
        values = sess.run(
            [sig_def.outputs[k].name for k in keys],
            feed_dict={sig_def.inputs[k].name: v for k, v in feeds.items()},
        )
    return dict(zip(keys, values))


def as_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column of scalars or (nested) fixed-size lists as a dense numpy array."""
    return np.array(column.to_pylist())


def assert_close(got, want, key=""):
    want = np.asarray(want)
    assert got.shape == want.shape, (key, got.shape, want.shape)
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=key)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=key)


# --------------------------------------------------------------------- models


def _save(path, graph, sess, inputs, outputs):
    with graph.as_default():
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={
                "serving_default": v1.saved_model.predict_signature_def(inputs, outputs)
            },
        )
        builder.save()
    return path


def build_checked_sqrt(path):
    """x float32 [-1] -> y = sqrt(x); the session fails when any x < 0 (an Assert op)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        check = v1.assert_non_negative(x, message="x must be >= 0")
        with tf.control_dependencies([check]):
            y = tf.sqrt(x, name="y")
        with v1.Session(graph=graph) as sess:
            return _save(path, graph, sess, {"x": x}, {"y": y})


def build_parse_number(path):
    """text string [-1] -> value = to_number(text) * 2; the session fails on non-numbers."""
    graph = tf.Graph()
    with graph.as_default():
        text = v1.placeholder(tf.string, [None], name="text")
        value = tf.multiply(tf.strings.to_number(text, out_type=tf.float32), 2.0, name="value")
        with v1.Session(graph=graph) as sess:
            return _save(path, graph, sess, {"text": text}, {"value": value})


# -------------------------------------------------------------------- running


def _collect(table, directory):
    """Write one output table as an Arrow IPC file (exact types), one file per element."""
    os.makedirs(directory, exist_ok=True)
    with pa.OSFile(os.path.join(directory, f"{uuid.uuid4().hex}.arrow"), "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)


def _read_parts(directory):
    parts = []
    for name in sorted(glob.glob(os.path.join(directory, "*.arrow"))):
        with pa.memory_map(name) as source:
            parts.append(pa.ipc.open_file(source).read_all())
    return parts


class Run:
    """What a RunV1Inference pipeline produced: its output tables and its beam_v1 metrics."""

    def __init__(self, scored_parts, failed_parts, metrics):
        self.scored_parts = scored_parts
        self.failed_parts = failed_parts
        self.counters = {c.key.metric.name: c.committed for c in metrics["counters"]}
        self.distributions = {d.key.metric.name: d.committed for d in metrics["distributions"]}

    @staticmethod
    def _concat(parts, sort_by):
        if not parts:
            return None
        table = pa.concat_tables(parts)
        if sort_by in table.column_names:
            table = table.sort_by(sort_by)
        return table

    def scored(self, sort_by="id"):
        return self._concat(self.scored_parts, sort_by)

    def failed(self, sort_by="id"):
        return self._concat(self.failed_parts, sort_by)

    @property
    def rows_scored(self):
        return sum(t.num_rows for t in self.scored_parts)

    @property
    def rows_failed(self):
        return sum(t.num_rows for t in self.failed_parts)


def run_inference(tables, tmp_path, model, argv=(), **kwargs) -> Run:
    out = tmp_path / f"collected-{uuid.uuid4().hex[:8]}"
    pipeline = beam.Pipeline(argv=list(argv))
    result = (
        pipeline
        | "Tables" >> beam.Create(tables, reshuffle=False)
        | "Infer" >> RunV1Inference(model, **kwargs)
    )
    _ = result.scored | "CollectScored" >> beam.Map(_collect, str(out / "scored"))
    _ = result["failed"] | "CollectFailed" >> beam.Map(_collect, str(out / "failed"))
    outcome = pipeline.run()
    outcome.wait_until_finish()
    metrics = outcome.metrics().query(MetricsFilter().with_namespace("beam_v1"))
    return Run(_read_parts(str(out / "scored")), _read_parts(str(out / "failed")), metrics)


def mlp_tables(sizes, seed=0, n_in=4, start=0):
    rng = np.random.RandomState(seed)
    tables = []
    for size in sizes:
        x = rng.normal(size=(size, n_in)).astype(np.float32)
        ids = np.arange(start, start + size, dtype=np.int64)
        tables.append(
            pa.table(
                {
                    "id": ids,
                    "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), n_in),
                    "tag": pa.array([f"row{i}" for i in ids]),
                }
            )
        )
        start += size
    return tables


def check_mlp_scores(path, scored, inputs):
    """Scored rows (sorted by id) equal the TF loader's scores of the same rows of `inputs`."""
    by_id = pa.concat_tables(inputs).sort_by("id")
    positions = np.searchsorted(by_id["id"].to_numpy(), scored["id"].to_numpy())
    x = as_numpy(by_id["x"]).astype(np.float32)[positions]
    want = tf_reference(path, {"x": x})
    assert_close(as_numpy(scored["scores"]), want["scores"], "scores")
    assert_close(scored["label"].to_numpy(), want["label"], "label")
    assert scored["tag"].to_pylist() == [f"row{i}" for i in scored["id"].to_pylist()]


def write_mlp_parquet(directory, n_files=3, rows=200, seed=8, bad_every=0, row_group_size=64):
    """Parquet files of an `id`, a `name` and a list column `x`; returns (ids, x) per file."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.RandomState(seed)
    written = []
    for f in range(n_files):
        ids = np.arange(f * rows, (f + 1) * rows, dtype=np.int64)
        x = rng.normal(size=(rows, 4)).astype(np.float32)
        lists = x.tolist()
        bad = []
        if bad_every:
            for i in range(3, rows, bad_every):
                lists[i] = lists[i][:3]
                bad.append(int(ids[i]))
        table = pa.table(
            {
                "id": ids,
                "name": [f"n{i}" for i in ids],
                "x": pa.array(lists, pa.list_(pa.float32())),
            }
        )
        pq.write_table(
            table, os.path.join(directory, f"part-{f}.parquet"), row_group_size=row_group_size
        )
        written.append((ids, x, bad))
    return written


def read_outputs(prefix):
    """Final scored files of a run (not its dead letter) and their rows."""
    names = sorted(n for n in glob.glob(f"{prefix}-*-of-*.parquet") if "-failed-" not in n)
    return names, (pa.concat_tables([pq.read_table(n) for n in names]) if names else None)


def assert_empty_dead_letter(dead_prefix, reported=None):
    """No failed rows: Beam's sink may still write one empty shard, but no row."""
    dead = sorted(glob.glob(f"{dead_prefix}-*-of-*.parquet"))
    if reported is not None:
        assert reported == dead
    assert sum(pq.read_metadata(n).num_rows for n in dead) == 0


def check_parquet_scores(path, table, written):
    all_ids = np.concatenate([w[0] for w in written])
    all_x = np.concatenate([w[1] for w in written])
    table = table.sort_by("id")
    positions = np.searchsorted(all_ids, table["id"].to_numpy())
    want = tf_reference(path, {"x": all_x[positions]})
    assert_close(as_numpy(table["scores"]), want["scores"], "scores")
    assert_close(table["label"].to_numpy(), want["label"], "label")
    assert table["name"].to_pylist() == [f"n{i}" for i in table["id"].to_pylist()]
