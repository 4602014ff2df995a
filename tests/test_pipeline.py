"""RunV1Inference, ScoreParquet, `score()` and `beam-v1 score` on real Beam pipelines (SPEC §2-§6).

Everything runs for real: TF1 SavedModels from tests/builders.py (and two built here whose
session fails on some rows), Beam's DirectRunner (in memory, multi-threaded and with two
worker processes), Parquet files in tmp_path. Scores are compared with TensorFlow's own TF1
loader (`tf.compat.v1.saved_model.loader.load` + `sess.run`) or an exact numpy formula.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import uuid

import apache_beam as beam
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from remote_fs import MappedFileSystem

from beam_v1 import RunV1Inference, ScoreParquet
from beam_v1.cli import main as cli
from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.io import staging
from beam_v1.scoring.job import score

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


@pytest.fixture(scope="module")
def failing_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("failing_models")
    return {
        "checked_sqrt": build_checked_sqrt(str(root / "checked_sqrt")),
        "parse_number": build_parse_number(str(root / "parse_number")),
    }


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


# ------------------------------------------------------------ RunV1Inference


@pytest.mark.parametrize("argv", [[], MULTI_THREADING], ids=["in_memory", "multi_threading"])
def test_mlp_scores_equal_tf_loader(built_models, tmp_path, argv):
    path = built_models["mlp"]
    tables = mlp_tables([5, 120, 1, 37, 64, 90], seed=1)
    run = run_inference(tables, tmp_path, path, argv=argv, batch_size=64)
    scored = run.scored()
    assert run.rows_failed == 0
    assert scored["id"].to_pylist() == list(range(317))
    assert scored.schema.names == ["id", "tag", "label", "scores"]
    assert scored.schema.field("scores").type == pa.list_(pa.float32(), 3)
    assert scored.schema.field("label").type == pa.int64()
    check_mlp_scores(path, scored, tables)
    assert run.counters["rows_in"] == 317 == run.counters["rows_scored"]
    assert run.counters["rows_failed"] == 0
    assert run.counters["model_loads"] == 1


def test_rebatching_merges_small_tables_and_splits_large_ones(built_models, tmp_path):
    path = built_models["mlp"]
    sizes = [7] * 40 + [500] + [3] * 10
    tables = mlp_tables(sizes, seed=2)
    total = sum(sizes)
    run = run_inference(tables, tmp_path, path, batch_size=50)
    out_sizes = [t.num_rows for t in run.scored_parts]
    assert sum(out_sizes) == total and run.rows_failed == 0
    assert max(out_sizes) == 50  # the 500-row table was split, small ones merged
    assert len(out_sizes) < len(sizes) // 2
    # some output batch holds rows of several input tables
    table_of_id = np.repeat(np.arange(len(sizes)), sizes)
    spans = [len(set(table_of_id[t["id"].to_numpy()])) for t in run.scored_parts]
    assert max(spans) >= 5
    batch_size = run.distributions["batch_size"]
    assert batch_size.max == 50 and batch_size.sum == total
    assert batch_size.count == run.counters["batches"] <= total // 50 + 3
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(total))
    check_mlp_scores(path, scored, tables)


def test_record_batches_are_accepted(built_models, tmp_path):
    path = built_models["mlp"]
    tables = mlp_tables([30, 20], seed=3)
    batches = [b for t in tables for b in t.to_batches()]
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    run = run_inference(batches, tmp_path, path, batch_size=16)
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(50))
    check_mlp_scores(path, scored, tables)


def test_result_is_addressable_by_attribute_and_key(built_models):
    pipeline = beam.Pipeline()
    result = pipeline | beam.Create(mlp_tables([3])) | RunV1Inference(built_models["mlp"])
    assert result.scored is result["scored"]
    assert result.failed is result["failed"]


def test_multi_input_with_planted_bad_rows(built_models, tmp_path):
    path = built_models["multi_input"]
    rng = np.random.RandomState(4)
    n = 120
    a = rng.normal(size=(n, 3)).astype(np.float32).tolist()
    b = rng.randint(-100, 100, size=n).tolist()
    c = rng.normal(size=n).tolist()
    expected_errors = {
        5: "column 'a' is null (input 'a' needs a value)",
        17: "column 'a' has a list of shape [2] where input 'a' needs [3] (shape [-1,3])",
        33: "column 'a' holds a null value",
        64: "column 'b' is null (input 'b' needs a value)",
        99: "column 'c' is null (input 'c' needs a value)",
    }
    a[5] = None
    a[17] = a[17][:2]
    a[33][1] = None
    b[64] = None
    c[99] = None
    full = pa.table(
        {
            "id": np.arange(n),
            "a": pa.array(a, pa.list_(pa.float32())),
            "b": pa.array(b, pa.int64()),
            "c": pa.array(c, pa.float64()),
            "note": [f"n{i}" for i in range(n)],
        }
    )
    tables = [full.slice(0, 50), full.slice(50, 40), full.slice(90)]
    run = run_inference(tables, tmp_path, path, batch_size=32)
    failed = run.failed()
    scored = run.scored()
    assert run.rows_scored + run.rows_failed == n
    assert failed.schema.names == ["id", "a", "b", "c", "note", "error"]
    assert dict(zip(failed["id"].to_pylist(), failed["error"].to_pylist())) == expected_errors
    for column in ("a", "b", "c", "note"):
        assert failed[column].to_pylist() == full.take(list(expected_errors))[column].to_pylist()
    good = np.array(sorted(set(range(n)) - set(expected_errors)))
    assert scored["id"].to_numpy().tolist() == good.tolist()
    assert scored.schema.names == ["id", "note", "a_scaled", "total"]
    want = tf_reference(
        path,
        {
            "a": np.array([a[i] for i in good], dtype=np.float32),
            "b": np.array([b[i] for i in good], dtype=np.int64),
            "c": np.array([[c[i]] for i in good], dtype=np.float64),
        },
    )
    assert_close(scored["total"].to_numpy(), want["total"], "total")
    assert_close(as_numpy(scored["a_scaled"]), want["a_scaled"], "a_scaled")
    assert run.counters["rows_failed"] == len(expected_errors)


def test_string_lookup(built_models, tmp_path):
    path = built_models["string_lookup"]
    words = ["apple", "zzz", "date", None, "banana", "cherry", "", "apple"] * 5
    table = pa.table({"row": np.arange(len(words)), "word": pa.array(words)})
    run = run_inference([table], tmp_path, path, batch_size=16)
    scored, failed = run.scored("row"), run.failed("row")
    assert failed["row"].to_pylist() == [i for i, w in enumerate(words) if w is None]
    assert set(failed["error"].to_pylist()) == {
        "column 'word' is null (input 'word' needs a value)"
    }
    good = [i for i, w in enumerate(words) if w is not None]
    assert scored.schema.names == ["row", "id", "score"]
    assert scored["row"].to_pylist() == good
    want = tf_reference(path, {"word": np.array([words[i] for i in good], dtype=object)})
    np.testing.assert_array_equal(scored["id"].to_numpy(), want["id"])
    assert_close(scored["score"].to_numpy(), want["score"], "score")
    assert scored["id"].to_pylist()[:7] == [0, -1, 3, 1, 2, -1, 0]


def test_fixed_batch_model_with_rows_not_a_multiple_of_the_batch(built_models, tmp_path):
    path = built_models["fixed_batch"]
    n = 23
    x = (np.arange(n * 3, dtype=np.float32) / 7).reshape(n, 3)
    table = pa.table({"id": np.arange(n), "x": pa.array(x.tolist(), pa.list_(pa.float32()))})
    run = run_inference([table.slice(0, 10), table.slice(10)], tmp_path, path, batch_size=7)
    scored = run.scored()
    assert run.rows_failed == 0
    assert scored["id"].to_pylist() == list(range(n))
    assert scored.schema.field("y").type == pa.list_(pa.float32(), 3)
    np.testing.assert_array_equal(as_numpy(scored["y"]).astype(np.float32), x * 2 + 1)
    # the TF loader on one full fixed batch agrees
    want = tf_reference(path, {"x": x[:4]})
    np.testing.assert_array_equal(as_numpy(scored["y"])[:4], want["y"])


def test_scalar_input_model_runs_row_by_row(built_models, tmp_path):
    path = built_models["scalar_input"]
    values = [1.5, -2.0, None, 4.0, 0.25, 10.0]
    table = pa.table({"id": np.arange(6), "x": pa.array(values, pa.float64())})
    run = run_inference([table], tmp_path, path, batch_size=4)
    scored, failed = run.scored(), run.failed()
    assert scored["id"].to_pylist() == [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(
        scored["y"].to_numpy(), np.array([v * 3 - 1 for v in values if v is not None], np.float32)
    )
    assert scored.schema.field("y").type == pa.float32()
    assert failed["id"].to_pylist() == [2]
    assert failed["error"].to_pylist() == ["column 'x' is null (input 'x' needs a value)"]
    assert tf_reference(path, {"x": np.float32(1.5)})["y"] == scored["y"][0].as_py()


@pytest.mark.parametrize("kind", ["list", "fixed_size_list"])
def test_nested_model(built_models, tmp_path, kind):
    path = built_models["nested"]
    rng = np.random.RandomState(5)
    x = rng.normal(size=(40, 2, 3)).astype(np.float32)
    if kind == "list":
        rows = x.tolist()
        rows[7] = rows[7][:1]  # [1,3] where [2,3] is needed
        rows[11][1] = rows[11][1][:2]  # ragged
        column = pa.array(rows, pa.list_(pa.list_(pa.float32())))
        bad = {
            7: "column 'x' has a list of shape [1x3] where input 'x' needs [2x3] (shape [-1,2,3])",
            11: "column 'x' is a ragged nested list",
        }
    else:
        column = pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3), 2
        )
        bad = {}
    table = pa.table({"id": np.arange(40), "x": column})
    run = run_inference([table], tmp_path, path, batch_size=16)
    scored = run.scored()
    good = [i for i in range(40) if i not in bad]
    assert scored["id"].to_pylist() == good
    failed = run.failed()
    if not bad:
        assert failed is None
    else:
        assert dict(zip(failed["id"].to_pylist(), failed["error"].to_pylist())) == bad
        assert failed.schema.field("x").type == pa.list_(pa.list_(pa.float32()))
    want = tf_reference(path, {"x": x[good]})
    assert scored.schema.field("doubled").type == pa.list_(pa.list_(pa.float32(), 3), 2)
    assert_close(as_numpy(scored["doubled"]).astype(np.float32), want["doubled"], "doubled")
    assert_close(scored["total"].to_numpy(), want["total"], "total")


def test_variable_length_model(built_models, tmp_path):
    path = built_models["variable_len"]
    rng = np.random.RandomState(6)
    rows = [rng.randint(-9, 9, size=rng.randint(0, 6)).astype(float).tolist() for _ in range(60)]
    rows[13] = None
    table = pa.table({"id": np.arange(60), "x": pa.array(rows, pa.list_(pa.float32()))})
    run = run_inference([table.slice(0, 25), table.slice(25)], tmp_path, path, batch_size=20)
    scored, failed = run.scored(), run.failed()
    assert failed["id"].to_pylist() == [13]
    good = [i for i in range(60) if rows[i] is not None]
    assert scored["id"].to_pylist() == good
    np.testing.assert_array_equal(
        scored["total"].to_numpy(), np.array([sum(rows[i]) for i in good], np.float32)
    )
    np.testing.assert_array_equal(scored["count"].to_numpy(), [len(rows[i]) for i in good])
    assert scored.schema.field("count").type == pa.int32()
    i = next(i for i in good if len(rows[i]) == 4)
    want = tf_reference(path, {"x": np.array([rows[i]], np.float32)})
    assert scored["total"][good.index(i)].as_py() == want["total"][0]


@pytest.mark.parametrize("output_shapes", [None, {"y": (-1,)}], ids=["learnt", "given"])
def test_unknown_rank_model_scalar_column(built_models, tmp_path, output_shapes):
    path = built_models["unknown_rank"]
    x = np.arange(-5, 25, dtype=np.float32) / 3
    table = pa.table({"id": np.arange(30), "x": x})
    run = run_inference([table], tmp_path, path, batch_size=8, output_shapes=output_shapes)
    scored = run.scored()
    assert scored.schema.field("y").type == pa.float32()
    np.testing.assert_array_equal(scored["y"].to_numpy(), tf_reference(path, {"x": x})["y"])


def test_unknown_rank_model_list_column_learns_the_output_rank(built_models, tmp_path):
    path = built_models["unknown_rank"]
    x = (np.arange(40, dtype=np.float32) / 4).reshape(20, 2)
    table = pa.table({"id": np.arange(20), "x": pa.array(x.tolist(), pa.list_(pa.float32()))})
    run = run_inference([table], tmp_path, path, batch_size=8)
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(20))
    assert pa.types.is_list(scored.schema.field("y").type)
    np.testing.assert_array_equal(as_numpy(scored["y"]), tf_reference(path, {"x": x})["y"])


@pytest.mark.parametrize("nested", [False, True], ids=["scalar", "list"])
def test_unknown_rank_model_over_parquet(built_models, tmp_path, nested):
    """ScoreParquet learns an unknown-rank output's shape from the first file's first rows."""
    path = built_models["unknown_rank"]
    x = (np.arange(60, dtype=np.float32) / 8).reshape(30, 2)
    column = pa.array(x.tolist(), pa.list_(pa.float32())) if nested else pa.array(x[:, 0])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": np.arange(30), "x": column}), str(tmp_path / "in" / "a.parquet"))
    prefix = str(tmp_path / "out" / "u")
    summary = score(path, str(tmp_path / "in" / "*.parquet"), prefix, [], progress=False)
    assert summary["rows_scored"] == 30 and summary["rows_failed"] == 0
    _, scored = read_outputs(prefix)
    scored = scored.sort_by("id")
    want = tf_reference(path, {"x": x if nested else x[:, 0]})["y"]
    assert pa.types.is_list(scored.schema.field("y").type) == nested
    np.testing.assert_array_equal(as_numpy(scored["y"]), want)


# ---------------------------------------------------- model errors: bisection


def test_model_error_fails_only_the_rows_that_cause_it(failing_models, tmp_path):
    path = failing_models["checked_sqrt"]
    n = 300
    x = np.linspace(0.0, 50.0, n).astype(np.float32)
    negative = [0, 77, 78, 150, 299]
    x[negative] = -1.0
    tables = [pa.table({"id": np.arange(s, s + 100), "x": x[s : s + 100]}) for s in (0, 100, 200)]
    run = run_inference(tables, tmp_path, path, batch_size=64)
    failed, scored = run.failed(), run.scored()
    assert failed["id"].to_pylist() == negative
    assert failed.schema.names == ["id", "x", "error"]
    assert failed["x"].to_pylist() == [-1.0] * len(negative)
    for error in failed["error"].to_pylist():
        assert error.startswith("the model failed on this row: ")
        assert "x must be >= 0" in error
    good = [i for i in range(n) if i not in negative]
    assert scored["id"].to_pylist() == good
    want = tf_reference(path, {"x": x[good]})["y"]
    np.testing.assert_array_equal(scored["y"].to_numpy(), want)
    assert run.counters["rows_in"] == n
    assert run.counters["rows_scored"] == n - len(negative)
    assert run.counters["rows_failed"] == len(negative)


def test_model_error_on_strings_is_bisected(failing_models, tmp_path):
    path = failing_models["parse_number"]
    texts = [str(i / 4) for i in range(50)]
    texts[9] = "abc"
    texts[31] = "1.5.2"
    table = pa.table({"id": np.arange(50), "text": texts})
    run = run_inference([table], tmp_path, path)
    failed, scored = run.failed(), run.scored()
    assert failed["id"].to_pylist() == [9, 31]
    assert failed["text"].to_pylist() == ["abc", "1.5.2"]
    assert all("the model failed on this row" in e for e in failed["error"].to_pylist())
    assert "abc" in failed["error"][0].as_py()
    good = [t for t in texts if t not in ("abc", "1.5.2")]
    want = tf_reference(path, {"text": np.array(good, dtype=object)})["value"]
    np.testing.assert_array_equal(scored["value"].to_numpy(), want)
    np.testing.assert_array_equal(want, np.array([float(t) * 2 for t in good], np.float32))


# -------------------------------------------------------- Parquet: score()


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


def test_score_parquet_files(built_models, tmp_path):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=3, rows=200, bad_every=50)
    prefix = str(tmp_path / "out" / "scores")
    summary = score(
        path, str(tmp_path / "in" / "*.parquet"), prefix, [], progress=False, batch_size=128
    )
    bad_ids = sorted(i for w in written for i in w[2])
    assert len(bad_ids) == 12
    names, scored = read_outputs(prefix)
    assert names and all(FINAL_FILE.search(n) for n in names)
    shards = {FINAL_FILE.search(n).group(2) for n in names}
    assert shards == {f"{len(names):05d}"}
    assert [FINAL_FILE.search(n).group(1) for n in names] == [f"{i:05d}" for i in range(len(names))]
    scored = pa.concat_tables([pq.read_table(n) for n in names])
    assert scored.schema.names == ["id", "name", "label", "scores"]
    assert scored.num_rows == 600 - len(bad_ids)
    assert sorted(scored["id"].to_pylist()) == sorted(set(range(600)) - set(bad_ids))
    check_parquet_scores(path, scored, written)

    dead = sorted(glob.glob(f"{prefix}-failed-*-of-*.parquet"))
    assert dead and all(FINAL_FILE.search(n) for n in dead)
    failed = pa.concat_tables([pq.read_table(n) for n in dead]).sort_by("id")
    assert failed.schema.names == ["id", "name", "x", "error"]
    assert failed["id"].to_pylist() == bad_ids
    assert all(len(v) == 3 for v in failed["x"].to_pylist())
    assert set(failed["error"].to_pylist()) == {
        "column 'x' has a list of shape [3] where input 'x' needs [4] (shape [-1,4])"
    }

    assert summary["rows_in"] == 600
    assert summary["rows_scored"] == 600 - len(bad_ids)
    assert summary["rows_failed"] == len(bad_ids)
    assert summary["files_written"] == names
    assert summary["dead_letter_files"] == dead
    assert summary["model_loads"] == 1
    assert summary["signature"] == "serving_default"
    assert summary["batches"] >= 600 // 128
    with open(f"{prefix}-summary.json") as f:
        assert json.load(f) == summary
    assert not glob.glob(f"{prefix}-latency.json")
    p50, p95 = summary["batch_latency_ms_p50"], summary["batch_latency_ms_p95"]
    assert p50 is not None and p95 is not None and 0 <= p50 <= p95


def test_score_parquet_transform_in_a_pipeline(built_models, tmp_path):
    path = built_models["multi_input"]
    rng = np.random.RandomState(10)
    n = 90
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.randint(0, 50, size=n)
    c = rng.normal(size=n)
    (tmp_path / "in").mkdir()
    for f in range(3):
        part = slice(f * 30, (f + 1) * 30)
        pq.write_table(
            pa.table(
                {
                    "key": np.arange(n)[part],
                    "a": pa.FixedSizeListArray.from_arrays(pa.array(a[part].ravel()), 3),
                    "b": b[part],
                    "c": c[part],
                }
            ),
            str(tmp_path / "in" / f"f{f}.parquet"),
        )
    prefix = str(tmp_path / "out" / "t")
    transform = ScoreParquet(path, str(tmp_path / "in" / "*.parquet"), prefix, batch_size=20)
    with beam.Pipeline() as pipeline:
        _ = pipeline | transform
    names, scored = read_outputs(prefix)
    assert names and all(FINAL_FILE.search(n) for n in names)
    assert_empty_dead_letter(f"{prefix}-failed")
    scored = scored.sort_by("key")
    assert scored.schema.names == ["key", "a_scaled", "total"]
    assert scored["key"].to_pylist() == list(range(n))
    want = tf_reference(path, {"a": a, "b": b, "c": c.reshape(n, 1)})
    assert_close(scored["total"].to_numpy(), want["total"], "total")
    assert_close(as_numpy(scored["a_scaled"]), want["a_scaled"], "a_scaled")


def test_score_with_columns_map_keep_outputs_and_dead_letter(built_models, tmp_path):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=2, rows=50, bad_every=20)
    for name in glob.glob(str(tmp_path / "in" / "*.parquet")):
        table = pq.read_table(name)
        pq.write_table(table.rename_columns(["id", "name", "features"]), name)
    prefix = str(tmp_path / "out" / "p")
    dead_prefix = str(tmp_path / "dead" / "bad")
    summary = score(
        path,
        str(tmp_path / "in" / "*.parquet"),
        prefix,
        [],
        progress=False,
        column_map={"features": "x"},
        keep_columns=["id"],
        outputs=["scores"],
        dead_letter_prefix=dead_prefix,
        num_shards=2,
    )
    names, scored = read_outputs(prefix)
    assert [os.path.basename(n) for n in names] == [
        "p-00000-of-00002.parquet",
        "p-00001-of-00002.parquet",
    ]
    assert scored.schema.names == ["id", "scores"]
    bad_ids = sorted(i for w in written for i in w[2])
    assert summary["rows_failed"] == len(bad_ids) == 6
    dead = sorted(glob.glob(f"{dead_prefix}-*-of-*.parquet"))
    assert summary["dead_letter_files"] == dead
    failed = pa.concat_tables([pq.read_table(n) for n in dead])
    assert failed.schema.names == ["id", "name", "features", "error"]
    assert sorted(failed["id"].to_pylist()) == bad_ids
    all_x = np.concatenate([w[1] for w in written])
    scored = scored.sort_by("id")
    want = tf_reference(path, {"x": all_x[scored["id"].to_numpy()]})
    assert_close(as_numpy(scored["scores"]), want["scores"], "scores")


def test_later_files_with_reordered_columns_and_wider_types(built_models, tmp_path):
    """A later file may order its columns differently or use a narrower int type."""
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=3, rows=40, bad_every=15)
    last = str(tmp_path / "in" / "part-2.parquet")
    table = pq.read_table(last)
    reordered = pa.table(
        {
            "x": table["x"],
            "name": table["name"],
            "id": table["id"].cast(pa.int32()),
        }
    )
    pq.write_table(reordered, last)
    prefix = str(tmp_path / "out" / "r")
    summary = score(path, str(tmp_path / "in" / "*.parquet"), prefix, [], progress=False)
    scored = pa.concat_tables([pq.read_table(n) for n in summary["files_written"]])
    assert scored.schema.names == ["id", "name", "label", "scores"]
    assert scored.schema.field("id").type == pa.int64()
    bad_ids = sorted(i for w in written for i in w[2])
    assert scored.num_rows == 120 - len(bad_ids)
    check_parquet_scores(path, scored, written)
    failed = pa.concat_tables([pq.read_table(n) for n in summary["dead_letter_files"]])
    assert failed.schema.names == ["id", "name", "x", "error"]
    assert sorted(failed["id"].to_pylist()) == bad_ids


def _loaded_pids(text):
    return re.findall(r"beam-v1 worker (\d+) loaded", text)


@pytest.mark.slow  # two worker processes that import TensorFlow: about 20 s
def test_score_multi_processing_scores_every_row_once(built_models, tmp_path, capfd):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=4, rows=250, row_group_size=50)
    prefix = str(tmp_path / "out" / "mp")
    summary = score(
        path,
        str(tmp_path / "in" / "*.parquet"),
        prefix,
        MULTI_PROCESSING,
        progress=False,
        batch_size=100,
    )
    names, scored = read_outputs(prefix)
    assert names == summary["files_written"] and all(FINAL_FILE.search(n) for n in names)
    ids = np.sort(scored["id"].to_numpy())
    np.testing.assert_array_equal(ids, np.arange(1000))  # a permutation of the input ids
    check_parquet_scores(path, scored, written)
    assert summary["rows_in"] == summary["rows_scored"] == 1000
    assert summary["rows_failed"] == 0
    assert_empty_dead_letter(f"{prefix}-failed", summary["dead_letter_files"])
    # each worker process loads the model once: the metric, and the workers' own log lines
    assert 1 <= summary["model_loads"] <= 2
    pids = _loaded_pids(capfd.readouterr().err)
    assert 1 <= len(pids) <= 2
    assert len(set(pids)) == len(pids)
    assert str(os.getpid()) not in pids  # loaded in the worker processes, not here
    assert len(pids) == summary["model_loads"]


# ----------------------------------------------------------- pre-run errors


def _write_x_file(path, column="x", rows=4):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "id": np.arange(rows),
                column: pa.array([[1.0, 2.0, 3.0, 4.0]] * rows, pa.list_(pa.float32())),
            }
        ),
        path,
    )


PRE_RUN_ERRORS = {
    "missing model path": (
        {"model": "{tmp}/no_such_model"},
        [],
        ["no_such_model", "does not exist"],
    ),
    "unknown tags": ({"tags": ["gpu"]}, ["--tags", "gpu"], ["gpu", "serve"]),
    "unknown signature": (
        {"signature": "nope"},
        ["--signature", "nope"],
        ["'nope'", "'serving_default'"],
    ),
    "missing column": (
        {"input": "{tmp}/in_other/*.parquet"},
        [],
        ["input 'x' (float32 [-1,4]) has no column 'x'", "id (int64), feat"],
    ),
    "no input file matches": (
        {"input": "{tmp}/nothing/*.parquet"},
        [],
        ["No input file matches", "nothing"],
    ),
    "unknown output": (
        {"outputs": ["nope"]},
        ["--outputs", "nope"],
        ["['nope']", "'label'", "'scores'"],
    ),
    "--map to an unknown input": (
        {"column_map": {"x": "nope"}},
        ["--map", "x=nope"],
        ["--map names input(s) ['nope']"],
    ),
}


@pytest.mark.parametrize("case", sorted(PRE_RUN_ERRORS))
def test_pre_run_errors_raise_before_any_output(built_models, tmp_path, capsys, case):
    overrides, flags, fragments = PRE_RUN_ERRORS[case]
    tmp = str(tmp_path)
    _write_x_file(f"{tmp}/in/a.parquet")
    _write_x_file(f"{tmp}/in_other/a.parquet", column="feat")
    model = overrides.get("model", built_models["mlp"]).format(tmp=tmp)
    pattern = overrides.get("input", f"{tmp}/in/*.parquet").format(tmp=tmp)
    kwargs = {k: v for k, v in overrides.items() if k not in ("model", "input")}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    prefix = str(out_dir / "res")
    with pytest.raises(BeamV1Error) as info:
        score(model, pattern, prefix, [], progress=False, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert os.listdir(out_dir) == []

    capsys.readouterr()
    argv = ["score", "--model", model, "--input", pattern, "--output", prefix, "--quiet"]
    assert cli.main(argv + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("beam-v1: error: ")
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0  # one paragraph
    for fragment in fragments:
        assert fragment in err
    assert os.listdir(out_dir) == []


def test_schema_given_to_run_v1_inference_is_checked_at_construction(built_models):
    schema = pa.schema([("id", pa.int64()), ("features", pa.list_(pa.float32()))])
    with pytest.raises(SchemaError, match="has no column 'x'"):
        RunV1Inference(built_models["mlp"], schema=schema)
    RunV1Inference(built_models["mlp"], schema=schema, column_map={"features": "x"})
    with pytest.raises(BeamV1Error, match="'nope'"):
        RunV1Inference(built_models["mlp"], signature="nope")
    with pytest.raises(ValueError, match="batch_size"):
        RunV1Inference(built_models["mlp"], batch_size=0)


# --------------------------------------------------- failure in the middle


@pytest.mark.parametrize("damage", ["corrupt bytes", "truncated footer"])
def test_failure_mid_run_leaves_no_final_output(built_models, tmp_path, damage):
    """(A later file whose schema drifted is no failure: test_schema_drift.py.)"""
    path = built_models["mlp"]
    write_mlp_parquet(str(tmp_path / "in"), n_files=3, rows=60)
    last = str(tmp_path / "in" / "part-2.parquet")
    if damage == "corrupt bytes":
        data = bytearray(open(last, "rb").read())
        data[100:600] = b"\x00" * 500  # column chunks, not the footer: fails when read
        with open(last, "wb") as f:
            f.write(bytes(data))
    else:
        data = open(last, "rb").read()
        with open(last, "wb") as f:
            f.write(data[: len(data) // 2])  # no footer: fails when its row groups are listed
    prefix = str(tmp_path / "out" / "res")
    with pytest.raises(Exception) as info:
        score(path, str(tmp_path / "in" / "*.parquet"), prefix, [], progress=False, batch_size=32)
    if damage == "truncated footer":
        assert "magic bytes" in str(info.value)
    assert glob.glob(f"{prefix}-*-of-*.parquet") == []
    assert glob.glob(f"{prefix}-failed-*") == []
    assert not os.path.exists(f"{prefix}-summary.json")


# -------------------------------------------------------- remote model


def test_remote_model_is_staged_through_beam_filesystems(built_models, tmp_path):
    import shutil

    root = tmp_path / "bucket"
    shutil.copytree(built_models["mlp"], root / "models" / "mlp")
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.opened.clear()
    remote = "beamv1test://models/mlp"
    tables = mlp_tables([40, 25], seed=9)
    run = run_inference(tables, tmp_path, remote, batch_size=32)
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(65))
    check_mlp_scores(built_models["mlp"], scored, tables)
    assert "beamv1test://models/mlp/saved_model.pb" in MappedFileSystem.opened
    assert any(p.startswith("beamv1test://models/mlp/variables/") for p in MappedFileSystem.opened)
    local = staging.local_model_dir(remote)
    assert os.path.isfile(os.path.join(local, "saved_model.pb"))
    assert not local.startswith(str(root))
    assert sorted(os.listdir(os.path.join(local, "variables"))) == sorted(
        os.listdir(root / "models" / "mlp" / "variables")
    )


def _row_group_files(folder, sizes_and_groups):
    """Parquet files of ids; each (rows, row_group_size) gives one file. Returns all ids."""
    os.makedirs(folder, exist_ok=True)
    start, expected_groups = 0, 0
    for i, (rows, group) in enumerate(sizes_and_groups):
        ids = pa.array(np.arange(start, start + rows, dtype=np.int64))
        pq.write_table(pa.table({"id": ids}), os.path.join(folder, f"part-{i}.parquet"),
                       row_group_size=group)
        expected_groups += pq.ParquetFile(os.path.join(folder, f"part-{i}.parquet")).num_row_groups
        start += rows
    return list(range(start)), expected_groups


@pytest.mark.parametrize("where", ["local", "beam_filesystem"])
def test_read_parquet_row_groups_reads_each_row_once(tmp_path, where):
    from beam_v1.io.parquet_read import ReadParquetRowGroups, reading_parquet

    root = tmp_path / "bucket"
    ids, groups = _row_group_files(str(root / "in"), [(250, 100), (40, 1000), (0, 10)])
    assert groups == 3 + 1 + 1  # an empty file still holds one empty row group
    pattern = {
        "local": str(root / "in" / "*.parquet"),
        "beam_filesystem": "beamv1test://in/*.parquet",
    }[where]
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.opened.clear()
    out = str(tmp_path / "ids")
    with beam.Pipeline() as p:
        _ = (
            p
            | ReadParquetRowGroups(pattern)
            | beam.Map(lambda t: (t.num_rows, t["id"].to_pylist()))
            | beam.Map(json.dumps)
            | beam.io.WriteToText(out)
        )
    tables = [json.loads(line) for name in glob.glob(out + "*") for line in open(name)]
    # narrow rows: one slice per row group; the empty file's row group gives no table
    assert len(tables) == groups - 1
    assert sorted(i for _, got in tables for i in got) == ids
    assert sorted(n for n, _ in tables) == [40, 50, 100, 100]
    opened = set(MappedFileSystem.opened)
    if where == "beam_filesystem":  # other schemes go through Beam's FileSystems
        assert opened == {f"beamv1test://in/part-{i}.parquet" for i in range(3)}
    else:  # local files are opened by pyarrow itself
        assert opened == set()
        with reading_parquet(pattern.replace("*", "part-0")) as parquet:
            assert parquet.metadata.num_rows == 250


def test_read_parquet_row_groups_reads_big_row_groups_in_slices(tmp_path):
    """A row group bigger than `slice_bytes` arrives as several tables of about that size,
    which together hold each row of the file once, with its values (DuckDB reads the file)."""
    from beam_v1.io.parquet_read import ReadParquetRowGroups

    rows, width = 5000, 16
    rng = np.random.default_rng(3)
    values = rng.standard_normal((rows, width)).astype(np.float32)
    table = pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width),
    })
    path = str(tmp_path / "in.parquet")
    pq.write_table(table, path, row_group_size=2000)  # groups of 2000, 2000, 1000 rows
    per_row = 8 + 4 * width
    slice_bytes = 300 * per_row
    out = str(tmp_path / "slices")
    with beam.Pipeline() as p:
        _ = (
            p
            | ReadParquetRowGroups(path, slice_bytes=slice_bytes)
            | beam.Map(lambda t: json.dumps([t.num_rows, t["id"].to_pylist(),
                                             t["x"].to_pylist()]))
            | beam.io.WriteToText(out)
        )
    got = [json.loads(line) for name in glob.glob(out + "*") for line in open(name)]
    sizes = [n for n, _, _ in got]
    assert len(got) >= 5000 // 300  # row groups split, not read whole
    assert max(sizes) < 2 * 300  # about slice_bytes each (the footer's uncompressed bytes)
    by_id = {i: x for _, ids_, xs in got for i, x in zip(ids_, xs)}
    assert sorted(i for _, ids_, _ in got for i in ids_) == list(range(rows))
    truth = duckdb.sql(f"SELECT id, x FROM read_parquet('{path}') ORDER BY id").fetchall()
    assert len(truth) == rows
    for i, x in truth[::97]:
        assert by_id[i] == pytest.approx(list(x))


def test_reading_row_groups_leaves_no_arrow_memory_behind(tmp_path):
    """While the reader hands on a table, the Arrow memory alive besides it does not grow
    with the row groups read: earlier row groups of the files the reader keeps open are not
    still allocated (a whole-row-group read left about one row group allocated per open file,
    up to 4 files). Measured downstream in the reader's fused stage with Arrow's own
    allocation counter, not RSS."""
    from apache_beam.metrics import Metrics

    from beam_v1.io.parquet_read import ReadParquetRowGroups

    rows, width, group = 40_000, 64, 20_000
    rng = np.random.default_rng(5)
    for f in range(3):
        values = rng.standard_normal((rows, width)).astype(np.float32)
        pq.write_table(
            pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)}),
            str(tmp_path / f"part-{f}.parquet"), row_group_size=group,
        )
    group_bytes = group * width * 4

    class Probe(beam.DoFn):
        def __init__(self):
            self.other = Metrics.distribution("test", "other_arrow_bytes")
            self.rows = Metrics.counter("test", "rows")

        def process(self, table):
            self.other.update(max(0, pa.total_allocated_bytes() - table.nbytes))
            self.rows.inc(table.num_rows)

    p = beam.Pipeline()
    _ = p | ReadParquetRowGroups(str(tmp_path / "*.parquet")) | beam.ParDo(Probe())
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace("test"))
    assert sum(c.committed for c in metrics["counters"]) == 3 * rows
    (other,) = [d.committed for d in metrics["distributions"]]
    assert other.count == 6  # each row group of each file fits one slice
    # the decoder's own buffers for the slice in hand are there every time; what must not
    # be there is memory that grows with the row groups already read
    assert other.max - other.min < group_bytes / 2, (
        f"other Arrow bytes alive grew from {other.min:,} to {other.max:,}"
    )


@pytest.mark.parametrize("where", ["local", "beam_filesystem"])
def test_write_parquet_tables_sinks_side_by_side(tmp_path, where):
    """Two sinks whose prefixes nest (`s` and `s-failed`) and whose shard counts are equal keep
    each other's files (Beam's own sink deletes every `s-*-of-00002` file before it renames);
    every row is written once; a shard without rows is an empty file with the schema."""
    from beam_v1.io.parquet_write import WriteParquetTables

    root = tmp_path / "bucket"
    os.makedirs(root / "out")
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.created.clear()
    prefix = {"local": str(root / "out" / "s"), "beam_filesystem": "beamv1test://out/s"}[where]
    schema = pa.schema([("id", pa.int64()), ("v", pa.float32())])
    tables = [
        pa.table({"id": np.arange(i * 10, i * 10 + n), "v": np.ones(n, np.float32)}, schema=schema)
        for i, n in enumerate([10, 0, 7, 10])
    ]
    with beam.Pipeline() as p:
        data = p | beam.Create(tables, reshuffle=False).with_output_types(pa.Table)
        _ = data | "A" >> WriteParquetTables(prefix, schema, num_shards=2)
        _ = data | "B" >> WriteParquetTables(prefix + "-failed", schema, num_shards=2)
        _ = data | "C" >> WriteParquetTables(prefix + "-auto", schema)
        _ = data | "D" >> WriteParquetTables(prefix + "-six", schema, num_shards=6)
    out = root / "out"
    want = sorted(i for t in tables for i in t["id"].to_pylist())
    for name, shards in [("s", 2), ("s-failed", 2), ("s-six", 6)]:
        files = sorted(glob.glob(str(out / f"{name}-[0-9]*-of-*.parquet")))
        assert [os.path.basename(f) for f in files] == [
            f"{name}-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)
        ]
        got = pa.concat_tables([pq.read_table(f) for f in files])
        assert got.schema == schema and sorted(got["id"].to_pylist()) == want
        if shards == 6:  # 3 tables with rows: 3 shards are empty files
            assert sorted(pq.read_metadata(f).num_rows for f in files) == [0, 0, 0, 7, 10, 10]
    auto = glob.glob(str(out / "s-auto-*-of-*.parquet"))
    assert sorted(pa.concat_tables([pq.read_table(f) for f in auto])["id"].to_pylist()) == want
    assert not glob.glob(str(out / "beam-temp-*"))
    # local files are written by pyarrow itself, other schemes through Beam's FileSystems
    assert bool(MappedFileSystem.created) == (where == "beam_filesystem")


def test_write_parquet_tables_finalize_retried_after_a_partial_rename(tmp_path):
    """A finalize that died after renaming some files completes when it runs again; a temp
    file that is neither renamed nor present is still an error."""
    from apache_beam.io.filesystem import BeamIOError

    from beam_v1.io.parquet_write import finalize

    schema = pa.schema([("a", pa.int64())])
    temp = tmp_path / "beam-temp-s-1"
    temp.mkdir()
    paths = []
    for i in range(3):
        paths.append(str(temp / f"{i}.parquet"))
        pq.write_table(pa.table({"a": [i]}, schema=schema), paths[-1])
    os.rename(paths[1], tmp_path / "s-00001-of-00003.parquet")  # the first attempt got this far
    final = finalize(paths, str(tmp_path / "s"), str(temp), schema, "snappy")
    assert [pq.read_table(f)["a"].to_pylist() for f in final] == [[0], [1], [2]]
    assert not temp.exists()
    temp.mkdir()
    with pytest.raises(BeamIOError):
        finalize([str(temp / "lost.parquet")], str(tmp_path / "t"), str(temp), schema, "snappy")


def test_outputs_in_folders_that_do_not_exist_yet(built_models, tmp_path):
    """Every row scored: the dead letter, in a new folder of its own, is one empty file; an
    input without rows gives one empty scored file in a new folder."""
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=1, rows=30, bad_every=0)
    dead = str(tmp_path / "new" / "dead" / "rows")
    summary = score(model=built_models["mlp"], input_pattern=str(tmp_path / "in" / "*.parquet"),
                    output_prefix=str(tmp_path / "out" / "s"), dead_letter_prefix=dead,
                    progress=False)
    assert summary["rows_scored"] == 30
    check_parquet_scores(built_models["mlp"], read_outputs(str(tmp_path / "out" / "s"))[1],
                         written)
    assert summary["dead_letter_files"] == [f"{dead}-00000-of-00001.parquet"]
    assert_empty_dead_letter(dead, summary["dead_letter_files"])

    empty = pq.read_table(tmp_path / "in" / "part-0.parquet")
    os.makedirs(tmp_path / "empty")
    pq.write_table(empty.slice(0, 0), tmp_path / "empty" / "none.parquet")
    prefix = str(tmp_path / "new2" / "out" / "s")
    summary = score(model=built_models["mlp"], input_pattern=str(tmp_path / "empty" / "*"),
                    output_prefix=prefix, progress=False)
    assert summary["rows_in"] == 0
    assert summary["files_written"] == [f"{prefix}-00000-of-00001.parquet"]
    assert pq.read_table(summary["files_written"][0]).num_rows == 0


def test_score_parquet_reads_input_from_a_beam_filesystem(built_models, tmp_path):
    root = tmp_path / "bucket"
    written = write_mlp_parquet(str(root / "in"), n_files=2, rows=70, bad_every=0)
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.opened.clear()
    prefix = str(tmp_path / "out" / "remote")
    summary = score(
        model=built_models["mlp"], input_pattern="beamv1test://in/*.parquet",
        output_prefix=prefix, batch_size=50, progress=False,
    )
    assert summary["rows_in"] == summary["rows_scored"] == 140
    assert any(p.startswith("beamv1test://in/") for p in MappedFileSystem.opened)
    _, scored = read_outputs(prefix)
    check_parquet_scores(built_models["mlp"], scored, written)


# ---------------------------------------------------------------- command line


def test_cli_score_end_to_end(built_models, tmp_path, capsys):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=2, rows=100, bad_every=40)
    for name in glob.glob(str(tmp_path / "in" / "*.parquet")):
        table = pq.read_table(name)
        pq.write_table(table.rename_columns(["id", "name", "features"]), name)
    prefix = str(tmp_path / "out" / "cli")
    dead_prefix = str(tmp_path / "dead" / "rows")
    argv = [
        "score",
        "--model",
        path,
        "--input",
        str(tmp_path / "in" / "*.parquet"),
        "--output",
        prefix,
        "--map",
        "features=x",
        "--keep-columns",
        "id,name",
        "--outputs",
        "scores,label",
        "--batch-size",
        "64",
        "--dead-letter",
        dead_prefix,
        "--num-shards",
        "2",
        "--quiet",
        "--direct_running_mode=in_memory",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "rows in      200" in out and "rows failed  6" in out
    with open(f"{prefix}-summary.json") as f:
        summary = json.load(f)
    assert summary["rows_in"] == 200
    assert summary["rows_scored"] == 194 and summary["rows_failed"] == 6
    names, scored = read_outputs(prefix)
    shards = [FINAL_FILE.search(n).groups() for n in names]
    assert shards == [("00000", "00002"), ("00001", "00002")]
    assert summary["files_written"] == names
    assert scored.schema.names == ["id", "name", "scores", "label"]
    assert scored.num_rows == 194
    check_parquet_scores(path, scored, written)
    dead = sorted(glob.glob(f"{dead_prefix}-*-of-*.parquet"))
    assert summary["dead_letter_files"] == dead and dead
    failed = pa.concat_tables([pq.read_table(n) for n in dead])
    assert failed.schema.names == ["id", "name", "features", "error"]
    assert sorted(failed["id"].to_pylist()) == sorted(i for w in written for i in w[2])
    assert not glob.glob(f"{prefix}-failed-*")


def test_python_dash_m_beam_v1_score(built_models, tmp_path):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=2, rows=30)
    prefix = str(tmp_path / "out" / "sub")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_v1",
            "score",
            "--model",
            path,
            "--input",
            str(tmp_path / "in" / "*.parquet"),
            "--output",
            prefix,
            "--outputs",
            "label",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows scored  60" in proc.stdout
    with open(f"{prefix}-summary.json") as f:
        summary = json.load(f)
    assert summary["rows_in"] == summary["rows_scored"] == 60
    scored = pa.concat_tables([pq.read_table(n) for n in summary["files_written"]])
    assert scored.schema.names == ["id", "name", "label"]
    scored = scored.sort_by("id")
    all_x = np.concatenate([w[1] for w in written])
    want = tf_reference(path, {"x": all_x})
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])


def test_score_bounds_batches_by_bytes(built_models, tmp_path):
    """--max-batch-bytes: more, smaller batches than --batch-size alone gives; nothing lost."""
    from beam_v1.cli import main as cli

    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=1, rows=200, bad_every=50)
    prefix = str(tmp_path / "out" / "p")
    argv = ["score", "--model", path, "--input", str(tmp_path / "in" / "*.parquet"),
            "--output", prefix, "--batch-size", "1000", "--max-batch-bytes", "2000", "--quiet"]
    assert cli.main(argv) == 0
    with open(f"{prefix}-summary.json") as f:
        summary = json.load(f)
    bad = sum(len(w[2]) for w in written)
    assert summary["rows_in"] == 200
    assert summary["rows_scored"] + summary["rows_failed"] == 200 and summary["rows_failed"] == bad
    # one x row is 4 float32 plus id and name: 2000 bytes hold well under 200 rows
    assert summary["batches"] > 2
    _, scored = read_outputs(prefix)
    all_x = np.concatenate([w[1] for w in written])
    scored = scored.sort_by("id")
    want = tf_reference(path, {"x": all_x[scored["id"].to_numpy()]})
    assert_close(as_numpy(scored["scores"]), want["scores"], "scores")
