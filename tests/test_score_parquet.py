"""ScoreParquet and `score()` over real Parquet files (SPEC §2-§6): in a pipeline, with
column maps, multi-processing, a failure mid-run, remote models and inputs.
"""

from __future__ import annotations

import glob
import json
import os
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from remote_fs import MappedFileSystem
from scoring_helpers import (
    FINAL_FILE,
    MULTI_PROCESSING,
    as_numpy,
    assert_close,
    assert_empty_dead_letter,
    check_mlp_scores,
    check_parquet_scores,
    mlp_tables,
    read_outputs,
    run_inference,
    tf_reference,
    write_mlp_parquet,
)

from beam_v1 import ScoreParquet
from beam_v1.io import staging
from beam_v1.scoring.job import score


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


SCORE_EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "4"))


def _fixed_list_file(path, writer, ids, x, nulls, row_group_size):
    """`id` and `x` (float32[4] per row, null where `nulls`) written by pyarrow, Polars or
    DuckDB as a fixed-size list column (DuckDB: a FLOAT[4] ARRAY)."""
    rows = [None if null else list(map(float, r)) for r, null in zip(x, nulls)]
    if writer == "pyarrow":
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4,
                                                   mask=pa.array(nulls, pa.bool_()))
        pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "x": column}), path,
                       row_group_size=row_group_size)
    elif writer == "polars":
        import polars as pl

        pl.DataFrame({"id": pl.Series(ids, dtype=pl.Int64),
                      "x": pl.Series(rows, dtype=pl.Array(pl.Float32, 4))}
                     ).write_parquet(path, row_group_size=row_group_size)
    else:
        import duckdb

        frame = pa.table({"id": pa.array(ids, pa.int64()),  # noqa: F841 - DuckDB reads it
                          "x": pa.array(rows, pa.list_(pa.float32()))})
        duckdb.sql(f"COPY (SELECT id, x::FLOAT[4] AS x FROM frame) TO '{path}' "
                   f"(FORMAT PARQUET, ROW_GROUP_SIZE {row_group_size})")


def test_score_fixed_size_list_null_rows(built_models, tmp_path):
    """fixed_size_list<4> inputs with random null rows, written by pyarrow, Polars and DuckDB,
    feed a [-1,4] input: rows in = scored + dead letter; each null row is in the dead letter
    with its reason, each other row of pyarrow's and Polars' files is scored, and every
    scored row equals TensorFlow's own session run on the value an independent reader
    (DuckDB; Polars for DuckDB's files) finds. pyarrow cannot decode DuckDB's NULL ARRAYs
    (duckdb/duckdb#24731): from the first slice holding one, that file's rows are dead,
    with a reason naming the file."""
    import duckdb
    import polars as pl
    from hypothesis import given, settings
    from hypothesis import strategies as st

    model = built_models["mlp"]
    writers = ["pyarrow", "polars", "duckdb"]

    @st.composite
    def cases(draw):
        return [
            (writer, draw(st.lists(st.booleans(), min_size=1, max_size=40)),
             draw(st.integers(1, 40)))
            for writer in writers
        ]

    runs = iter(range(1 << 30))

    @settings(max_examples=SCORE_EXAMPLES, deadline=None)
    @given(cases(), st.integers(0, 2**31 - 1))
    def check(files, seed):
        run = tmp_path / f"run{next(runs)}"
        os.makedirs(run / "in")
        rng = np.random.default_rng(seed)
        start, truth, nulls_of = 0, {}, {}
        for writer, nulls, group in files:
            n = len(nulls)
            ids = list(range(start, start + n))
            x = rng.standard_normal((n, 4)).astype(np.float32)
            path = str(run / "in" / f"{writer}.parquet")
            _fixed_list_file(path, writer, ids, x, nulls, group)
            if writer == "duckdb":
                read = pl.read_parquet(path).sort("id")
                got = list(zip(read["id"].to_list(), read["x"].to_list()))
            else:
                got = duckdb.sql(f"SELECT id, x FROM read_parquet('{path}') ORDER BY id"
                                 ).fetchall()
            assert [i for i, _ in got] == ids
            assert [v is None for _, v in got] == nulls
            truth.update((i, v) for i, v in got)
            nulls_of.update((i, (writer, null)) for i, null in zip(ids, nulls))
            start += n

        prefix = str(run / "out" / "s")
        summary = score(model, str(run / "in" / "*.parquet"), prefix, progress=False,
                        batch_size=16)
        _, scored = read_outputs(prefix)
        dead = pa.concat_tables([pq.read_table(p) for p in summary["dead_letter_files"]])
        scored_ids, dead_ids = scored["id"].to_pylist(), dead["id"].to_pylist()
        assert summary["rows_in"] == len(truth) == len(scored_ids) + len(dead_ids)
        assert sorted(scored_ids + dead_ids) == sorted(truth)
        assert (summary["rows_scored"], summary["rows_failed"]) == (
            len(scored_ids), len(dead_ids))
        duck_path = str(run / "in" / "duckdb.parquet")
        duck_has_null = any(null for w, null in nulls_of.values() if w == "duckdb")
        for i, error in zip(dead_ids, dead["error"].to_pylist()):
            writer, null = nulls_of[i]
            if writer == "duckdb" and duck_has_null:
                assert error.startswith(f"input file {duck_path}, row group "), error
            else:
                assert null, (i, writer, error)
                assert error == "column 'x' is null (input 'x' needs a value)"
        assert all(truth[i] is not None for i in scored_ids)
        assert {i for i, (w, null) in nulls_of.items() if w != "duckdb" and not null} <= set(
            scored_ids)
        if not duck_has_null:
            assert {i for i, (w, _) in nulls_of.items() if w == "duckdb"} <= set(scored_ids)
        if not scored_ids:
            return
        scored = scored.sort_by("id")
        x = np.array([truth[i] for i in scored["id"].to_pylist()], np.float32).reshape(-1, 4)
        want = tf_reference(model, {"x": x})
        assert_close(as_numpy(scored["scores"]), want["scores"], "scores")
        assert_close(scored["label"].to_numpy(), want["label"], "label")

    check()
