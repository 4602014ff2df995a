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

from beam_v1 import ScoreParquet, cli
from beam_v1.errors import SchemaError
from beam_v1.score_cli import score

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
    assert "part-0.parquet" not in err.replace(os.path.join(folder, "part-0"), "")
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
