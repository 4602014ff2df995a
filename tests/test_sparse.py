"""coo_sparse signature inputs fed from Parquet/Arrow columns (issue #5).

A list column (list, large_list, fixed_size_list) or a scalar column feeds a 2-D sparse input:
row r's values sit at [r, 0], [r, 1], ...; a null list or null scalar is a row with no value
(what TFX's VarLenFeature gives for a missing feature); dense_shape is [rows, longest row].
Every comparison is against a SparseTensorValue built row by row in Python here, fed to
`V1Model.predict` (and, for the fixture model, against the per-row sums computed by hand).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import beam_v1
from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.io import tfrecord
from beam_v1.model.metadata import SignatureInfo, TensorSpec
from beam_v1.scoring import columns, preflight
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.scorer import BatchScorer

v1 = tf.compat.v1
OUTPUTS = ["sp_count", "sp_sum", "sp_weighted", "word_hits", "y"]


# ------------------------------------------------------------------ references


def sparse_value(rows, dtype) -> v1.SparseTensorValue:
    """The SparseTensorValue of `rows` (each None or a list of values), built row by row."""
    indices, values = [], []
    for r, row in enumerate(rows):
        for c, value in enumerate(row or []):
            indices.append([r, c])
            values.append(value)
    width = max((len(row or []) for row in rows), default=0)
    return v1.SparseTensorValue(
        np.array(indices, np.int64).reshape(-1, 2),
        np.array(values, dtype=dtype),
        np.array([len(rows), width], np.int64),
    )


def as_rows(column) -> list:
    """A list or scalar column's cells as lists of values (a null cell: no value)."""
    return [
        None if cell is None else (cell if isinstance(cell, list) else [cell])
        for cell in column.to_pylist()
    ]


def reference(model, table: pa.Table) -> dict[str, np.ndarray]:
    """The fixture model run directly on `table`'s rows, sparse feeds built by hand."""
    feeds = {
        "sp": sparse_value(as_rows(table.column("sp")), np.float32),
        "words": sparse_value(as_rows(table.column("words")), object),
        "x": np.array(table.column("x").to_pylist(), np.float32),
    }
    return model.predict(feeds, outputs=OUTPUTS)


def by_hand(table: pa.Table) -> dict[str, np.ndarray]:
    """The fixture model's outputs computed in Python (a check on the model itself)."""
    sp, words = as_rows(table.column("sp")), as_rows(table.column("words"))
    x = table.column("x").to_pylist()
    out = {k: [] for k in OUTPUTS}
    for row, ws, xv in zip(sp, words, x):
        row = [np.float32(v) for v in row or []]
        total = np.float32(sum(row, np.float32(0)))
        out["sp_sum"].append(total)
        out["sp_weighted"].append(sum((v * (c + 1) for c, v in enumerate(row)), np.float32(0)))
        out["sp_count"].append(len(row))
        out["word_hits"].append(sum(w in ("x", b"x") for w in ws or []))
        out["y"].append(np.float32(xv) + total)
    return {k: np.array(v) for k, v in out.items()}


def assert_outputs(scored: pa.Table, want: dict[str, np.ndarray], rtol=1e-6):
    for key in OUTPUTS:
        got = np.array(scored.column(key).to_pylist())
        if want[key].dtype.kind in "iu":
            np.testing.assert_array_equal(got, want[key], err_msg=key)
        else:
            np.testing.assert_allclose(got, want[key], rtol=rtol, atol=1e-5, err_msg=key)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sparse_path(tmp_path_factory):
    import builders

    return builders.build_sparse_input(str(tmp_path_factory.mktemp("sparse") / "model"))


@pytest.fixture(scope="module")
def sparse_model(sparse_path):
    with beam_v1.load(sparse_path) as model:
        yield model


def good_table(n: int = 60, seed: int = 0) -> pa.Table:
    """Rows every input can take: null, empty and long lists, one value, many values."""
    rng = np.random.default_rng(seed)
    sp, words = [], []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            sp.append(None)
        elif kind == 1:
            sp.append([])
        else:
            sp.append([float(v) / 4 for v in rng.integers(-40, 40, int(rng.integers(1, 7)))])
        words.append(
            None if i % 7 == 0 else [str(w) for w in rng.choice(["x", "y", "zz"], i % 4)]
        )
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "sp": pa.array(sp, pa.list_(pa.float64())),  # float64 -> float32: a safe cast
        "words": pa.array(words, pa.list_(pa.string())),
        "x": pa.array(rng.normal(size=n), pa.float32()),
    })


def with_bad_rows(table: pa.Table) -> tuple[pa.Table, dict[int, str]]:
    """`table` with planted bad rows: {row: a word of the reason each must give}."""
    sp, words = table.column("sp").to_pylist(), table.column("words").to_pylist()
    sp[3] = [1.0, None, 2.0]  # a null inside a list
    words[8] = ["x", None]  # a null inside a string list
    sp[12] = [1e300]  # out of range for float32
    sp[17] = [2.0, math.nan]  # the model fails on it (CheckNumerics): bisected out
    sp[31] = [math.inf]
    table = table.set_column(1, "sp", pa.array(sp, pa.list_(pa.float64())))
    table = table.set_column(2, "words", pa.array(words, pa.list_(pa.string())))
    return table, {3: "null value inside a list", 8: "null value inside a list",
                   12: "out of range", 17: "model failed", 31: "model failed"}


def sparse_signature(width: int = -1, dtype: str = "float32") -> SignatureInfo:
    """A signature (no model) with one 2-D sparse input `s` of shape [-1, width]."""
    s = TensorSpec("s", dtype, (-1, width), "s/values:0", "coo_sparse",
                   {"values": "s/values:0", "indices": "s/indices:0",
                    "dense_shape": "s/shape:0"})
    return SignatureInfo("sig", "predict", {"s": s}, {"y": TensorSpec("y", "float32", (-1,),
                                                                      "y:0")})


def feed_of(table: pa.Table, sig: SignatureInfo) -> columns.Feeds:
    return columns.to_feeds(table, columns.make_plan(sig, table.schema))


def only_feed(feeds: columns.Feeds) -> tuple[np.ndarray, columns.SparseFeed]:
    """(rows, feed of input `s`) of feeds holding one group."""
    ((rows, group),) = feeds.groups
    return rows, group["s"]


def assert_same_sparse(feed, want: v1.SparseTensorValue):
    np.testing.assert_array_equal(feed.indices, want.indices)
    np.testing.assert_array_equal(feed.dense_shape, want.dense_shape)
    assert feed.values.dtype == want.values.dtype or want.values.dtype == object
    np.testing.assert_array_equal(feed.values, want.values)


# ------------------------------------------------------------------ to_feeds


COLUMN_KINDS = {
    "list": lambda rows: pa.array(rows, pa.list_(pa.float64())),
    "large_list": lambda rows: pa.array(rows, pa.large_list(pa.float32())),
    "list_int64": lambda rows: pa.array(
        [None if r is None else [int(v) for v in r] for r in rows], pa.list_(pa.int64())),
    "sliced": lambda rows: pa.array([[9.0]] * 3 + rows + [[8.0]], pa.list_(pa.float32()))
    .slice(3, len(rows)),
    "chunked": lambda rows: pa.chunked_array([
        pa.array(rows[:5], pa.list_(pa.float32())),
        pa.array([[7.0]] + rows[5:], pa.list_(pa.float32())).slice(1),
    ]),
}
ROWS = [[1.0, 2.0], None, [], [3.0], [4.0, 5.0, 6.0], None, [7.0], [], [8.0, 9.0]]


@pytest.mark.parametrize("kind", sorted(COLUMN_KINDS))
def test_list_columns_give_the_row_by_row_sparse_value(kind):
    column = COLUMN_KINDS[kind](ROWS)
    table = pa.table({"s": column})
    feeds = feed_of(table, sparse_signature())
    assert not len(feeds.bad_rows)
    rows, feed = only_feed(feeds)
    np.testing.assert_array_equal(rows, np.arange(len(ROWS)))
    assert isinstance(feed, columns.SparseFeed) and len(feed) == len(ROWS)
    assert_same_sparse(feed, sparse_value(ROWS, np.float32))
    assert feed.dense_shape.tolist() == [9, 3]


def test_fixed_size_list_scalar_and_null_columns():
    rows = [[1.0, 2.0], None, [3.0, 4.0]]
    table = pa.table({"s": pa.array(rows, pa.list_(pa.float32(), 2))})
    _, feed = only_feed(feed_of(table, sparse_signature()))
    assert_same_sparse(feed, sparse_value(rows, np.float32))
    # a scalar column: one value per row, a null is a row with no value
    table = pa.table({"s": pa.array([1.5, None, -2.0, None], pa.float64())})
    _, feed = only_feed(feed_of(table, sparse_signature()))
    assert_same_sparse(feed, sparse_value([[1.5], None, [-2.0], None], np.float32))
    assert feed.dense_shape.tolist() == [4, 1]
    # all rows without a value (a null column, or a typed column of nulls): [n, 0]
    for column in (pa.nulls(3), pa.nulls(3, pa.list_(pa.float32())), pa.nulls(3, pa.float32())):
        _, feed = only_feed(feed_of(pa.table({"s": column}), sparse_signature()))
        assert feed.indices.shape == (0, 2) and feed.values.dtype == np.float32
        assert feed.dense_shape.tolist() == [3, 0]


def test_string_and_dictionary_columns_feed_bytes_or_str_values():
    rows = [["a", "bb"], None, [], ["c"]]
    for column in (pa.array(rows, pa.list_(pa.string())), pa.array(rows, pa.list_(pa.binary())),
                   pa.array(rows, pa.list_(pa.dictionary(pa.int32(), pa.string())))):
        _, feed = only_feed(feed_of(pa.table({"s": column}), sparse_signature(dtype="string")))
        assert feed.values.dtype == object
        assert [v.decode() if isinstance(v, bytes) else v for v in feed.values] == ["a", "bb",
                                                                                   "c"]
        assert feed.indices.tolist() == [[0, 0], [0, 1], [3, 0]]
        assert feed.dense_shape.tolist() == [4, 2]


def test_bad_rows_are_set_aside_with_a_reason():
    sig = sparse_signature(dtype="int32")
    table = pa.table({"s": pa.array([[1, 2], [3, None], None, [2**40], [5]], pa.list_(
        pa.int64()))})
    feeds = feed_of(table, sig)
    assert feeds.bad_rows.tolist() == [1, 3]
    assert "holds a null value inside a list" in feeds.bad_reasons[0]
    assert "out of range" in feeds.bad_reasons[1]
    rows, feed = only_feed(feeds)
    assert rows.tolist() == [0, 2, 4]
    assert_same_sparse(feed, sparse_value([[1, 2], None, [5]], np.int32))


def test_fixed_width_sparse_input_holds_at_most_its_width():
    table = pa.table({"s": pa.array([[1.0], [1.0, 2.0, 3.0, 4.0], None, [1.0, 2.0, 3.0]],
                                    pa.list_(pa.float32()))})
    feeds = feed_of(table, sparse_signature(width=3))
    assert feeds.bad_rows.tolist() == [1]
    assert "more than 3 value(s)" in feeds.bad_reasons[0]
    rows, feed = only_feed(feeds)
    assert rows.tolist() == [0, 2, 3]
    assert feed.dense_shape.tolist() == [3, 3]  # the input's width, not the longest row
    assert feed[:1].dense_shape.tolist() == [1, 3]


def test_dense_inputs_alongside_still_group_rows_by_shape():
    x = TensorSpec("x", "float32", (-1, -1), "x:0")
    base = sparse_signature()
    sig = SignatureInfo("sig", "predict", {**base.inputs, "x": x}, base.outputs)
    table = pa.table({"s": pa.array(ROWS[:4], pa.list_(pa.float32())),
                      "x": pa.array([[1.0], [1.0, 2.0], [3.0], [4.0, 5.0]])})
    feeds = feed_of(table, sig)
    groups = {tuple(rows.tolist()): feed for rows, feed in feeds.groups}
    assert set(groups) == {(0, 2), (1, 3)}
    assert_same_sparse(groups[(0, 2)]["s"], sparse_value([ROWS[0], ROWS[2]], np.float32))
    assert_same_sparse(groups[(1, 3)]["s"], sparse_value([ROWS[1], ROWS[3]], np.float32))


# hypothesis: the feed of any row subset (slice, index array, mask) is the feed of the rows


cells = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.integers(-99, 99)), max_size=5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(cells, max_size=25), data=st.data())
def test_sparse_feed_of_any_rows_equals_the_feed_built_for_those_rows(rows, data):
    n = len(rows)
    cut = data.draw(st.integers(0, n))
    offset = data.draw(st.integers(0, 3))
    column = pa.chunked_array(
        [pa.array([[0]] * offset + rows[:cut], pa.list_(pa.int64())).slice(offset),
         pa.array(rows[cut:], pa.list_(pa.int64()))], pa.list_(pa.int64()))
    feeds = feed_of(pa.table({"s": column}), sparse_signature(dtype="int64"))
    bad = [i for i, r in enumerate(rows) if r is not None and None in r]
    assert feeds.bad_rows.tolist() == bad
    good = [i for i in range(n) if i not in bad]
    if not good:
        assert not feeds.groups
        return
    positions, feed = only_feed(feeds)
    assert positions.tolist() == good
    assert_same_sparse(feed, sparse_value([rows[i] for i in good], np.int64))
    start = data.draw(st.integers(0, len(good)))
    stop = data.draw(st.integers(start, len(good)))
    picks = data.draw(st.lists(st.integers(0, len(good) - 1), max_size=8))
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(good),
                                       max_size=len(good))), dtype=bool)
    for part, chosen in ((feed[start:stop], good[start:stop]),
                         (feed[np.array(picks, np.int64)], [good[p] for p in picks]),
                         (feed[mask], [g for g, m in zip(good, mask) if m])):
        assert len(part) == len(chosen)
        assert_same_sparse(part, sparse_value([rows[i] for i in chosen], np.int64))


# ------------------------------------------------------------------ plans and preflight


def test_plan_rejects_columns_a_sparse_input_cannot_take(tmp_path):
    sig = sparse_signature()
    bad = [
        pa.array([["a"]], pa.list_(pa.string())),
        pa.array([{"a": 1.0}], pa.struct([("a", pa.float32())])),
        pa.array([[[1.0]]], pa.list_(pa.list_(pa.float32()))),
    ]
    for column in bad:
        table = pa.table({"s": column})
        with pytest.raises(SchemaError) as e:
            columns.make_plan(sig, table.schema)
        message = str(e.value)
        assert "sparse input 's'" in message and "list column" in message, message
        assert "The input columns are: s (" in message
    rank3 = TensorSpec("s", "float32", (-1, -1, -1), "v:0", "coo_sparse",
                       sig.inputs["s"].components)
    with pytest.raises(SchemaError, match="only 2-D sparse inputs"):
        columns.make_plan(SignatureInfo("sig", "predict", {"s": rank3}, sig.outputs),
                          pa.schema([("s", pa.list_(pa.float32()))]))


def test_preflight_accepts_list_and_scalar_columns_and_names_what_is_there(sparse_path,
                                                                            tmp_path):
    ok = good_table(5).set_column(2, "words", pa.array(["x", None, "y", "x", None]))
    pq.write_table(ok, tmp_path / "ok.parquet")
    checked = preflight.check_scoring(sparse_path, str(tmp_path / "ok.parquet"))
    assert {p.key for p in checked.plan.inputs if p.sparse} == {"sp", "words"}
    assert sorted(checked.output_schema.names) == sorted(["id"] + OUTPUTS)

    wrong = ok.set_column(1, "sp", pa.array([["1"]] * 5, pa.list_(pa.string())))
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    with pytest.raises(BeamV1Error) as e:
        preflight.check_scoring(sparse_path, str(tmp_path / "wrong.parquet"))
    message = str(e.value)
    assert "\n" not in message
    assert "column 'sp' has type list<" in message
    assert "does not cast safely to sparse input 'sp' (float32)" in message
    assert "sp (list<" in message and "words (string)" in message

    missing = ok.drop(["words"])
    pq.write_table(missing, tmp_path / "missing.parquet")
    with pytest.raises(BeamV1Error, match="input 'words' .* has no column 'words' .*nulls"):
        preflight.check_scoring(sparse_path, str(tmp_path / "missing.parquet"))


def test_output_shape_probe_runs_on_sliced_sparse_feeds(sparse_model):
    """The probe for unknown-rank outputs (preflight and workers) scores a few rows: with a
    sparse input that is a slice of a SparseFeed, with its own dense_shape."""
    table = good_table(12)
    sig = sparse_model.signature()
    shapes, why = preflight.learn_output_shapes(sparse_model, sig, table.schema, table,
                                                ScoringOptions(), ["y", "sp_count"], probe_rows=5)
    assert why is None and shapes == {"y": (-1,), "sp_count": (-1,)}


# ------------------------------------------------------------------ scoring


def test_batch_scorer_equals_direct_predict_and_sets_bad_rows_aside(sparse_model):
    table, planted = with_bad_rows(good_table())
    plan = columns.make_plan(sparse_model.signature(), table.schema)
    result = BatchScorer(sparse_model, plan, table.schema).score(table)
    assert result.scored.num_rows + result.failed.num_rows == table.num_rows
    failed = dict(zip(result.failed.column("id").to_pylist(),
                      result.failed.column("error").to_pylist()))
    assert set(failed) == set(planted)
    for row, word in planted.items():
        assert word in failed[row], (row, failed[row])
    # the dead letter keeps every input column of the row as it came
    assert result.failed.column("sp").to_pylist()[0] == [1.0, None, 2.0]
    good = table.filter(pa.array([i not in planted for i in range(table.num_rows)]))
    assert result.scored.column("id").to_pylist() == good.column("id").to_pylist()
    want = reference(sparse_model, good)
    assert_outputs(result.scored, want)
    assert_outputs(result.scored, by_hand(good))
    assert result.session_runs > 1  # the NaN/inf rows were found by bisection


def test_fixed_batch_sparse_input_runs_in_padded_chunks(tmp_path):
    """A sparse input of shape [4,-1]: 10 rows run as 4 + 4 + 2, the last chunk padded with
    copies of its last row (re-derived indices), the padding dropped."""
    path = str(tmp_path / "fixed")
    graph = tf.Graph()
    with graph.as_default():
        sp = v1.sparse_placeholder(tf.float32, [4, None], name="sp")
        total = tf.reshape(tf.sparse.reduce_sum(sp, axis=1), [4], name="total")
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
                "serving_default": v1.saved_model.predict_signature_def({"sp": sp},
                                                                        {"total": total})})
            builder.save()
    rows = [[float(i)] * (i % 3) for i in range(10)]
    table = pa.table({"sp": pa.array(rows, pa.list_(pa.float32()))})
    with beam_v1.load(path) as model:
        plan = columns.make_plan(model.signature(), table.schema)
        assert plan.fixed_batch == 4
        result = BatchScorer(model, plan, table.schema).score(table)
    assert result.failed.num_rows == 0 and result.session_runs == 3
    assert result.scored.column("total").to_pylist() == [sum(r) for r in rows]


def test_direct_runner_pipeline_from_sliced_chunked_and_other_list_columns(sparse_path,
                                                                            sparse_model,
                                                                            tmp_path):
    from scoring_helpers import run_inference

    table, planted = with_bad_rows(good_table(90, seed=1))
    large = table.slice(60).cast(pa.schema([
        ("id", pa.int64()), ("sp", pa.large_list(pa.float64())),
        ("words", pa.large_list(pa.string())), ("x", pa.float32())]))
    tables = [
        table.slice(0, 25),  # offset 0
        pa.concat_tables([table.slice(25, 10), table.slice(35, 25)]),  # chunked, sliced
        large,  # large_list columns
    ]
    run = run_inference(tables, tmp_path, sparse_path, batch_size=16)
    assert run.rows_scored + run.rows_failed == table.num_rows
    assert run.counters["rows_in"] == table.num_rows
    failed = run.failed()
    assert failed.column("id").to_pylist() == sorted(planted)
    for row, error in zip(failed.column("id").to_pylist(), failed.column("error").to_pylist()):
        assert planted[row] in error, (row, error)
    scored = run.scored()
    good = table.filter(pa.array([i not in planted for i in range(table.num_rows)]))
    assert scored.column("id").to_pylist() == good.column("id").to_pylist()
    assert_outputs(scored, reference(sparse_model, good))


def test_score_parquet_with_row_groups_and_a_dead_letter(sparse_path, sparse_model, tmp_path):
    from beam_v1.scoring.job import score

    table, planted = with_bad_rows(good_table(120, seed=2))
    pq.write_table(table.slice(0, 70), tmp_path / "in-0.parquet", row_group_size=20)
    pq.write_table(table.slice(70), tmp_path / "in-1.parquet", row_group_size=7)
    summary = score(sparse_path, str(tmp_path / "in-*.parquet"), str(tmp_path / "out"),
                    batch_size=32, progress=False)
    assert summary["rows_in"] == 120
    assert (summary["rows_scored"], summary["rows_failed"]) == (120 - len(planted),
                                                                len(planted))
    scored = pq.read_table([str(p) for p in sorted(tmp_path.glob("out-0*.parquet"))])
    scored = scored.sort_by("id")
    failed = pq.read_table([str(p) for p in tmp_path.glob("out-failed-*.parquet")]).sort_by("id")
    assert failed.column("id").to_pylist() == sorted(planted)
    for row, error in zip(failed.column("id").to_pylist(), failed.column("error").to_pylist()):
        assert planted[row] in error
    assert scored.schema.field("sp_count").type == pa.int64()
    assert scored.schema.field("y").type == pa.float32()
    good = table.filter(pa.array([i not in planted for i in range(table.num_rows)]))
    assert scored.column("id").to_pylist() == good.column("id").to_pylist()
    assert_outputs(scored, reference(sparse_model, good))


def test_scalar_string_column_through_the_pipeline(sparse_path, sparse_model, tmp_path):
    from beam_v1.scoring.job import score

    table = good_table(30, seed=3)
    words = pa.array([None if i % 3 == 0 else ("x" if i % 2 else "y") for i in range(30)],
                     pa.string())
    table = table.set_column(2, "words", words)
    pq.write_table(table, tmp_path / "in.parquet")
    summary = score(sparse_path, str(tmp_path / "in.parquet"), str(tmp_path / "out"),
                    progress=False)
    assert (summary["rows_scored"], summary["rows_failed"]) == (30, 0)
    scored = pq.read_table([str(p) for p in tmp_path.glob("out-0*.parquet")]).sort_by("id")
    assert_outputs(scored, reference(sparse_model, table))
    assert scored.column("word_hits").to_pylist() == [
        0 if i % 3 == 0 else int(i % 2 == 1) for i in range(30)]


# ------------------------------------------------------------------ the real TFX transform


def taxi_transform_reference(model, records: list[bytes]) -> dict[str, np.ndarray]:
    """transform_signature run on SparseTensorValues built example by example from the
    tf.Example protos (what TFX's VarLenFeature parsing gives), not from any column."""
    examples = [tf.train.Example.FromString(r) for r in records]
    sig = model.signature("transform_signature")
    feeds = {}
    for key, spec in sig.inputs.items():
        rows = []
        for example in examples:
            feature = example.features.feature.get(key)
            kind = feature.WhichOneof("kind") if feature is not None else None
            rows.append(list(getattr(feature, kind).value) if kind else None)
        dtype = {"float32": np.float32, "int64": np.int64, "string": object}[spec.dtype]
        feeds[key] = sparse_value(rows, dtype)
    return model.predict(feeds, signature="transform_signature")


def assert_taxi_outputs(table: pa.Table, want: dict[str, np.ndarray]):
    for key, value in want.items():
        got = table.column(key).to_pylist()
        assert len(got) == len(value), key
        if value.dtype == object:
            assert got == value.tolist(), key
        else:
            np.testing.assert_array_equal(np.array(got, dtype=value.dtype), value, err_msg=key)


@pytest.fixture(scope="module")
def taxi():
    from test_examples import REALMODELS, TAXI_DATA

    if not REALMODELS.is_dir():
        pytest.skip("real-model corpus absent")
    (record_file,) = TAXI_DATA.glob("*.gz")
    records = list(tfrecord.read_records(str(record_file)))
    assert len(records) == 414
    path = str(REALMODELS / "tfx__transform_fn_tf1.15")
    with beam_v1.load(path, tags=["transform"], signature="transform_signature") as model:
        yield path, model, records, taxi_transform_reference(model, records)


def taxi_columns(records: list[bytes], as_lists: bool) -> pa.Table:
    table = tfrecord.decode_examples(records, as_lists=as_lists)
    # no example has pickup_census_tract: a column of nulls, the feature absent everywhere
    leaf = pa.list_(pa.binary()) if as_lists else pa.binary()
    return table.append_column("pickup_census_tract", pa.nulls(len(records), leaf))


def test_transform_fn_scored_by_the_score_command_equals_sparse_predict(taxi, tmp_path):
    from beam_v1.scoring.job import score

    path, model, records, want = taxi
    table = taxi_columns(records, as_lists=False)  # scalar columns, nulls where absent
    assert table.column("company").null_count == 142
    assert all(not pa.types.is_list(t) for t in table.schema.types)
    table = table.append_column("row_id", pa.array(range(414), pa.int64()))
    pq.write_table(table, tmp_path / "taxi.parquet", row_group_size=100)
    summary = score(path, str(tmp_path / "taxi.parquet"), str(tmp_path / "out"),
                    tags=["transform"], signature="transform_signature", batch_size=64,
                    progress=False)
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_failed"]) == (414, 414, 0)
    scored = pq.read_table([str(p) for p in tmp_path.glob("out-0*.parquet")]).sort_by("row_id")
    assert scored.column_names == ["row_id"] + sorted(want)
    assert scored.schema.field("pickup_census_tract_xf").type == pa.binary()
    assert_taxi_outputs(scored, want)
    assert len(set(scored.column("company_xf").to_pylist())) > 3  # the vocabulary did work


def test_transform_fn_from_list_columns_sliced_and_chunked(taxi):
    path, model, records, want = taxi
    table = taxi_columns(records, as_lists=True)
    assert all(pa.types.is_list(t) for t in table.schema.types)
    chunked = pa.concat_tables([table.slice(0, 150), table.slice(150)])
    plan = columns.make_plan(model.signature(), chunked.schema)
    result = BatchScorer(model, plan, chunked.schema).score(chunked)
    assert result.failed.num_rows == 0
    assert_taxi_outputs(result.scored, want)
    # a slice of the rows scores as those rows of the whole
    part = BatchScorer(model, plan, table.schema).score(table.slice(100, 57)).scored
    assert_taxi_outputs(part, {k: v[100:157] for k, v in want.items()})
