"""The Parquet that `score` writes, read by someone else: DuckDB's and Polars' own readers
give the values pyarrow gives, for the scored output (every output kind of SPEC §4 and kept
columns of many types) and for the dead letter (its `error` column and lists holding nulls).
Every file here comes from a real pipeline (`beam_v1.scoring.job.score` on the DirectRunner);
output values are also checked against a direct session run of the model.

BEAM_V1_FUZZ_EXAMPLES raises the number of generated tables (default 6; each is a run).
"""

from __future__ import annotations

import datetime
import math
import os
from decimal import Decimal
from pathlib import Path

import builders
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from beam_v1.scoring.job import score

v1 = tf.compat.v1
EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "6"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# each example is a pipeline run: a failure is reported as found, not shrunk for minutes
PIPELINE_FUZZ = settings(FUZZ, phases=[Phase.explicit, Phase.reuse, Phase.generate])
ROW_ID = "row_id"

# ------------------------------------------------------------------------ comparing readers


def _plain(t: pa.DataType) -> pa.DataType:
    """`t` with temporal leaves as their integer storage and dictionaries as their values,
    so values compare exactly (pyarrow cannot make nanosecond datetimes without pandas, and
    a time zone's name is Arrow metadata, not Parquet data)."""
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_time64(t):
        return pa.int64()
    if pa.types.is_date64(t):
        return pa.int64()
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return pa.int32()
    if pa.types.is_dictionary(t):
        return _plain(t.value_type)
    if pa.types.is_large_list(t):
        return pa.large_list(_plain(t.value_type))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_plain(t.value_type), t.list_size)
    if pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain(f.type)) for f in t])
    return t


def _exact(value):
    """Floats by their bits (NaN as one value, -0.0 apart from 0.0)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value.hex()
    if isinstance(value, list):
        return [_exact(v) for v in value]
    if isinstance(value, dict):
        return {k: _exact(v) for k, v in value.items()}
    return value


def column_values(column: pa.ChunkedArray, as_type: pa.DataType) -> list:
    """A reader's column as pyarrow's type (a safe cast: a lossy one raises), exactly."""
    column = column.cast(as_type)
    if pa.types.is_dictionary(as_type):
        column = column.cast(as_type.value_type)
    return _exact(column.cast(_plain(as_type)).to_pylist())


def read_everywhere(paths: list[str]) -> dict[str, pa.Table]:
    """The files read by pyarrow, DuckDB and Polars; rows sorted by `row_id`."""
    tables = {
        "pyarrow": pq.read_table(paths),
        "duckdb": duckdb.connect().read_parquet(paths).to_arrow_table(),
        "polars": pl.read_parquet(paths).to_arrow(),
    }
    return {k: t.sort_by(ROW_ID) if ROW_ID in t.column_names else t for k, t in tables.items()}


def assert_readers_agree(paths: list[str]) -> pa.Table:
    """DuckDB and Polars read the same columns, rows and values as pyarrow; pyarrow's table."""
    assert paths
    tables = read_everywhere(paths)
    truth = tables.pop("pyarrow")
    for reader, table in tables.items():
        assert table.column_names == truth.column_names, reader
        assert table.num_rows == truth.num_rows, reader
        for field in truth.schema:
            want = column_values(truth.column(field.name), field.type)
            got = column_values(table.column(field.name), field.type)
            assert got == want, f"{reader} reads {field.name} ({field.type}) differently"
    return truth


def assert_same_values(got: pa.Table, want: pa.Table) -> None:
    """The same schema and values, floats by their bits (`Table.equals` has NaN != NaN)."""
    assert got.schema == want.schema
    for field in want.schema:
        assert column_values(got.column(field.name), field.type) == column_values(
            want.column(field.name), field.type), field.name


def outputs_of(prefix: Path) -> list[str]:
    return sorted(str(p) for p in prefix.parent.glob(f"{prefix.name}-0*.parquet"))


def failed_of(prefix: Path) -> list[str]:
    return sorted(str(p) for p in prefix.parent.glob(f"{prefix.name}-failed-0*.parquet"))


def session_run(model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The serving_default signature run in a plain TF1 session: the truth for outputs."""
    with v1.Session(graph=tf.Graph()) as sess:
        sig = v1.saved_model.loader.load(sess, ["serve"], model).signature_def["serving_default"]
        fetches = {k: v.name for k, v in sig.outputs.items()}
        return sess.run(fetches, {sig.inputs[k].name: v for k, v in feeds.items()})


# ------------------------------------------------------------------------ models


def build_strings(path: str) -> str:
    """word string [-1] -> tagged = word + "!" (string [-1]), pair = [word, tagged]
    (string [-1,2]), length (int32 [-1], bytes of word)."""

    def make():
        word = v1.placeholder(tf.string, [None], name="word")
        tagged = tf.strings.join([word, "!"], name="tagged")
        pair = tf.stack([word, tagged], axis=1, name="pair")
        length = tf.strings.length(word, name="length")
        outputs = {"tagged": tagged, "pair": pair, "length": length}
        return {"serving_default": builders.predict({"word": word}, outputs)}, None

    return builders.build(path, make)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("readers")
    return {
        "mlp": builders.build_mlp(str(root / "mlp")),
        "nested": builders.build_nested(str(root / "nested")),
        "variable_len": builders.build_variable_len(str(root / "variable_len")),
        "strings": build_strings(str(root / "strings")),
    }


def kept_columns(n: int) -> dict[str, pa.Array]:
    return {
        ROW_ID: pa.array(range(n), pa.int64()),
        "name": pa.array([None if i % 4 == 1 else f"row {i} ü" for i in range(n)]),
        "tags": pa.array([None if i % 5 == 2 else [i, None, -i][: i % 4] for i in range(n)],
                         pa.list_(pa.int32())),
        "when": pa.array([None if i % 3 == 2 else 1_700_000_000_123_456_789 + i
                          for i in range(n)], pa.timestamp("ns", tz="UTC")),
    }


def model_inputs(kind: str, n: int) -> tuple[dict[str, pa.Array], dict[str, np.ndarray]]:
    """(input columns, the same values as session feeds)."""
    rng = np.random.default_rng(7)
    if kind == "mlp":
        x = rng.normal(size=(n, 4)).astype(np.float32)
        return {"x": pa.array(list(x), pa.list_(pa.float32(), 4))}, {"x": x}
    if kind == "nested":
        x = rng.normal(size=(n, 2, 3)).astype(np.float32)
        column = pa.array([r.tolist() for r in x], pa.list_(pa.list_(pa.float32())))
        return {"x": column}, {"x": x}
    if kind == "variable_len":
        x = rng.normal(size=(n, 5)).astype(np.float32)
        return {"x": pa.array([r.tolist() for r in x], pa.list_(pa.float32()))}, {"x": x}
    words = [f"w{i}-ü".encode() for i in range(n)]
    return {"word": pa.array(words, pa.binary())}, {"word": np.array(words, dtype=object)}


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize("kind", ["mlp", "nested", "variable_len", "strings"])
def test_scored_output_reads_alike_and_equals_the_session(models, kind, tmp_path):
    """Scalars, fixed_size_list<k>, nested lists, binary from tf.string (also as a
    fixed_size_list), int32 and int64 outputs, beside kept string, list and timestamp
    columns."""
    n = 12
    inputs, feeds = model_inputs(kind, n)
    pq.write_table(pa.table({**kept_columns(n), **inputs}), tmp_path / "in.parquet")
    prefix = tmp_path / "out"
    summary = score(models[kind], str(tmp_path / "in.parquet"), str(prefix), progress=False)
    assert summary["rows_in"] == summary["rows_scored"] == n, summary
    table = assert_readers_agree(outputs_of(prefix))
    assert table.column(ROW_ID).to_pylist() == list(range(n))
    assert table.select(list(kept_columns(n))).equals(pa.table(kept_columns(n)))
    truth = session_run(models[kind], feeds)
    for key, want in truth.items():
        field = table.schema.field(key)
        got = table.column(key).to_pylist()
        if kind == "mlp" and key == "scores":
            assert pa.types.is_fixed_size_list(field.type)
        if want.dtype == object:
            assert pa.types.is_binary(pa.types.is_fixed_size_list(field.type)
                                      and field.type.value_type or field.type)
        np.testing.assert_array_equal(np.array(got, dtype=want.dtype), want)


def test_dead_letter_reads_alike_with_its_error_and_null_lists(models, tmp_path):
    """Rows whose x is null, short, long, or holds a null item go to the dead letter with
    all their columns (x as a list with nulls) and an `error`; both files read alike."""
    good = [[0.5, 1.0, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]]
    bad = [None, [1.0, 2.0], [1.0, None, 3.0, 4.0], [], [1.0] * 5]
    x = good[:1] + bad[:2] + good[1:2] + bad[2:] + good[2:]
    n = len(x)
    columns = {**kept_columns(n), "x": pa.array(x, pa.list_(pa.float32()))}
    pq.write_table(pa.table(columns), tmp_path / "in.parquet")
    prefix = tmp_path / "out"
    summary = score(models["mlp"], str(tmp_path / "in.parquet"), str(prefix), progress=False)
    assert (summary["rows_scored"], summary["rows_failed"]) == (3, 5), summary
    scored = assert_readers_agree(outputs_of(prefix))
    failed = assert_readers_agree(failed_of(prefix))
    assert scored.num_rows + failed.num_rows == n
    assert sorted(failed.column("x").to_pylist(), key=str) == sorted(bad, key=str)
    assert failed.column("error").null_count == 0
    assert all(e for e in failed.column("error").to_pylist())
    rows = failed.column(ROW_ID).to_pylist()
    assert failed.select(list(kept_columns(n))).equals(
        pa.table(kept_columns(n)).take(rows))
    truth = session_run(models["mlp"], {"x": np.array(good, np.float32)})
    np.testing.assert_array_equal(np.array(scored.column("scores").to_pylist(), np.float32),
                                  truth["scores"])


def test_a_run_where_every_row_fails_writes_empty_files_they_read(models, tmp_path):
    """The scored output of a run without scored rows is an empty file with the schema
    (written at finalize): DuckDB and Polars read it as 0 rows with the same columns."""
    n = 3
    x = pa.array([None, [1.0], [2.0] * 3], pa.list_(pa.float32()))
    columns = {**kept_columns(n), "x": x}
    pq.write_table(pa.table(columns), tmp_path / "in.parquet")
    prefix = tmp_path / "out"
    summary = score(models["mlp"], str(tmp_path / "in.parquet"), str(prefix), progress=False,
                    num_shards=2)
    assert (summary["rows_scored"], summary["rows_failed"]) == (0, 3), summary
    scored = assert_readers_agree(outputs_of(prefix))
    assert len(outputs_of(prefix)) == 2 and scored.num_rows == 0
    assert scored.column_names[:4] == list(kept_columns(n))  # kept columns come first
    assert sorted(scored.column_names[4:]) == ["label", "scores"]
    assert assert_readers_agree(failed_of(prefix)).num_rows == 3


# --------------------------------------------------- generated kept columns through the sink

UTC = datetime.timezone.utc


def _ints(bits: int, signed: bool = True):
    if signed:
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return st.integers(0, 2**bits - 1)


def _strings():
    return st.text(max_size=8)


KINDS: dict[str, tuple[pa.DataType, st.SearchStrategy]] = {
    "int8": (pa.int8(), _ints(8)),
    "int16": (pa.int16(), _ints(16)),
    "int32": (pa.int32(), _ints(32)),
    "int64": (pa.int64(), _ints(64)),
    "uint8": (pa.uint8(), _ints(8, False)),
    "uint16": (pa.uint16(), _ints(16, False)),
    "uint32": (pa.uint32(), _ints(32, False)),
    "uint64": (pa.uint64(), _ints(64, False)),
    "float32": (pa.float32(), st.floats(width=32)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "string": (pa.string(), _strings()),
    "large_string": (pa.large_string(), _strings()),
    "binary": (pa.binary(), st.binary(max_size=8)),
    "date32": (pa.date32(), st.dates()),
    # DuckDB's TIMESTAMP spans years 290308 BC to 294247 AD, so int64's extremes (which it
    # keeps for -infinity/infinity) are left out: the generated instants are years 1..9999
    "timestamp_us_utc": (pa.timestamp("us", tz="UTC"), st.datetimes(timezones=st.just(UTC))),
    "timestamp_ms": (pa.timestamp("ms"), st.datetimes().map(lambda d: d.replace(
        microsecond=d.microsecond // 1000 * 1000))),
    "decimal": (pa.decimal128(12, 3), st.decimals(-(10**9) + 1, 10**9 - 1, places=3,
                                                   allow_nan=False)),
    "list_int64": (pa.list_(pa.int64()), st.lists(st.none() | _ints(64), max_size=4)),
    "list_list_string": (pa.list_(pa.list_(pa.string())),
                         st.lists(st.none() | st.lists(st.none() | _strings(), max_size=3),
                                  max_size=3)),
    "struct": (pa.struct([("a", pa.int64()), ("b", pa.string())]),
               st.fixed_dictionaries({"a": st.none() | _ints(64), "b": st.none() | _strings()})),
}


@st.composite
def kept_tables(draw) -> pa.Table:
    n = draw(st.integers(1, 12))
    names = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=5, unique=True))
    columns = {ROW_ID: pa.array(range(n), pa.int64())}
    for name in names:
        dtype, values = KINDS[name]
        cells = draw(st.lists(st.none() | values, min_size=n, max_size=n))
        if pa.types.is_decimal(dtype):
            cells = [None if c is None else Decimal(c) for c in cells]
        columns[name] = pa.array(cells, dtype)
    if draw(st.booleans()):  # a dictionary-encoded string column too
        columns["dictionary"] = pa.array(
            draw(st.lists(st.none() | st.sampled_from(["a", "b", "ü"]), min_size=n, max_size=n)),
            pa.string(),
        ).dictionary_encode()
    return pa.table(columns)


@PIPELINE_FUZZ
@given(
    kept=kept_tables(),
    bad_rows=st.sets(st.integers(0, 11)),
    codec=st.sampled_from(["snappy", "zstd", "gzip", "lz4", "brotli", "none"]),
    num_shards=st.sampled_from([0, 2]),
)
@example(  # found by CI: a NaN kept as it is, which Table.equals calls unequal
    kept=pa.table({ROW_ID: pa.array([0, 1, 2], pa.int64()),
                   "float32": pa.array([None, float("nan"), None], pa.float32())}),
    bad_rows={1, 5}, codec="lz4", num_shards=0,
)
def test_generated_kept_columns_read_alike(models, tmp_path_factory, kept, bad_rows, codec,
                                           num_shards):
    """Random kept columns (nulls everywhere) through the real sink with any codec: what
    pyarrow reads back equals the input, and DuckDB and Polars read the same; rows with a
    bad x carry the same kept values into the dead letter."""
    tmp = tmp_path_factory.mktemp("gen")
    n = kept.num_rows
    x = [[1.0] * 3 if i in bad_rows else [float(i), 0.5, -1.0, 2.0] for i in range(n)]
    table = kept.append_column("x", pa.array(x, pa.list_(pa.float32())))
    pq.write_table(table, tmp / "in.parquet")
    prefix = tmp / "out"
    summary = score(models["mlp"], str(tmp / "in.parquet"), str(prefix), progress=False,
                    codec=codec, num_shards=num_shards)
    failing = sorted(i for i in bad_rows if i < n)
    assert (summary["rows_scored"], summary["rows_failed"]) == (n - len(failing), len(failing))
    scored = assert_readers_agree(outputs_of(prefix))
    ok = [i for i in range(n) if i not in failing]
    assert_same_values(scored.select(kept.column_names), kept.take(pa.array(ok, pa.int64())))
    if failing:
        failed = assert_readers_agree(failed_of(prefix))
        assert_same_values(failed.select(kept.column_names),
                           kept.take(pa.array(failing, pa.int64())))
