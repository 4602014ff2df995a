"""Per-file schema drift is row data (issue 14, SPEC §8): real Parquet files, a real TF1 model.

Several Parquet files feed `builders.build_multi_input` (a float32 [-1,3], b int64 [-1],
c float64 [-1,1]); one or more later files drift: `b` becomes double with fractional values
or string, a fed column is missing, a column is extra, or `b` is a narrower int (which casts).
Rows of a file whose column cannot feed the input go to the dead letter with a reason naming
the file, column and types; every other row is scored, with the values TensorFlow's own TF1
loader gives. Outputs and dead letters are read back by DuckDB and Polars (independent
readers): rows in = rows scored + rows in the dead letter, on the DirectRunner in memory,
multi-threaded and with worker processes. `--strict-schema` refuses such input before the run.
"""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from beam_v1 import ScoreParquet
from beam_v1.cli import main as cli
from beam_v1.errors import SchemaError
from beam_v1.scoring.job import score

v1 = tf.compat.v1
ROWS = 30  # per file, in row groups of 10
MULTI_THREADING = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    import builders

    return builders.build_multi_input(str(tmp_path_factory.mktemp("drift") / "multi_input"))


def tf_total(path: str, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """`total` from TensorFlow's own TF1 loader and a session run."""
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess:
        sig = v1.saved_model.loader.load(sess, ["serve"], path).signature_def["serving_default"]
        return sess.run(
            sig.outputs["total"].name,
            feed_dict={
                sig.inputs["a"].name: a,
                sig.inputs["b"].name: b,
                sig.inputs["c"].name: c.reshape(-1, 1),
            },
        )


def file_table(index: int, b=None, drop: str | None = None, extra: bool = False) -> pa.Table:
    """Rows of file `index`: key (global id), a, b, c, name; `b` may be given another type."""
    rng = np.random.RandomState(index)
    keys = np.arange(index * ROWS, (index + 1) * ROWS, dtype=np.int64)
    columns = {
        "key": pa.array(keys),
        "a": pa.array(rng.normal(size=(ROWS, 3)).astype(np.float32).tolist(),
                      pa.list_(pa.float32())),
        "b": pa.array(keys * 3 - 7) if b is None else b,
        "c": pa.array(rng.normal(size=ROWS)),
        "name": pa.array([f"row{k}" for k in keys]),
    }
    if drop:
        del columns[drop]
    if extra:
        columns["extra"] = pa.array(np.ones(ROWS, dtype=np.int8))
    return pa.table(columns)


def write_files(folder, drifted: dict[int, dict]) -> dict[int, pa.Table]:
    """Four files part-0..part-3 in row groups of 10; `drifted` maps index -> file_table kwargs."""
    os.makedirs(folder, exist_ok=True)
    tables = {}
    for i in range(4):
        table = file_table(i, **drifted.get(i, {}))
        pq.write_table(table, os.path.join(folder, f"part-{i}.parquet"), row_group_size=10)
        tables[i] = table
    return tables


FRACTIONAL = {"b": pa.array(np.arange(ROWS) + 0.5)}
STRINGS = {"b": pa.array([str(i) for i in range(ROWS)])}


def read_back(prefix: str, failed_prefix: str | None = None):
    """(scored, failed) as Polars frames; DuckDB reads the same keys from the same files."""
    out = []
    failed_prefix = failed_prefix or f"{prefix}-failed"
    for pattern in (f"{prefix}-0*-of-*.parquet", f"{failed_prefix}-*.parquet"):
        names = sorted(glob.glob(pattern))
        assert names, pattern
        frame = pl.concat([pl.read_parquet(n) for n in names], how="vertical")
        files = ", ".join(f"'{n}'" for n in names)
        duck = duckdb.sql(f"SELECT key FROM read_parquet([{files}]) ORDER BY key").fetchall()
        assert [k for (k,) in duck] == sorted(frame["key"].to_list())
        out.append(frame)
    return out[0], out[1]


def check_scored(model, scored: pl.DataFrame, tables: dict[int, pa.Table], good: list[int]):
    schema = tables[0].select(["key", "a", "b", "c"]).schema
    want = pa.concat_tables([tables[i].select(schema.names).cast(schema) for i in good])
    assert sorted(scored["key"].to_list()) == want["key"].to_pylist()
    got = scored.sort("key")
    total = tf_total(
        model,
        np.array(want["a"].to_pylist(), dtype=np.float32),
        want["b"].to_numpy(),
        want["c"].to_numpy(),
    )
    np.testing.assert_allclose(got["total"].to_numpy(), total, rtol=1e-5, atol=1e-5)
    assert got["name"].to_list() == [f"row{k}" for k in want["key"].to_pylist()]


def check_dead_letter(failed: pl.DataFrame, tables, drifted: list[int], folder, words):
    keys = sorted(k for i in drifted for k in tables[i]["key"].to_pylist())
    failed = failed.filter(pl.col("key").is_in(keys))
    assert sorted(failed["key"].to_list()) == keys
    assert failed.columns == ["key", "a", "b", "c", "name", "error"]
    for i in drifted:
        path = os.path.join(folder, f"part-{i}.parquet")
        rows = failed.filter(pl.col("key").is_in(tables[i]["key"].to_pylist()))
        for error in rows["error"].to_list():
            assert path in error and all(w in error for w in words), error
        # the columns that fit the dead letter keep their values
        assert rows.sort("key")["name"].to_list() == sorted(
            tables[i]["name"].to_pylist(), key=lambda s: int(s[3:])
        )


def run_cli(model, folder, prefix, extra=()):
    argv = ["score", "--model", model, "--input", os.path.join(folder, "*.parquet"),
            "--output", prefix, "--quiet", *extra]
    return cli.main(argv)


@pytest.mark.parametrize("runner", [[], MULTI_THREADING], ids=["in_memory", "multi_threading"])
@pytest.mark.parametrize("drift", ["fractional", "string"])
def test_drifted_file_goes_to_dead_letter(model, tmp_path, runner, drift):
    folder = str(tmp_path / "in")
    tables = write_files(folder, {2: {"fractional": FRACTIONAL, "string": STRINGS}[drift]})
    prefix = str(tmp_path / "out" / "s")
    assert run_cli(model, folder, prefix, runner) == 0
    scored, failed = read_back(prefix)
    assert scored.height + failed.height == 4 * ROWS
    check_scored(model, scored, tables, [0, 1, 3])
    kind = {"fractional": "double", "string": "string"}[drift]
    check_dead_letter(failed, tables, [2], folder, ["'b'", kind, "int64"])
    dead = failed.sort("key")
    if drift == "string":  # "0", "1", ...: values that Arrow casts to the dead letter's int64
        assert dead["b"].to_list() == list(range(ROWS))
    else:  # 0.5, 1.5, ...: null in the dead letter's int64 `b`, the value as text in `error`
        assert dead["b"].null_count() == ROWS
        for value, error in zip(tables[2]["b"].to_pylist(), dead["error"]):
            assert error.endswith(f"; the value of 'b' as text: {value}"), error


def test_score_parquet_missing_extra_and_castable_columns(model, tmp_path):
    """In memory, through the API: a file without a fed column (dead letter), one with an
    extra column (dropped, scored) and one whose `b` is int32 (cast, scored)."""
    folder = str(tmp_path / "in")
    narrow = pa.array(np.arange(ROWS, dtype=np.int32))
    tables = write_files(folder, {1: {"drop": "b"}, 2: {"extra": True}, 3: {"b": narrow}})
    prefix = str(tmp_path / "out" / "p")
    with beam.Pipeline() as pipeline:
        _ = pipeline | ScoreParquet(model, os.path.join(folder, "*.parquet"), prefix)
    scored, failed = read_back(prefix)
    assert scored.height + failed.height == 4 * ROWS
    assert "extra" not in scored.columns and scored.schema["key"] == pl.Int64
    check_scored(model, scored, tables, [0, 2, 3])
    check_dead_letter(failed, tables, [1], folder, ["no column 'b'", "int64"])
    assert failed["b"].null_count() == ROWS


def test_summary_counts_drifted_rows(model, tmp_path):
    folder = str(tmp_path / "in")
    write_files(folder, {1: FRACTIONAL})
    prefix = str(tmp_path / "out" / "m")
    summary = score(model, os.path.join(folder, "*.parquet"), prefix, [], progress=False)
    assert summary["rows_in"] == 4 * ROWS
    assert summary["rows_scored"] == 3 * ROWS
    assert summary["rows_failed"] == ROWS


def test_strict_schema_names_each_offending_file(model, tmp_path, capsys):
    folder = str(tmp_path / "in")
    write_files(folder, {1: {"b": STRINGS["b"]}, 3: {"drop": "b"}})
    prefix = str(tmp_path / "out" / "x")
    assert run_cli(model, folder, prefix, ["--strict-schema"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for index, words in ((1, ["'b'", "string", "int64"]), (3, ["'b'", "no column"])):
        assert os.path.join(folder, f"part-{index}.parquet") in err
        assert all(w in err for w in words), err
    assert "2 of 4 input files" in err
    assert err.count(os.path.join(folder, "part-0.parquet")) == 1  # named as the reference only
    assert os.path.join(folder, "part-2.parquet") not in err
    assert not glob.glob(str(tmp_path / "out" / "*"))  # refused before any worker started
    with pytest.raises(SchemaError, match="part-1.parquet"):
        ScoreParquet(model, os.path.join(folder, "*.parquet"), prefix, strict_schema=True)
    # without the flag the same input is scored, the drifted files' rows in the dead letter
    assert run_cli(model, folder, prefix) == 0
    scored, failed = read_back(prefix)
    assert (scored.height, failed.height) == (2 * ROWS, 2 * ROWS)


@pytest.mark.slow  # two worker processes that import TensorFlow
def test_drifted_file_multi_processing(model, tmp_path):
    folder = str(tmp_path / "in")
    tables = write_files(folder, {1: {"b": FRACTIONAL["b"]}, 3: {"drop": "b"}})
    prefix = str(tmp_path / "out" / "mp")
    summary = score(model, os.path.join(folder, "*.parquet"), prefix, MULTI_PROCESSING,
                    progress=False)
    scored, failed = read_back(prefix)
    assert (scored.height, failed.height) == (2 * ROWS, 2 * ROWS)
    assert summary["rows_in"] == 4 * ROWS and summary["rows_failed"] == 2 * ROWS
    check_scored(model, scored, tables, [0, 2])
    check_dead_letter(failed, tables, [1], folder, ["'b'", "double", "int64"])
    check_dead_letter(failed, tables, [3], folder, ["no column 'b'"])


# ------------------------------------------------- the per-file rule, property-tested

FUZZ_EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "60"))
DRIFT_TYPES = [
    pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.float32(), pa.float64(), pa.bool_(),
    pa.string(), pa.binary(), pa.list_(pa.float32()), pa.list_(pa.int64()),
]


def _values(t: pa.DataType):
    from hypothesis import strategies as st

    if pa.types.is_list(t):
        return st.lists(_values(t.value_type).filter(lambda v: v is not None), max_size=3)
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_integer(t):
        info = np.iinfo(np.dtype(str(t)))
        return st.integers(int(info.min), int(info.max))
    if pa.types.is_floating(t):
        return st.floats(width=t.bit_width, allow_nan=False) | st.integers(-9, 9).map(float)
    if pa.types.is_string(t):
        return st.text(max_size=3)
    return st.binary(max_size=3)


def _fits(value, source: pa.DataType, target: pa.DataType) -> bool:
    """Whether `value` of `source` is exactly representable in `target` (Python's view)."""
    if value is None:
        return True
    if pa.types.is_list(target):
        return all(_fits(v, source.value_type, target.value_type) for v in value)
    if pa.types.is_integer(target):
        info = np.iinfo(np.dtype(str(target)))
        return float(value).is_integer() and info.min <= value <= info.max
    if pa.types.is_floating(target) and target.bit_width == 32:
        return not np.isfinite(value) or abs(value) <= np.finfo(np.float32).max
    if pa.types.is_string(target) and isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _kind(t: pa.DataType):
    """Oracle for the same_kind rule: numpy's can_cast on numbers, text with text, lists by leaf."""
    depth = 0
    while pa.types.is_list(t):
        t, depth = t.value_type, depth + 1
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return depth, "text"
    return depth, np.dtype("bool" if pa.types.is_boolean(t) else str(t))


def _same_kind_oracle(source: pa.DataType, target: pa.DataType) -> bool:
    (d1, k1), (d2, k2) = _kind(source), _kind(target)
    if d1 != d2 or (k1 == "text") != (k2 == "text"):
        return False
    return k1 == "text" or bool(np.can_cast(k1, k2, "same_kind"))


def test_file_schema_rule_loses_no_row():
    """For random first-file schemas, later files (types changed, columns missing, extra,
    reordered) and values: a file has problems exactly when a fed column is missing or a
    column breaks numpy's same_kind rule; otherwise each table casts to the first file's
    schema with its values unchanged, or fails naming a value that Python agrees does not
    fit; and any table becomes dead-letter rows, one per row, with the reason."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from beam_v1.scoring.columns import failed_schema
    from beam_v1.scoring.schema_drift import FileSchemas

    names = ["c0", "c1", "c2"]

    @st.composite
    def cases(draw):
        ref = pa.schema([(n, draw(st.sampled_from(DRIFT_TYPES))) for n in names])
        fed = draw(st.sets(st.sampled_from(names)))
        later = []
        for n in names:
            how = draw(st.sampled_from(["same", "other", "missing"]))
            if how != "missing":
                later.append((n, ref.field(n).type if how == "same" else draw(
                    st.sampled_from(DRIFT_TYPES))))
        if draw(st.booleans()):
            later.append(("extra", pa.int8()))
        later = draw(st.permutations(later))
        rows = draw(st.integers(0, 5))
        data = {
            n: draw(st.lists(st.none() | _values(t), min_size=rows, max_size=rows))
            for n, t in later
        }
        table = pa.table({n: pa.array(data[n], t) for n, t in later})
        return ref, fed, table, table.num_rows  # a table of no column has no row

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None)
    @given(cases())
    def check(case):
        ref, fed, table, rows = case
        schemas = FileSchemas(ref, failed_schema(ref), tuple((c, f"input {c!r}") for c in fed))
        problems = schemas.problems(table.schema)
        expect_problem = any(
            (n not in table.column_names and n in fed)
            or (n in table.column_names and not _same_kind_oracle(table.schema.field(n).type, t))
            for n, t in zip(ref.names, ref.types)
        )
        assert bool(problems) == expect_problem, (ref, table.schema, problems)
        dead = schemas.dead_letter(table, "why")
        assert dead.schema == failed_schema(ref) and dead.num_rows == rows
        assert all(e.startswith("why") for e in dead["error"].to_pylist())
        if problems:
            return
        fits = all(
            _fits(v, table.schema.field(n).type, t)
            for n, t in zip(ref.names, ref.types) if n in table.column_names
            for v in table[n].to_pylist()
        )
        try:
            out = schemas.conform(table)
        except pa.ArrowInvalid:
            assert not fits, table
            return
        assert fits, table
        assert out.schema == ref and out.num_rows == rows
        for n, t in zip(ref.names, ref.types):
            got = out[n].to_pylist()
            if n not in table.column_names:
                assert got == [None] * rows
            elif t == table.schema.field(n).type:
                assert got == table[n].to_pylist()
            else:  # compare in the target's Python type
                assert got == pa.array(table[n].to_pylist(), table.schema.field(n).type).cast(
                    t, safe=False).to_pylist()

    check()


# ------------------------------------------- a tf.Example signature fed from feature columns


def build_example_model(path: str) -> str:
    """serialized tf.Example -> parse_example(a: float32 default 1.0, b: int64 required) ->
    score = a * 2 + b."""
    import builders

    def make():
        serialized = v1.placeholder(tf.string, [None], name="examples")
        features = v1.io.parse_example(serialized, {
            "a": v1.io.FixedLenFeature([], tf.float32, default_value=1.0),
            "b": v1.io.FixedLenFeature([], tf.int64),
        })
        score = tf.identity(features["a"] * 2.0 + tf.cast(features["b"], tf.float32), "score")
        return {"serving_default": builders.predict({"examples": serialized},
                                                    {"score": score})}, None

    return builders.build(path, make)


def tf_example_scores(path: str, table: pa.Table) -> np.ndarray:
    """Each row as a tf.train.Example (a null or absent column: the feature is absent), run
    through the signature by TensorFlow's own TF1 loader."""
    protos = []
    for row in table.to_pylist():
        feature = {}
        if row.get("a") is not None:
            feature["a"] = tf.train.Feature(float_list=tf.train.FloatList(value=[row["a"]]))
        if row.get("b") is not None:
            feature["b"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[row["b"]]))
        protos.append(tf.train.Example(features=tf.train.Features(feature=feature))
                      .SerializeToString())
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess:
        sig = v1.saved_model.loader.load(sess, ["serve"], path).signature_def["serving_default"]
        return sess.run(sig.outputs["score"].name,
                        feed_dict={sig.inputs["examples"].name: np.array(protos, dtype=object)})


def test_feature_columns_drift(tmp_path):
    """A later file without an optional feature is scored with its default; one without a
    required feature dead-letters each row with TensorFlow's reason; one whose feature has a
    type of another kind dead-letters each row naming the file."""
    model = build_example_model(str(tmp_path / "model"))
    folder = tmp_path / "in"
    folder.mkdir()
    keys = [np.arange(i * 10, i * 10 + 10) for i in range(4)]
    a = pa.array(np.linspace(-1, 1, 10), pa.float32())
    files = [
        pa.table({"key": keys[0], "a": a, "b": keys[0] * 3}),
        pa.table({"key": keys[1], "b": keys[1] * 3}),  # no a: its default
        pa.table({"key": keys[2], "a": a}),  # no b: required
        pa.table({"key": keys[3], "a": a, "b": pa.array([f"x{k}" for k in keys[3]])}),
    ]
    for i, table in enumerate(files):
        pq.write_table(table, folder / f"part-{i}.parquet")
    prefix = str(tmp_path / "out" / "e")
    with beam.Pipeline() as pipeline:
        # serialize: the direct feed of a required feature is issue 14's failure 1, not ours
        _ = pipeline | ScoreParquet(model, str(folder / "*.parquet"), prefix,
                                    example_feed="serialize")
    scored, failed = read_back(prefix)
    assert scored.height + failed.height == 40
    assert sorted(scored["key"].to_list()) == list(range(20))
    want = tf_example_scores(model, pa.concat_tables(
        [files[0], files[1].append_column("a", pa.nulls(10, pa.float32())).select(
            ["key", "a", "b"])]))
    np.testing.assert_allclose(scored.sort("key")["score"].to_numpy(), want, rtol=1e-6)
    dead = failed.sort("key")
    assert dead["key"].to_list() == list(range(20, 40))
    assert all("'b'" in e and "required" in e for e in dead["error"][:10]), dead["error"][0]
    part3 = str(folder / "part-3.parquet")
    assert all(part3 in e and "'b' is string" in e for e in dead["error"][10:])
