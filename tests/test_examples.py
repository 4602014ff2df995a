"""tf.Example signatures: feature specs from the graph, and feeding them from Arrow columns.

Every comparison is three-way: the direct feed (parse op outputs fed from columns), the
serialize path (examples built from columns, parsed by the graph), and a Python proto loop
reference (`tf.train.Example` protos built with TensorFlow's own Python API, or the TFRecord's
original bytes, fed to the signature's string input with `V1Model.predict`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from example_truth import TruthSession, build_parse_model
from realmodels import REALMODELS

import beam_v1
from beam_v1.errors import BeamV1Error
from beam_v1.io import tfrecord
from beam_v1.model import example_spec as examples
from beam_v1.model import metadata as savedmodel
from beam_v1.scoring import example_feeds

v1 = tf.compat.v1
TAXI_DATA = REALMODELS / "_data" / "tfx_chicago_taxi_examples"
needs_corpus = pytest.mark.skipif(not REALMODELS.is_dir(), reason="real-model corpus absent")
COLORS = ["red", "green", "blue"]


# ------------------------------------------------------------------------- fixture model


def build_estimator_style(path: str) -> str:
    """serialized tf.Example -> parse_example (feature columns' spec) -> input_layer -> score.

    Features: age (numeric, default 30), income (numeric, required), hours (bucketized at
    [10, 20, 40], default 0), color (vocabulary file asset -> indicator, var-len string),
    ids (identity 0..4 -> indicator, var-len int64), pair (numeric shape [2], default [1, 2]).
    """
    scratch = tempfile.mkdtemp(prefix="vocab-")
    try:
        vocab = os.path.join(scratch, "colors.txt")
        with open(vocab, "w") as f:
            f.write("\n".join(COLORS) + "\n")
        graph = tf.Graph()
        with graph.as_default():
            fc = tf.feature_column
            columns = [
                fc.numeric_column("age", default_value=30.0),
                fc.numeric_column("income"),
                fc.bucketized_column(fc.numeric_column("hours", default_value=0.0),
                                     [10.0, 20.0, 40.0]),
                fc.indicator_column(
                    fc.categorical_column_with_vocabulary_file("color", vocab, num_oov_buckets=1)
                ),
                fc.indicator_column(fc.categorical_column_with_identity("ids", 5)),
                fc.numeric_column("pair", shape=[2], default_value=[1.0, 2.0]),
            ]
            serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
            features = v1.io.parse_example(serialized, fc.make_parse_example_spec(columns))
            dense = v1.feature_column.input_layer(features, columns)
            width = int(dense.shape[1])
            weights = tf.constant(np.linspace(-1.0, 2.0, width, dtype=np.float32).reshape(-1, 1))
            score = tf.identity(tf.matmul(dense, weights)[:, 0], name="score")
            signatures = {
                "serving_default": v1.saved_model.predict_signature_def(
                    {"examples": serialized}, {"score": score, "dense": dense}
                ),
                "regress": v1.saved_model.regression_signature_def(serialized, score),
            }
            with v1.Session(graph=graph) as sess:
                sess.run(v1.tables_initializer())
                builder = v1.saved_model.Builder(path)
                builder.add_meta_graph_and_variables(
                    sess, ["serve"], signature_def_map=signatures,
                    main_op=v1.tables_initializer(),
                    assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                )
                builder.save()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


@pytest.fixture(scope="module")
def estimator_model(tmp_path_factory):
    path = build_estimator_style(str(tmp_path_factory.mktemp("ex") / "model"))
    with beam_v1.load(path) as model:
        yield model


def fixture_table(n: int = 200, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = pa.array([None if i % 7 == 0 else float(rng.integers(18, 90)) for i in range(n)])
    income = pa.array(rng.normal(50_000, 10_000, n))  # float64: cast to float32 like protobuf
    hours = pa.array([None if i % 5 == 0 else int(x) for i, x in
                      enumerate(rng.integers(0, 60, n))], pa.int64())  # ints into a float
    color = pa.array([None if i % 4 == 0 else [COLORS[j % 3] for j in range(i % 3)] +
                      (["purple"] if i % 6 == 1 else []) for i in range(n)], pa.list_(pa.string()))
    ids = pa.array([[int(x) for x in rng.integers(0, 5, i % 4)] for i in range(n)],
                   pa.list_(pa.int64()))
    pair = pa.array([None if i % 3 == 0 else [float(i), float(-i)] for i in range(n)],
                    pa.list_(pa.float32(), 2))
    return pa.table({"age": age, "income": income, "hours": hours, "color": color, "ids": ids,
                     "pair": pair, "row_id": pa.array(range(n))})


def tf_examples(table: pa.Table, spec: examples.ExampleSpec) -> list[bytes]:
    """A Python proto loop: a `tf.train.Example` per row with TensorFlow's Python API."""
    out = []
    for row in table.to_pylist():
        features = {}
        for key, f in spec.features.items():
            value = row.get(key)
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            if f.dtype == "string":
                feature = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[v if isinstance(v, bytes) else v.encode() for v in values]))
            elif f.dtype == "int64":
                feature = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
            else:
                feature = tf.train.Feature(float_list=tf.train.FloatList(value=values))
            features[key] = feature
        out.append(tf.train.Example(
            features=tf.train.Features(feature=features)).SerializeToString())
    return out


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def three_way(model, signature, table, *, expect_direct=True):
    direct = example_feeds.ExampleScorer(model, signature, mode="auto")
    exact = example_feeds.ExampleScorer(model, signature, mode="serialize")
    assert direct.direct is expect_direct, direct.blocker
    rows_d, out_d, bad_d = direct.score(table)
    rows_s, out_s, bad_s = exact.score(table)
    assert bad_d == bad_s
    np.testing.assert_array_equal(rows_d, rows_s)
    assert_same(out_d, out_s)
    if not len(rows_s):
        return rows_d, out_d, bad_d
    reference = model.predict(
        {exact.input_key: np.array(tf_examples(table.take(rows_s), exact.spec), dtype=object)},
        signature=signature,
    )
    assert_same(out_s, reference)
    return rows_d, out_d, bad_d


# ------------------------------------------------------------------------- feature specs


def test_feature_spec_of_the_fixture_model(estimator_model):
    info = beam_v1.inspect(estimator_model.path)
    spec = info.example_specs["serving_default"]["examples"]
    f = spec["features"]
    assert f["age"]["kind"] == "dense" and f["age"]["default"] == [30.0]
    assert f["income"]["required"] and f["income"]["default"] is None
    assert f["hours"]["default"] == [0.0] and f["hours"]["shape"] == (1,)
    assert f["pair"]["shape"] == (2,) and f["pair"]["default"] == [1.0, 2.0]
    assert (f["color"]["kind"], f["color"]["dtype"]) == ("sparse", "string")
    assert (f["ids"]["kind"], f["ids"]["dtype"]) == ("sparse", "int64")
    assert set(info.example_specs) == {"serving_default", "regress"}
    text = info.to_text()
    assert "tf.Example inputs" in text and "income" in text and "required" in text


@needs_corpus
def test_feature_spec_of_half_plus_two_and_estimator_exports():
    info = beam_v1.inspect(str(REALMODELS / "serving__saved_model_half_plus_two_cpu"))
    for key in ("regress_x_to_y", "regress_x_to_y2", "classify_x_to_y"):
        f = info.example_specs[key]["inputs"]["features"]
        assert f["x"]["required"] and f["x"]["dtype"] == "float32"
        assert f["x2"]["default"] == [0.0] and not f["x2"]["required"]
    info = beam_v1.inspect(str(REALMODELS / "stfs__tensorflow_estimator_model"))
    f = info.example_specs["serving_default"]["inputs"]["features"]
    assert (f["a"]["kind"], f["b"]["kind"], f["b"]["required"]) == ("sparse", "dense", True)
    info = beam_v1.inspect(str(REALMODELS / "tfx__benchmark_trained_saved_model_tf1.15"))
    f = info.example_specs["serving_default"]["inputs"]["features"]  # ParseExampleV2
    assert len(f) >= 17 and f["trip_seconds"]["dtype"] == "int64"
    assert all(x["kind"] == "sparse" for x in f.values())


# ------------------------------------------------------------------------- feed paths


def test_fixture_both_paths_and_tf_examples_agree(estimator_model):
    table = fixture_table()
    rows, out, bad = three_way(estimator_model, "serving_default", table)
    assert len(rows) == table.num_rows and not bad
    three_way(estimator_model, "regress", table)
    # the vocabulary asset and the bucketizer did their work: a row with hours=15 lands in
    # bucket 1, "green" has id 1, "purple" goes to the OOV bucket
    assert np.unique(out["dense"], axis=0).shape[0] > 50


def test_missing_required_feature_and_wrong_types_go_to_the_dead_letter(estimator_model):
    table = fixture_table(12)
    income = table.column("income").to_pylist()
    income[3] = None
    table = table.set_column(table.schema.get_field_index("income"), "income", pa.array(income))
    pair = table.column("pair").to_pylist()
    table = table.set_column(table.schema.get_field_index("pair"), "pair",
                             pa.array([p if i != 5 else [1.0, 2.0, 3.0] for i, p in
                                       enumerate(pair)], pa.list_(pa.float32())))
    rows, out, bad = three_way(estimator_model, "serving_default", table)
    assert set(bad) == {3, 5}
    assert "'income' is required" in bad[3] and "null" in bad[3]
    assert "needs 2 value(s)" in bad[5]
    assert 3 not in rows and len(rows) == 10

    no_income = table.drop(["income"])
    _, _, bad = three_way(estimator_model, "serving_default", no_income)
    assert len(bad) == 12 and "there is no column 'income'" in bad[0]

    wrong = table.set_column(table.schema.get_field_index("ids"), "ids",
                             pa.array([["a"]] * 12, pa.list_(pa.string())))
    _, _, bad = three_way(estimator_model, "serving_default", wrong)
    assert len(bad) == 12 and "feature 'ids' is int64" in bad[0]


def test_forced_direct_names_why_it_cannot(estimator_model):
    scorer = example_feeds.ExampleScorer(estimator_model, "serving_default", mode="direct")
    assert scorer.direct and scorer.path == "direct"
    with pytest.raises(ValueError):
        example_feeds.ExampleScorer(estimator_model, "serving_default", mode="fast")


@needs_corpus
@pytest.mark.parametrize("name", ["serving__saved_model_half_plus_two_cpu",
                                  "serving__saved_model_half_plus_two_mlmd",
                                  "serving__saved_model_half_plus_three"])
def test_half_plus_two_classify_and_regress_from_columns(name):
    table = pa.table({"x": pa.array([0.0, 1.0, None, 4.5, -2.0]),
                      "x2": pa.array([None, 3.0, 1.0, 2.0, None], pa.float32())})
    with beam_v1.load(str(REALMODELS / name)) as model:
        specs = savedmodel.select_meta_graph(savedmodel.read_saved_model(model.path), None)
        keys = list(savedmodel.signatures(specs))
        tested = 0
        for key in keys:
            if not examples.specs_of_signature(specs, key):
                continue
            rows, out, bad = three_way(model, key, table)
            assert list(bad) == [2] and "'x' is required" in bad[2]
            for value in out.values():
                assert len(value) == 4
            tested += 1
        assert tested >= 1
        if "regress_x_to_y" in model.signatures:
            _, out, _ = example_feeds.ExampleScorer(model, "regress_x_to_y").score(table)
            np.testing.assert_allclose(out["outputs"].ravel(), [2.0, 2.5, 4.25, 1.0])


@needs_corpus
def test_stfs_estimator_model_from_columns():
    with beam_v1.load(str(REALMODELS / "stfs__tensorflow_estimator_model")) as model:
        spec = example_feeds.ExampleScorer(model).spec
        b = spec.features["b"]
        table = pa.table({
            "a": pa.array([["x"], None, ["y", "z"], []], pa.list_(pa.string())),
            "b": pa.array([1.0, 2.0, 3.0, None] if b.dtype == "float32" else [1, 2, 3, None]),
        })
        rows, out, bad = three_way(model, "serving_default", table)
        assert list(bad) == [3] and len(rows) == 3


# ------------------------------------------------------------------------- taxi models


TAXI = [
    "tfx__chicago_taxi_estimator_tf1.12_1551382555",
    "tfx__chicago_taxi_estimator_tf1.13_1551303840",
    "tfx__chicago_taxi_estimator_tf1.15_1571697424",
    "tfx__benchmark_trained_saved_model_tf1.15",
]


@pytest.fixture(scope="module")
def taxi_records():
    (path,) = TAXI_DATA.glob("*.gz")
    records = list(tfrecord.read_records(str(path)))
    assert len(records) == 414
    return records


def retyped(table: pa.Table, spec: examples.ExampleSpec) -> pa.Table:
    """Columns cast to the model's feature dtype where this data holds whole-number floats
    for an int64 feature (the benchmark export parses trip_seconds and tracts as int64)."""
    for key, f in spec.features.items():
        if key in table.column_names and f.dtype == "int64" and pa.types.is_floating(
            table.schema.field(key).type
        ):
            col = table.column(key)
            table = table.set_column(table.schema.get_field_index(key), key,
                                     col.cast(pa.int64()))
    return table


@needs_corpus
@pytest.mark.parametrize("name", TAXI)
def test_taxi_models_from_columns_and_from_tfrecord_on_every_signature(name, taxi_records,
                                                                       tmp_path):
    decoded = tfrecord.decode_examples(taxi_records)
    assert decoded.num_rows == 414
    assert decoded.column("company").null_count == 142  # empty features decode as null
    # through Parquet, as a user holds them
    pq.write_table(decoded, tmp_path / "taxi.parquet")
    table = pq.read_table(tmp_path / "taxi.parquet")
    with beam_v1.load(str(REALMODELS / name)) as model:
        for key in model.signatures:
            exact = example_feeds.ExampleScorer(model, key, mode="serialize")
            data = retyped(table, exact.spec)
            rows, out, bad = three_way(model, key, data)
            assert not bad and len(rows) == 414
            if data is table:  # the TFRecord's own bytes score the same
                assert_same(out, exact.score_serialized(taxi_records))


# ------------------------------------------------------------------------- in a pipeline


@needs_corpus
def test_score_command_from_columns_both_feeds_and_from_tfrecord(taxi_records, tmp_path):
    """`beam-v1 score` on the DirectRunner: the taxi examples decoded to Parquet columns
    (direct feed, then --example-feed serialize) and the TFRecord file itself give the same
    outputs row for row."""
    from beam_v1.scoring.job import score

    model = str(REALMODELS / "tfx__chicago_taxi_estimator_tf1.13_1551303840")
    (record_file,) = TAXI_DATA.glob("*.gz")
    table = tfrecord.decode_examples(taxi_records).append_column(
        "row_id", pa.array(range(414), pa.int64())
    )
    pq.write_table(table, tmp_path / "in.parquet")
    results = {}
    for name, kwargs in {
        "direct": dict(example_feed="auto"),
        "serialize": dict(example_feed="serialize"),
        "tfrecord": dict(input_format="tfrecord"),
    }.items():
        source = str(record_file) if name == "tfrecord" else str(tmp_path / "in.parquet")
        summary = score(model, source, str(tmp_path / name), signature="predict",
                        progress=False, **kwargs)
        assert summary["rows_in"] == summary["rows_scored"] == 414, summary
        out = pq.read_table([str(p) for p in sorted(tmp_path.glob(f"{name}-0*.parquet"))])
        if "row_id" in out.column_names:
            out = out.sort_by("row_id").drop(["row_id"])
        results[name] = out.select(["logistic", "probabilities", "classes", "class_ids"])
    assert results["direct"].equals(results["serialize"])
    # the TFRecord route keeps the file's order within its one file
    assert results["direct"].equals(results["tfrecord"])


@needs_corpus
def test_score_command_dead_letters_rows_without_a_required_feature(tmp_path):
    from beam_v1.scoring.job import score

    model = str(REALMODELS / "serving__saved_model_half_plus_two_cpu")
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0]), "k": pa.array([1, 2, 3])}),
                   tmp_path / "in.parquet")
    summary = score(model, str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                    signature="regress_x_to_y", progress=False)
    assert (summary["rows_scored"], summary["rows_failed"]) == (2, 1)
    failed = pq.read_table([str(p) for p in tmp_path.glob("out-failed-*.parquet")])
    assert failed.column("k").to_pylist() == [2]
    assert "'x' is required" in failed.column("error")[0].as_py()
    scored = pq.read_table([str(p) for p in tmp_path.glob("out-0*.parquet")]).sort_by("k")
    np.testing.assert_allclose(np.ravel(scored.column("outputs").to_pylist()), [2.5, 3.5])


# ------------------------------------------------- Estimator specs nobody here wrote (issue 14)


def tf_truth(model_path: str, rows: list[dict], dtypes: dict[str, str]):
    """Each row as TensorFlow's own tf.train.Example run alone in a plain Session."""
    truth = TruthSession(model_path)
    try:
        return truth.rows(rows, dtypes)
    finally:
        truth.close()


def score_both_feeds(model_path: str, table: pa.Table, tmp_path: Path) -> dict:
    """`score` (ScoreParquet on the DirectRunner) on both feed paths:
    {feed: (scored table sorted by row_id, failed table sorted by row_id)}."""
    from beam_v1.scoring.job import score

    table = table.append_column("row_id", pa.array(range(table.num_rows), pa.int64()))
    pq.write_table(table, tmp_path / "in.parquet")
    results = {}
    for feed in ("auto", "serialize"):
        summary = score(model_path, str(tmp_path / "in.parquet"), str(tmp_path / feed),
                        example_feed=feed, progress=False)
        assert summary["rows_in"] == table.num_rows == (
            summary["rows_scored"] + summary["rows_failed"]), summary
        scored = [str(p) for p in sorted(tmp_path.glob(f"{feed}-0*.parquet"))]
        failed = [str(p) for p in sorted(tmp_path.glob(f"{feed}-failed-*.parquet"))]
        results[feed] = (pq.read_table(scored).sort_by("row_id"),
                         pq.read_table(failed).sort_by("row_id") if failed else None)
    return results


def test_required_numeric_features_score_on_both_feeds(tmp_path):
    """Issue 14, failure 1: FixedLenFeature([], int64) and ([4], float32) with no default (the
    plain Estimator export) crashed the direct feed (`np.asarray(None, int64)`)."""
    model = build_parse_model(
        str(tmp_path / "m"),
        {"a": v1.io.FixedLenFeature([], tf.int64), "x": v1.io.FixedLenFeature([4], tf.float32)},
        lambda f: {"y": tf.cast(f["a"], tf.float32) * 10.0 + tf.reduce_sum(f["x"], 1)})
    rows = [{"a": i if i != 2 else None, "x": [float(i), 0.5, -1.0, 2.0]} for i in range(6)]
    table = pa.table({"a": pa.array([r["a"] for r in rows], pa.int64()),
                      "x": pa.array([r["x"] for r in rows], pa.list_(pa.float32()))})
    truth = tf_truth(model, rows, {"a": "int64", "x": "float32"})
    assert truth[2][0] is None and "a" in truth[2][1]  # TF: required and absent
    for feed, (scored, failed) in score_both_feeds(model, table, tmp_path).items():
        assert scored.column("row_id").to_pylist() == [0, 1, 3, 4, 5], feed
        want = np.array([truth[r][0]["y"][0] for r in (0, 1, 3, 4, 5)])
        np.testing.assert_array_equal(np.asarray(scored.column("y").to_pylist()), want)
        assert failed.column("row_id").to_pylist() == [2]
        assert "'a' is required" in failed.column("error")[0].as_py()
        # SPEC section 4: feature columns are fed, so only the others are kept by default;
        # the dead letter keeps every column of the row
        assert scored.column_names == ["row_id", "y"], feed
        assert failed.column_names == ["a", "x", "row_id", "error"], feed


def test_feature_columns_are_kept_when_asked(tmp_path):
    from beam_v1.scoring.job import score

    model = build_parse_model(
        str(tmp_path / "m"), {"a": v1.io.FixedLenFeature([], tf.int64)},
        lambda f: {"y": tf.cast(f["a"], tf.float32) * 2.0})
    pq.write_table(pa.table({"a": [1, 2, 3], "id": ["p", "q", "r"]}), tmp_path / "in.parquet")
    score(model, str(tmp_path / "in.parquet"), str(tmp_path / "out"),
          keep_columns=["a", "id"], progress=False)
    (path,) = tmp_path.glob("out-0*.parquet")
    scored = pq.read_table(path).sort_by("id")
    assert scored.column_names == ["a", "id", "y"]
    assert scored.column("a").to_pylist() == [1, 2, 3]
    assert scored.column("y").to_pylist() == [2.0, 4.0, 6.0]


@pytest.mark.parametrize("v1_op", [False, True], ids=["ParseExampleV2", "ParseExample"])
def test_var_len_next_to_dense_scores_on_both_feeds(tmp_path, v1_op):
    """Issue 14, failure 2: VarLenFeature + dense, where the model reduces the sparse tensor
    (`sparse_reduce_sum`: an output of unknown rank), was refused before the run: "input
    'examples' (string [-1]) has no column 'examples'"."""
    model = build_parse_model(
        str(tmp_path / "m"),
        {"ids": v1.io.VarLenFeature(tf.int64),
         "x": v1.io.FixedLenFeature([2], tf.float32, default_value=[1.0, 2.0])},
        lambda f: {"y": tf.reduce_sum(f["x"], 1)
                   + tf.cast(v1.sparse_reduce_sum(f["ids"], 1), tf.float32)},
        v1_op=v1_op)
    info = beam_v1.inspect(model)
    spec = info.example_specs["serving_default"]["examples"]
    assert spec["features"]["ids"]["kind"] == "sparse"
    rows = [{"ids": [1, 2], "x": [0.5, 1.5]}, {"ids": None, "x": None}, {"ids": [], "x": None},
            {"ids": [7, 8, 9], "x": [3.0, 4.0]}]
    table = pa.table({"ids": pa.array([r["ids"] for r in rows], pa.list_(pa.int64())),
                      "x": pa.array([r["x"] for r in rows], pa.list_(pa.float32()))})
    truth = tf_truth(model, rows, {"ids": "int64", "x": "float32"})
    want = np.array([t[0]["y"][0] for t in truth])
    for feed, (scored, failed) in score_both_feeds(model, table, tmp_path).items():
        assert failed.num_rows == 0, failed.column("error").to_pylist()
        assert scored.column("row_id").to_pylist() == [0, 1, 2, 3], feed
        np.testing.assert_array_equal(np.ravel(scored.column("y").to_pylist()), want)


# ------------------------------------------------------------------ TFRecord checksums


def _write_tf_records(path, payloads):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for p in payloads:
            writer.write(p)


def test_read_records_verifies_checksums_written_by_tensorflow(tmp_path):
    payloads = [b"", b"a", bytes(range(256)) * 40, b"last"]
    _write_tf_records(tmp_path / "ok.tfrecord", payloads)
    assert list(tfrecord.read_records(str(tmp_path / "ok.tfrecord"))) == payloads
    gz = tmp_path / "ok.tfrecord.gz"
    with tf.io.TFRecordWriter(str(gz), options="GZIP") as writer:
        for p in payloads:
            writer.write(p)
    assert list(tfrecord.read_records(str(gz))) == payloads


@pytest.mark.parametrize("damage", ["data", "data_crc", "length", "length_crc"])
def test_corrupt_tfrecord_names_the_record_and_offset(tmp_path, damage):
    payloads = [b"first record", b"second record", b"third"]
    path = tmp_path / "bad.tfrecord"
    _write_tf_records(path, payloads)
    raw = bytearray(path.read_bytes())
    second = 16 + len(payloads[0])  # byte offset of the second record
    position = {
        "length": second + 1,
        "length_crc": second + 9,
        "data": second + 12 + 3,
        "data_crc": second + 12 + len(payloads[1]) + 1,
    }[damage]
    raw[position] ^= 0x40
    path.write_bytes(bytes(raw))
    reader = tfrecord.read_records(str(path))
    assert next(reader) == payloads[0]  # records before the damage are read
    which = "length" if damage.startswith("length") else "data"
    with pytest.raises(BeamV1Error, match=f"record 1 at byte {second}: corrupt TFRecord: the "
                                          f"{which}'s checksum does not match") as info:
        next(reader)
    assert str(path) in str(info.value)
    # TensorFlow's own reader refuses the same file
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
