"""`beam_v1.scoring.columns`: Arrow columns <-> numpy feeds and fetches (SPEC §4, §5), over
real Arrow arrays, plus a few conversions fed to real TF1 sessions (tests/builders.py models).

Signatures for the pure conversion tests are built directly from `SignatureInfo`/`TensorSpec`
(the same objects `beam_v1.model.metadata` reads from a SavedModel); the session tests read them
from the built models and compare with TensorFlow's own TF1 loader.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from scoring_helpers import tf_reference

import beam_v1
from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.model import metadata as savedmodel
from beam_v1.model.metadata import SignatureInfo, TensorSpec
from beam_v1.scoring import columns

v1 = tf.compat.v1


# ------------------------------------------------------------------ helpers


def spec(key, dtype, shape):
    return TensorSpec(key=key, dtype=dtype, shape=shape, tensor_name=f"{key}:0")


def sig(inputs, outputs=None, key="serving_default"):
    """inputs/outputs: {key: (dtype, shape)}."""
    outputs = outputs if outputs is not None else {"y": ("float32", (-1,))}
    return SignatureInfo(
        key=key,
        method_name="tensorflow/serving/predict",
        inputs={k: spec(k, d, s) for k, (d, s) in inputs.items()},
        outputs={k: spec(k, d, s) for k, (d, s) in outputs.items()},
    )


def feeds_for(signature, table, **plan_kwargs):
    plan = columns.make_plan(signature, table.schema, **plan_kwargs)
    return plan, columns.to_feeds(table, plan)


def only_group(feeds):
    assert len(feeds.groups) == 1, feeds.groups
    return feeds.groups[0]


def bad(feeds):
    return dict(zip(feeds.bad_rows.tolist(), feeds.bad_reasons))


def model_signature(path, key="serving_default"):
    meta_graph = savedmodel.select_meta_graph(savedmodel.read_saved_model(path), None)
    return savedmodel.signatures(meta_graph)[key]


def fsl(values, k, mask=None):
    values = pa.array(np.asarray(values))
    return pa.FixedSizeListArray.from_arrays(values, k, mask=mask)


# ------------------------------------------------------- scalar columns


def test_scalar_float32_column_feeds_vector_zero_copy():
    values = np.array([1.5, -2.0, 3.25, 0.0], dtype=np.float32)
    arrow = pa.array(values)
    table = pa.table({"x": arrow, "id": [1, 2, 3, 4]})
    plan, feeds = feeds_for(sig({"x": ("float32", (-1,))}), table)
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, np.arange(4))
    assert feed["x"].dtype == np.float32 and feed["x"].shape == (4,)
    np.testing.assert_array_equal(feed["x"], values)
    assert np.shares_memory(feed["x"], arrow.to_numpy())
    assert feeds.bad_rows.size == 0 and feeds.bad_reasons == []
    assert plan.keep_columns == ("id",)
    assert plan.inputs[0].depth == 0


def test_scalar_int64_column_feeds_float32_column_vector():
    table = pa.table({"x": pa.array([1, -2, 3], pa.int64())})
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 1))}), table)
    _, feed = only_group(feeds)
    assert feed["x"].dtype == np.float32
    assert feed["x"].shape == (3, 1)
    np.testing.assert_array_equal(feed["x"], [[1.0], [-2.0], [3.0]])


def test_scalar_column_with_null_feeds_column_vector_minus_the_null():
    table = pa.table({"x": pa.array([1.0, None, 3.0], pa.float64())})
    _, feeds = feeds_for(sig({"x": ("float64", (-1, 1))}), table)
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(feed["x"], [[1.0], [3.0]])
    assert bad(feeds) == {1: "column 'x' is null (input 'x' needs a value)"}


def test_bool_and_small_int_columns():
    table = pa.table(
        {"flag": pa.array([True, False, True]), "small": pa.array([1, -2, 3], pa.int8())}
    )
    signature = sig({"flag": ("bool", (-1,)), "small": ("int32", (-1,))})
    _, feeds = feeds_for(signature, table)
    _, feed = only_group(feeds)
    assert feed["flag"].dtype == np.bool_
    np.testing.assert_array_equal(feed["flag"], [True, False, True])
    assert feed["small"].dtype == np.int32
    np.testing.assert_array_equal(feed["small"], [1, -2, 3])


# ---------------------------------------------------------- list columns


def test_fixed_size_list_float32_is_zero_copy():
    flat = np.arange(15, dtype=np.float32) / 4
    arrow = fsl(flat, 3)
    table = pa.table({"x": arrow})
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 3))}), table)
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, np.arange(5))
    assert feed["x"].shape == (5, 3) and feed["x"].dtype == np.float32
    np.testing.assert_array_equal(feed["x"], flat.reshape(5, 3))
    values_buffer = arrow.values.buffers()[1]
    assert feed["x"].ctypes.data == values_buffer.address
    assert np.shares_memory(feed["x"], arrow.values.to_numpy())


def test_fixed_size_list_of_single_chunk_table_is_zero_copy():
    flat = np.arange(8, dtype=np.float32)
    arrow = fsl(flat, 4)
    table = pa.Table.from_batches([pa.record_batch({"x": arrow})])
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 4))}), table)
    _, feed = only_group(feeds)
    assert np.shares_memory(feed["x"], arrow.values.to_numpy())


@pytest.mark.parametrize("list_type", [pa.list_, pa.large_list])
def test_list_column_with_all_k_items_feeds_minus1_k(list_type):
    rows = [[1, 2, 3], [4, 5, 6], [-7, 8, 9], [0, 0, 0]]
    table = pa.table({"x": pa.array(rows, list_type(pa.int64()))})
    _, feeds = feeds_for(sig({"x": ("float64", (-1, 3))}), table)
    _, feed = only_group(feeds)
    assert feed["x"].dtype == np.float64 and feed["x"].shape == (4, 3)
    np.testing.assert_array_equal(feed["x"], np.array(rows, dtype=np.float64))


def test_single_item_lists_feed_minus1_1():
    table = pa.table({"x": pa.array([[1.0], [2.0]], pa.list_(pa.float32()))})
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 1))}), table)
    _, feed = only_group(feeds)
    assert feed["x"].shape == (2, 1)
    np.testing.assert_array_equal(feed["x"], [[1.0], [2.0]])


@pytest.mark.parametrize("kind", ["list", "fixed_size_list"])
def test_nested_lists_feed_rank_3(kind):
    data = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    if kind == "list":
        arrow = pa.array(data.tolist(), pa.list_(pa.list_(pa.float64())))
    else:
        arrow = pa.FixedSizeListArray.from_arrays(fsl(data.ravel(), 3), 2)
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 2, 3))}), pa.table({"x": arrow}))
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, np.arange(4))
    assert feed["x"].shape == (4, 2, 3) and feed["x"].dtype == np.float32
    np.testing.assert_array_equal(feed["x"], data)


def test_variable_length_lists_form_one_group_per_length_and_keep_every_row():
    rows = [[1.0], [1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [], [7.0, 8.0]]
    table = pa.table({"x": pa.array(rows, pa.list_(pa.float32()))})
    _, feeds = feeds_for(sig({"x": ("float32", (-1, -1))}), table)
    assert feeds.bad_rows.size == 0
    by_length = {}
    for group_rows, feed in feeds.groups:
        assert feed["x"].ndim == 2 and feed["x"].dtype == np.float32
        assert feed["x"].shape[0] == len(group_rows)
        for position, row in enumerate(group_rows.tolist()):
            np.testing.assert_array_equal(feed["x"][position], rows[row])
        by_length[feed["x"].shape[1]] = sorted(group_rows.tolist())
    assert by_length == {0: [4], 1: [0, 2], 2: [1, 5], 3: [3]}
    all_rows = np.concatenate([g[0] for g in feeds.groups])
    assert sorted(all_rows.tolist()) == list(range(len(rows)))


def test_variable_length_nested_lists_group_by_both_dims():
    rows = [[[1, 2], [3, 4]], [[1, 2, 3]], [[5, 6], [7, 8]], [[1, 2], [3]]]
    table = pa.table({"x": pa.array(rows, pa.list_(pa.list_(pa.int32())))})
    _, feeds = feeds_for(sig({"x": ("int64", (-1, -1, -1))}), table)
    shapes = {tuple(g[0].tolist()): g[1]["x"].shape for g in feeds.groups}
    assert shapes == {(0, 2): (2, 2, 2), (1,): (1, 1, 3)}
    assert bad(feeds) == {3: "column 'x' is a ragged nested list"}


def test_list_of_strings_feeds_string_matrix():
    rows = [["a", "b"], ["c", "d"]]
    _, feeds = feeds_for(
        sig({"w": ("string", (-1, 2))}), pa.table({"w": pa.array(rows, pa.list_(pa.string()))})
    )
    _, feed = only_group(feeds)
    assert feed["w"].dtype == object and feed["w"].shape == (2, 2)
    assert feed["w"].tolist() == rows


# ------------------------------------------------------------- bad rows

BAD_ROW_CASES = {
    "null scalar": (
        ("float32", (-1,)),
        pa.array([1.0, None, 3.0, 4.0], pa.float32()),
        {1: "column 'x' is null (input 'x' needs a value)"},
        [1.0, 3.0, 4.0],
    ),
    "null list row": (
        ("float32", (-1, 2)),
        pa.array([[1, 2], None, [3, 4], [5, 6]], pa.list_(pa.float32())),
        {1: "column 'x' is null (input 'x' needs a value)"},
        [[1, 2], [3, 4], [5, 6]],
    ),
    "null fixed_size_list row": (
        ("float32", (-1, 2)),
        fsl(np.arange(8, dtype=np.float32), 2, mask=pa.array([False, False, True, False])),
        {2: "column 'x' is null (input 'x' needs a value)"},
        [[0, 1], [2, 3], [6, 7]],
    ),
    "null inside a list": (
        ("float32", (-1, 2)),
        pa.array([[1, 2], [3, None], [5, 6]], pa.list_(pa.float32())),
        {1: "column 'x' holds a null value"},
        [[1, 2], [5, 6]],
    ),
    "wrong list length": (
        ("float32", (-1, 3)),
        pa.array([[1, 2, 3], [1, 2], [4, 5, 6], [1, 2, 3, 4]], pa.list_(pa.float32())),
        {
            1: "column 'x' has a list of shape [2] where input 'x' needs [3] (shape [-1,3])",
            3: "column 'x' has a list of shape [4] where input 'x' needs [3] (shape [-1,3])",
        },
        [[1, 2, 3], [4, 5, 6]],
    ),
    "ragged nested list": (
        ("float32", (-1, 2, 2)),
        pa.array(
            [[[1, 2], [3, 4]], [[1, 2], [3]], [[5, 6], [7, 8]]], pa.list_(pa.list_(pa.float32()))
        ),
        {1: "column 'x' is a ragged nested list"},
        [[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
    ),
    "nested list of the wrong outer length": (
        ("float32", (-1, 2, 2)),
        pa.array([[[1, 2], [3, 4]], [[1, 2]]], pa.list_(pa.list_(pa.float32()))),
        {1: "column 'x' has a list of shape [1x2] where input 'x' needs [2x2] (shape [-1,2,2])"},
        [[[1, 2], [3, 4]]],
    ),
    "int64 out of int32 range": (
        ("int32", (-1,)),
        pa.array([1, 2**31, -5, -(2**31) - 1, 2**31 - 1], pa.int64()),
        {
            1: "a value is out of range for the input's dtype: 'x' (int32)",
            3: "a value is out of range for the input's dtype: 'x' (int32)",
        },
        [1, -5, 2**31 - 1],
    ),
    "int64 list item out of int32 range": (
        ("int32", (-1, 2)),
        pa.array([[1, 2], [3, 2**40], [5, 6]], pa.list_(pa.int64())),
        {1: "a value is out of range for the input's dtype: 'x' (int32)"},
        [[1, 2], [5, 6]],
    ),
    "float64 out of float32 range": (
        ("float32", (-1,)),
        pa.array([1.0, 1e300, float("inf"), -2.5], pa.float64()),
        {1: "a value is out of range for the input's dtype: 'x' (float32)"},
        [1.0, np.inf, -2.5],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROW_CASES))
def test_bad_rows_are_set_aside_with_their_reason(case):
    (dtype, shape), arrow, expected_bad, good_values = BAD_ROW_CASES[case]
    n = len(arrow)
    _, feeds = feeds_for(sig({"x": (dtype, shape)}), pa.table({"x": arrow}))
    assert bad(feeds) == expected_bad
    rows, feed = only_group(feeds)
    assert sorted(rows.tolist()) == sorted(set(range(n)) - set(expected_bad))
    want = np.asarray(good_values, dtype=columns.tensor_numpy_dtype(spec("x", dtype, shape)))
    np.testing.assert_array_equal(feed["x"], want)
    assert feed["x"].dtype == want.dtype


def test_bad_row_in_one_input_drops_the_row_from_every_feed():
    table = pa.table(
        {
            "a": pa.array([[1, 2, 3], [4, 5, 6], [7, 8], [1, 1, 1]], pa.list_(pa.float32())),
            "b": pa.array([10, None, 30, 40], pa.int64()),
            "c": pa.array([0.5, 1.5, 2.5, 3.5]),
        }
    )
    signature = sig({"a": ("float32", (-1, 3)), "b": ("int64", (-1,)), "c": ("float64", (-1, 1))})
    _, feeds = feeds_for(signature, table)
    assert bad(feeds) == {
        1: "column 'b' is null (input 'b' needs a value)",
        2: "column 'a' has a list of shape [2] where input 'a' needs [3] (shape [-1,3])",
    }
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, [0, 3])
    np.testing.assert_array_equal(feed["a"], [[1, 2, 3], [1, 1, 1]])
    np.testing.assert_array_equal(feed["b"], [10, 40])
    np.testing.assert_array_equal(feed["c"], [[0.5], [3.5]])


def test_every_row_is_either_fed_or_bad():
    rng = np.random.RandomState(7)
    rows = []
    for i in range(300):
        r = rng.randint(5)
        if r == 0:
            rows.append(None)
        elif r == 1:
            rows.append([1.0, None, 2.0])
        elif r == 2:
            rows.append([float(i)] * rng.randint(1, 5))
        else:
            rows.append([float(i), 1.0, 2.0])
    table = pa.table({"x": pa.array(rows, pa.list_(pa.float32())), "id": np.arange(300)})
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 3))}), table)
    fed = np.concatenate([g[0] for g in feeds.groups])
    assert len(set(fed.tolist()) | set(feeds.bad_rows.tolist())) == 300
    assert not set(fed.tolist()) & set(feeds.bad_rows.tolist())
    for row in feeds.bad_rows.tolist():
        assert rows[row] is None or None in rows[row] or len(rows[row]) != 3
    for group_rows, feed in feeds.groups:
        np.testing.assert_array_equal(feed["x"], np.array([rows[r] for r in group_rows]))


# ------------------------------------------------- slices and chunked tables


def test_sliced_list_array_uses_the_slice_offsets():
    full = pa.array(
        [[0, 1, 2], [9], None, [3, 4, 5], [6, None, 8], [7, 7, 7], [1, 1, 1]],
        pa.list_(pa.float64()),
    )
    sliced = full.slice(1, 5)
    assert sliced.offset == 1
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 3))}), pa.table({"x": sliced}))
    assert bad(feeds) == {
        0: "column 'x' has a list of shape [1] where input 'x' needs [3] (shape [-1,3])",
        1: "column 'x' is null (input 'x' needs a value)",
        3: "column 'x' holds a null value",
    }
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, [2, 4])
    np.testing.assert_array_equal(feed["x"], [[3, 4, 5], [7, 7, 7]])


def test_sliced_fixed_size_list_and_scalar_arrays():
    flat = np.arange(30, dtype=np.float32)
    vectors = fsl(flat, 3).slice(2, 5)
    scalars = pa.array(np.arange(10, dtype=np.int64)).slice(2, 5)
    assert vectors.offset == 2 and scalars.offset == 2
    table = pa.table({"v": vectors, "s": scalars})
    _, feeds = feeds_for(sig({"v": ("float32", (-1, 3)), "s": ("int64", (-1,))}), table)
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, np.arange(5))
    np.testing.assert_array_equal(feed["v"], flat.reshape(10, 3)[2:7])
    np.testing.assert_array_equal(feed["s"], np.arange(2, 7))


def test_sliced_scalar_array_with_nulls():
    arrow = pa.array([1.0, None, 2.0, 3.0, None, 4.0]).slice(1, 4)  # None, 2, 3, None
    _, feeds = feeds_for(sig({"x": ("float64", (-1,))}), pa.table({"x": arrow}))
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, [1, 2])
    np.testing.assert_array_equal(feed["x"], [2.0, 3.0])
    assert sorted(bad(feeds)) == [0, 3]


def test_chunked_table_row_indices_are_global():
    first = pa.record_batch({"x": pa.array([[1, 2], [3, 4]], pa.list_(pa.float32())), "id": [0, 1]})
    second = pa.record_batch(
        {"x": pa.array([[5, 6], [7], None, [9, 10]], pa.list_(pa.float32())), "id": [2, 3, 4, 5]}
    )
    table = pa.Table.from_batches([first, second])
    assert table.column("x").num_chunks == 2
    _, feeds = feeds_for(sig({"x": ("float32", (-1, 2))}), table)
    assert sorted(bad(feeds)) == [3, 4]
    rows, feed = only_group(feeds)
    np.testing.assert_array_equal(rows, [0, 1, 2, 5])
    np.testing.assert_array_equal(feed["x"], [[1, 2], [3, 4], [5, 6], [9, 10]])


def test_chunked_table_sliced_across_chunks():
    batches = [
        pa.record_batch({"x": pa.array(np.arange(i * 4, i * 4 + 4, dtype=np.float32))})
        for i in range(3)
    ]
    table = pa.Table.from_batches(batches).slice(3, 6)  # rows 3..8 across three chunks
    _, feeds = feeds_for(sig({"x": ("float32", (-1,))}), table)
    _, feed = only_group(feeds)
    np.testing.assert_array_equal(feed["x"], np.arange(3, 9, dtype=np.float32))


def test_record_batch_is_accepted():
    batch = pa.record_batch({"x": pa.array([1.0, 2.0], pa.float32())})
    plan = columns.make_plan(sig({"x": ("float32", (-1,))}), batch.schema)
    rows, feed = only_group(columns.to_feeds(batch, plan))
    np.testing.assert_array_equal(feed["x"], [1.0, 2.0])


# ----------------------------------------------------------------- strings


@pytest.mark.parametrize(
    "arrow, expected",
    [
        (pa.array(["apple", "dé", ""]), ["apple", "dé", ""]),
        (pa.array(["apple", "b"], pa.large_string()), ["apple", "b"]),
        (pa.array([b"\x00\xff", b"bin"], pa.binary()), [b"\x00\xff", b"bin"]),
        (pa.array([b"ab", b"cd"], pa.large_binary()), [b"ab", b"cd"]),
        (pa.array([b"ab", b"cd"], pa.binary(2)), [b"ab", b"cd"]),
        (pa.array(["x", "y", "x"]).dictionary_encode(), ["x", "y", "x"]),
    ],
    ids=["string", "large_string", "binary", "large_binary", "fixed_binary", "dictionary"],
)
def test_string_and_binary_columns_feed_tf_string(arrow, expected):
    _, feeds = feeds_for(sig({"w": ("string", (-1,))}), pa.table({"w": arrow}))
    _, feed = only_group(feeds)
    assert feed["w"].dtype == object and feed["w"].shape == (len(expected),)
    assert feed["w"].tolist() == expected


def test_string_columns_feed_a_real_lookup_table(built_models):
    path = built_models["string_lookup"]
    table = pa.table(
        {
            "word": pa.array(["apple", "zzz", None, "date", "banana"]),
            "raw": pa.array([b"cherry", b"apple", b"x", b"banana", b"date"]),
        }
    )
    signature = model_signature(path)
    with beam_v1.load(path) as model:
        for column in ("word", "raw"):
            plan, feeds = feeds_for(
                signature, table, column_map={column: "word"} if column != "word" else None
            )
            for rows, feed in feeds.groups:
                got = model.predict(feed)
                want = tf_reference(path, {"word": [table[column][r].as_py() for r in rows]})
                np.testing.assert_array_equal(got["id"], want["id"])
                np.testing.assert_allclose(got["score"], want["score"])
        _, feeds = feeds_for(signature, table.select(["word"]))
        rows, feed = only_group(feeds)
        np.testing.assert_array_equal(model.predict(feed)["id"], [0, -1, 3, 1])
        assert bad(feeds) == {2: "column 'word' is null (input 'word' needs a value)"}


# ------------------------------------------------ feeds into real sessions


def test_multi_input_feeds_match_tf_loader(built_models):
    path = built_models["multi_input"]
    rng = np.random.RandomState(3)
    a = rng.normal(size=(6, 3)).astype(np.float32)
    table = pa.table(
        {
            "a": fsl(a.ravel(), 3),
            "b": pa.array([1, 2, 3, 4, 5, 6], pa.int32()),  # int32 -> int64: safe
            "c": pa.array(rng.normal(size=6)),  # scalar column -> [-1,1]
            "id": pa.array(list("abcdef")),
        }
    )
    plan, feeds = feeds_for(model_signature(path), table)
    assert plan.keep_columns == ("id",)
    assert plan.output_keys == ("a_scaled", "total")
    rows, feed = only_group(feeds)
    assert feed["b"].dtype == np.int64 and feed["c"].shape == (6, 1)
    with beam_v1.load(path) as model:
        got = model.predict(feed)
    want = tf_reference(
        path,
        {
            "a": a,
            "b": np.arange(1, 7, dtype=np.int64),
            "c": table["c"].to_numpy().reshape(6, 1),
        },
    )
    np.testing.assert_allclose(got["total"], want["total"], rtol=1e-6)
    np.testing.assert_allclose(got["a_scaled"], want["a_scaled"], rtol=1e-6)
    out = columns.from_fetches(got, plan, len(rows))
    assert [o.type for o in out] == [pa.list_(pa.float32(), 3), pa.float32()]
    np.testing.assert_allclose(np.array(out[0].to_pylist()), want["a_scaled"], rtol=1e-6)


def test_variable_length_groups_run_in_a_real_session(built_models):
    path = built_models["variable_len"]
    rows = [[1.0, 2.0], [3.0], [4.0, 5.0, 6.0], [7.0, 8.0], []]
    table = pa.table({"x": pa.array(rows, pa.list_(pa.float32()))})
    plan, feeds = feeds_for(model_signature(path), table)
    assert len(feeds.groups) == 4
    totals = {}
    counts = {}
    with beam_v1.load(path) as model:
        for group_rows, feed in feeds.groups:
            got = model.predict(feed)
            for position, row in enumerate(group_rows.tolist()):
                totals[row] = float(got["total"][position])
                counts[row] = int(got["count"][position])
    assert totals == {i: float(sum(r)) for i, r in enumerate(rows)}
    assert counts == {i: len(r) for i, r in enumerate(rows)}


# ------------------------------------------------------------ make_plan


def test_plan_defaults_keep_columns_in_schema_order_and_sorted_outputs():
    schema = pa.schema([("z", pa.int64()), ("x", pa.float32()), ("a", pa.string())])
    signature = sig({"x": ("float32", (-1,))}, {"y": ("float32", (-1,)), "b": ("int64", (-1,))})
    plan = columns.make_plan(signature, schema)
    assert plan.keep_columns == ("z", "a")
    assert plan.output_keys == ("y", "b")
    assert plan.output_schema(schema).names == ["z", "a", "y", "b"]
    assert plan.output_schema(schema).field("b").type == pa.int64()
    assert plan.fed_columns == ("x",)
    assert plan.fixed_batch is None and plan.row_by_row is False


def test_plan_keep_columns_outputs_and_column_map():
    schema = pa.schema([("feat", pa.float32()), ("id", pa.int64()), ("name", pa.string())])
    signature = sig({"x": ("float32", (-1,))}, {"y": ("float32", (-1,)), "b": ("int64", (-1,))})
    plan = columns.make_plan(
        signature, schema, column_map={"feat": "x"}, keep_columns=["name", "id"], outputs=["b"]
    )
    assert [(i.key, i.column) for i in plan.inputs] == [("x", "feat")]
    assert plan.output_schema(schema).names == ["name", "id", "b"]
    table = pa.table({"feat": [1.0, 2.0], "id": [1, 2], "name": ["a", "b"]}, schema=schema)
    _, feed = only_group(columns.to_feeds(table, plan))
    assert list(feed) == ["x"]
    np.testing.assert_array_equal(feed["x"], [1.0, 2.0])


def test_plan_fixed_batch_and_scalar_input():
    plan = columns.make_plan(
        sig({"x": ("float32", (4, 3))}, {"y": ("float32", (4, 3))}),
        pa.schema([("x", pa.list_(pa.float32(), 3))]),
    )
    assert plan.fixed_batch == 4 and not plan.row_by_row
    assert plan.output_types == (pa.list_(pa.float32(), 3),)
    plan = columns.make_plan(
        sig({"x": ("float32", ())}, {"y": ("float32", ())}), pa.schema([("x", pa.float64())])
    )
    assert plan.row_by_row and plan.output_types == (pa.float32(),)


def test_plan_optional_input_may_lack_a_column():
    signature = sig({"x": ("float32", (-1,)), "opt": ("float32", (-1,))})
    plan = columns.make_plan(signature, pa.schema([("x", pa.float32())]), required_inputs=["x"])
    assert [i.key for i in plan.inputs] == ["x"]
    with pytest.raises(SchemaError, match="input 'opt' \\(float32 \\[-1\\]\\) has no column"):
        columns.make_plan(signature, pa.schema([("x", pa.float32())]))


PLAN_ERRORS = {
    "missing column lists the columns there are": (
        sig({"x": ("float32", (-1, 3))}),
        pa.schema([("a", pa.int64()), ("b", pa.string())]),
        {},
        [
            "input 'x' (float32 [-1,3]) has no column 'x'",
            "The input columns are: a (int64), b (string)",
            "--map column=input_key",
        ],
    ),
    "string does not cast to float": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.string())]),
        {},
        ["column 'x' has type string, which does not cast safely to input 'x' (float32)"],
    ),
    "float does not cast to int": (
        sig({"x": ("int64", (-1,))}),
        pa.schema([("x", pa.float64())]),
        {},
        ["column 'x' has type double, which does not cast safely to input 'x' (int64)"],
    ),
    "float list does not cast to int": (
        sig({"x": ("int32", (-1, 2))}),
        pa.schema([("x", pa.list_(pa.float32()))]),
        {},
        ["column 'x' has type list<item: float>, which does not cast safely to input 'x' (int32)"],
    ),
    "int does not feed a string input": (
        sig({"w": ("string", (-1,))}),
        pa.schema([("w", pa.int64())]),
        {},
        ["column 'w' has type int64, which does not cast safely to input 'w' (string)"],
    ),
    "list depth does not fit the shape": (
        sig({"x": ("float32", (-1, 2, 3))}),
        pa.schema([("x", pa.list_(pa.float32()))]),
        {},
        ["column 'x' (list<item: float>, list depth 1) cannot feed input 'x' of shape [-1,2,3]"],
    ),
    "output clashes with a kept column": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.float32()), ("y", pa.int64())]),
        {},
        ["Output name(s) ['y'] clash with kept input column(s)", "--keep-columns"],
    ),
    "explicitly kept column clashes with an output": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.float32()), ("y", pa.int64()), ("id", pa.int64())]),
        {"keep_columns": ["id", "y"]},
        ["Output name(s) ['y'] clash"],
    ),
    "a kept column named error clashes with the dead letter": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.float32()), ("error", pa.string())]),
        {},
        ["['error'] clash", "'error' is reserved for the dead letter"],
    ),
    "--map to an unknown input": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("feat", pa.float32())]),
        {"column_map": {"feat": "nope"}},
        ["--map names input(s) ['nope']", "its inputs are ['x']"],
    ),
    "--map from an unknown column": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("feat", pa.float32())]),
        {"column_map": {"other": "x"}},
        ["--map names column(s) ['other']", "its columns are ['feat']"],
    ),
    "non-batch-aligned output requested explicitly": (
        sig({"x": ("float32", (-1,))}, {"y": ("float32", (-1,)), "g": ("float32", (5,))}),
        pa.schema([("x", pa.float32())]),
        {"outputs": ["g"]},
        ["Output 'g' (float32 [5]) is not batch-aligned"],
    ),
    "scalar output requested explicitly": (
        sig({"x": ("float32", (-1,))}, {"y": ("float32", (-1,)), "g": ("float32", ())}),
        pa.schema([("x", pa.float32())]),
        {"outputs": ["y", "g"]},
        ["Output 'g' (float32 []) is not batch-aligned"],
    ),
    "unknown output": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.float32())]),
        {"outputs": ["zz"]},
        ["Output(s) ['zz'] are not in signature 'serving_default'", "its outputs are ['y']"],
    ),
    "unknown kept column": (
        sig({"x": ("float32", (-1,))}),
        pa.schema([("x", pa.float32())]),
        {"keep_columns": ["nope"]},
        ["--keep-columns names column(s) ['nope']", "its columns are ['x']"],
    ),
    "no batch-aligned output at all": (
        sig({"x": ("float32", (-1,))}, {"g": ("float32", (5,))}),
        pa.schema([("x", pa.float32())]),
        {},
        ["has no batch-aligned output to write", "g (float32 [5])"],
    ),
    "different fixed batch sizes": (
        sig({"a": ("float32", (4,)), "b": ("float32", (2,))}, {"y": ("float32", (4,))}),
        pa.schema([("a", pa.float32()), ("b", pa.float32())]),
        {},
        ["different fixed batch sizes [2, 4]"],
    ),
}


@pytest.mark.parametrize("case", sorted(PLAN_ERRORS))
def test_make_plan_errors_are_schema_errors_that_explain(case):
    signature, schema, kwargs, fragments = PLAN_ERRORS[case]
    with pytest.raises(SchemaError) as info:
        columns.make_plan(signature, schema, **kwargs)
    assert isinstance(info.value, BeamV1Error)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message


def test_plan_error_names_every_problem_at_once():
    signature = sig({"a": ("float32", (-1,)), "b": ("int64", (-1,))})
    with pytest.raises(SchemaError) as info:
        columns.make_plan(signature, pa.schema([("b", pa.float64()), ("c", pa.int8())]))
    message = str(info.value)
    assert "input 'a' (float32 [-1]) has no column 'a'" in message
    assert "column 'b' has type double, which does not cast safely to input 'b'" in message


def test_safe_casts_are_accepted():
    for column_type, dtype in [
        (pa.int64(), "float32"),
        (pa.int8(), "int64"),
        (pa.float16(), "float64"),
        (pa.float64(), "float32"),
        (pa.int64(), "int32"),
        (pa.uint8(), "int32"),
    ]:
        plan = columns.make_plan(sig({"x": (dtype, (-1,))}), pa.schema([("x", column_type)]))
        assert plan.inputs[0].column == "x"


# ------------------------------------------------------------ from_fetches


def test_from_fetches_types_and_values():
    signature = sig(
        {"x": ("float32", (-1,))},
        {
            "a": ("float32", (-1,)),
            "b": ("int64", (-1, 3)),
            "c": ("float64", (-1, 2, 2)),
            "d": ("string", (-1,)),
            "e": ("float32", (-1, -1)),
            "f": ("string", (-1, 2)),
            "g": ("int32", (-1, 1)),
            "h": ("bool", (-1,)),
        },
    )
    plan = columns.make_plan(signature, pa.schema([("x", pa.float32())]))
    fetches = {
        "a": np.array([1.5, 2.5], np.float32),
        "b": np.arange(6, dtype=np.int64).reshape(2, 3),
        "c": np.arange(8.0).reshape(2, 2, 2),
        "d": np.array([b"x", b"yz"], dtype=object),
        "e": np.ones((2, 4), np.float32),
        "f": np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object),
        "g": np.array([[7], [8]], np.int32),
        "h": np.array([True, False]),
    }
    out = dict(zip(plan.output_keys, columns.from_fetches(fetches, plan, 2)))
    assert out["a"].type == pa.float32() and out["a"].to_pylist() == [1.5, 2.5]
    assert out["b"].type == pa.list_(pa.int64(), 3)
    assert out["b"].to_pylist() == [[0, 1, 2], [3, 4, 5]]
    assert out["c"].type == pa.list_(pa.list_(pa.float64(), 2), 2)
    assert out["c"].to_pylist() == [[[0.0, 1.0], [2.0, 3.0]], [[4.0, 5.0], [6.0, 7.0]]]
    assert out["d"].type == pa.binary() and out["d"].to_pylist() == [b"x", b"yz"]
    assert out["e"].type == pa.list_(pa.float32())
    assert out["e"].to_pylist() == [[1.0] * 4] * 2
    assert out["f"].type == pa.list_(pa.binary(), 2)
    assert out["f"].to_pylist() == [[b"a", b"b"], [b"c", b"d"]]
    assert out["g"].type == pa.list_(pa.int32(), 1) and out["g"].to_pylist() == [[7], [8]]
    assert out["h"].type == pa.bool_() and out["h"].to_pylist() == [True, False]
    for key, array in out.items():
        assert array.null_count == 0, key
        assert array.type == plan.output_types[plan.output_keys.index(key)]


def test_from_fetches_rejects_outputs_that_do_not_fit():
    signature = sig({"x": ("float32", (-1,))}, {"b": ("int64", (-1, 3))})
    plan = columns.make_plan(signature, pa.schema([("x", pa.float32())]))
    with pytest.raises(ValueError, match=r"output 'b' has shape \[3, 3\], not one row per"):
        columns.from_fetches({"b": np.zeros((3, 3), np.int64)}, plan, 2)
    with pytest.raises(ValueError, match="output 'b' has 4 values per row where 3 were expected"):
        columns.from_fetches({"b": np.zeros((2, 4), np.int64)}, plan, 2)
    with pytest.raises(ValueError, match="where a list per row"):
        columns.from_fetches({"b": np.zeros(2, np.int64)}, plan, 2)
    with pytest.raises(ValueError, match="one row per input row"):
        columns.from_fetches({"b": np.int64(3)}, plan, 1)


def test_output_shapes_give_unknown_rank_outputs_a_type():
    signature = sig({"x": ("float32", None)}, {"y": ("float32", None)})
    schema = pa.schema([("x", pa.list_(pa.float32()))])
    with pytest.raises(SchemaError, match="no batch-aligned output"):
        columns.make_plan(signature, schema)
    plan = columns.make_plan(signature, schema, output_shapes={"y": (-1, -1)})
    assert plan.output_types == (pa.list_(pa.float32()),)
    assert columns.unknown_rank_outputs(signature, None) == ["y"]


def test_failed_schema_turns_fixed_size_lists_into_lists_and_adds_error():
    schema = pa.schema(
        [
            ("x", pa.list_(pa.float32(), 3)),
            ("n", pa.list_(pa.list_(pa.int8(), 2), 2)),
            ("s", pa.string()),
        ]
    )
    failed = columns.failed_schema(schema)
    assert failed.names == ["x", "n", "s", "error"]
    assert failed.field("x").type == pa.list_(pa.float32())
    assert failed.field("n").type == pa.list_(pa.list_(pa.int8()))
    assert failed.field("s").type == pa.string()
    assert failed.field("error").type == pa.string()


def test_tensor_numpy_dtype_rejects_unmappable_dtypes():
    with pytest.raises(SchemaError, match="complex64"):
        columns.tensor_numpy_dtype(spec("z", "complex64", (-1,)))
