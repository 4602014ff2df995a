"""Property-based tests (hypothesis) over Arrow batches and Parquet files (issue 9, item 6).

Invariants: no crash (only a named SchemaError for a column type the signature cannot take),
rows in = scored + failed, every scored row equals a direct session run of that row, every
failed row keeps its columns and has a reason. CI runs a bounded number of examples; set
BEAM_V1_FUZZ_EXAMPLES (e.g. 2000) for a longer run.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import beam_v1
from beam_v1.errors import SchemaError
from beam_v1.scoring import columns
from beam_v1.scoring.scorer import BatchScorer

EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e38]),
)
# `a` should hold 3 floats a row: also empty, short, oversized and null lists
a_cells = st.one_of(
    st.lists(floats, min_size=3, max_size=3),
    st.lists(floats, min_size=0, max_size=8),
    st.none(),
)
b_cells = st.one_of(st.integers(-(2**40), 2**40), st.none())
c_cells = st.one_of(floats, st.none())
long_text = st.one_of(st.text(max_size=20), st.text(min_size=1000, max_size=3000))


@st.composite
def tables(draw):
    n = draw(st.integers(0, 30))
    data = {
        "id": pa.array(range(n), pa.int64()),
        "a": pa.array([draw(a_cells) for _ in range(n)], pa.list_(pa.float64())),
    }
    b_type = draw(st.sampled_from(["int64", "int32", "float64", "string"]))
    b_values = [draw(b_cells) for _ in range(n)]
    if b_type == "string":
        data["b"] = pa.array([None if v is None else str(v) for v in b_values], pa.string())
    elif b_type == "float64":
        data["b"] = pa.array([None if v is None else float(v) for v in b_values], pa.float64())
    elif b_type == "int32":
        data["b"] = pa.array([None if v is None else v % 2**31 for v in b_values], pa.int32())
    else:
        data["b"] = pa.array(b_values, pa.int64())
    data["c"] = pa.array([draw(c_cells) for _ in range(n)], pa.float64())
    if draw(st.booleans()):  # an extra column, kept in the output
        data["note"] = pa.array([draw(long_text) for _ in range(n)], pa.string())
    if draw(st.booleans()):
        data["blob"] = pa.array(
            [draw(st.binary(max_size=draw(st.sampled_from([10, 5000])))) for _ in range(n)],
            pa.binary(),
        )
    return pa.table(data)


@pytest.fixture(scope="module")
def model(built_models):
    with beam_v1.load(built_models["multi_input"]) as m:
        yield m


def _reference(model, row):
    feeds = {
        "a": np.array([row["a"]], np.float32),
        "b": np.array([row["b"]], np.int64),
        "c": np.array([[row["c"]]], np.float64),
    }
    return model.predict(feeds)


def _same(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return got.shape == want.shape and bool(
        np.all((got == want) | (np.isnan(got) & np.isnan(want)))
    )


def check_invariants(model, table):
    sig = model.signature()
    try:
        plan = columns.make_plan(sig, table.schema, required_inputs=model.required_inputs())
    except SchemaError as e:  # e.g. b as strings or floats: a named error, not a crash
        assert "b" in str(e)
        return
    result = BatchScorer(model, plan, table.schema).score(table)
    assert result.scored.num_rows + result.failed.num_rows == table.num_rows
    scored_ids = result.scored["id"].to_pylist() if result.scored.num_rows else []
    failed_ids = result.failed["id"].to_pylist() if result.failed.num_rows else []
    assert sorted(scored_ids + failed_ids) == sorted(table["id"].to_pylist())
    rows = {row["id"]: row for row in table.to_pylist()}
    for i, scored in zip(scored_ids, result.scored.to_pylist()):
        want = _reference(model, rows[i])
        assert _same(scored["total"], want["total"][0]), (rows[i], scored)
        assert _same(scored["a_scaled"], want["a_scaled"][0]), (rows[i], scored)
        for extra in ("note", "blob"):
            if extra in table.column_names:
                assert scored[extra] == rows[i][extra]
    for i, failed in zip(failed_ids, result.failed.to_pylist()):
        assert failed["error"]
        for name in table.column_names:
            want = rows[i][name]
            got = failed[name]
            if isinstance(want, float) and math.isnan(want):
                assert math.isnan(got)
            elif isinstance(want, list):
                assert len(got) == len(want)
            else:
                assert got == want
    # a row whose `a` has 3 values and no null is scored
    for i, row in rows.items():
        if row["a"] is not None and len(row["a"]) == 3 and None not in (row["b"], row["c"]):
            assert i in scored_ids, (row, result.failed.to_pylist())


@FUZZ
@given(table=tables())
def test_fuzz_arrow_batches(model, table):
    check_invariants(model, table)


@FUZZ
@given(table=tables(), row_group=st.integers(1, 10))
def test_fuzz_parquet_round_trip(model, tmp_path_factory, table, row_group):
    path = str(tmp_path_factory.mktemp("fuzz") / "f.parquet")
    pq.write_table(table, path, row_group_size=row_group)
    read = pq.ParquetFile(path)
    batches = list(read.iter_batches(batch_size=7))
    assert sum(b.num_rows for b in batches) == table.num_rows
    for batch in batches:
        check_invariants(model, pa.Table.from_batches([batch]).combine_chunks())
