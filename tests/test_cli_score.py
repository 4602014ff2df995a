"""`beam-v1 score` and `python -m beam_v1 score` end to end on real Parquet files.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scoring_helpers import (
    FINAL_FILE,
    as_numpy,
    assert_close,
    check_parquet_scores,
    read_outputs,
    tf_reference,
    write_mlp_parquet,
)

from beam_v1.cli import main as cli

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


def test_relative_paths_without_a_folder(built_models, tmp_path, monkeypatch):
    """Beam's LocalFileSystem matches nothing for a relative glob with no folder part
    (`part-*.parquet`): the input was "not found" and the summary listed no files."""
    written = write_mlp_parquet(str(tmp_path), n_files=2, rows=30)
    monkeypatch.chdir(tmp_path)
    for run in range(2):  # the second run replaces the first one's files
        argv = ["score", "--model", built_models["mlp"], "--input", "part-*.parquet",
                "--output", "scored", "--outputs", "label", "--num-shards", "2", "--quiet"]
        assert cli.main(argv) == 0, run
        with open("scored-summary.json") as f:
            summary = json.load(f)
        assert summary["rows_in"] == summary["rows_scored"] == 60
        shards = sorted(str(tmp_path / n) for n in glob.glob("scored-0*-of-*.parquet"))
        assert summary["files_written"] == shards and len(shards) == 2
    scored = pa.concat_tables([pq.read_table(n) for n in shards]).sort_by("id")
    want = tf_reference(built_models["mlp"], {"x": np.concatenate([w[1] for w in written])})
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])
