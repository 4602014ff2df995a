"""Memory bounded by default (issue 14, failure 4): wide rows are batched by bytes, not only rows.

Parquet files of ~1 MiB binary values in row groups of 24 rows are scored with the string
lookup model (`word` string [-1] -> `id`, `score`); the summary must report batches within the
byte budget, and every row must be scored with the values a direct session run gives.
"""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import beam_v1
from beam_v1.cli import main as cli
from beam_v1.scoring.options import DEFAULT_MAX_BATCH_BYTES

MIB = 2**20
ROW_GROUP = 24


def write_blobs(path: str, rows: int, value_bytes: int, seed: int = 0) -> list[bytes]:
    """`rows` binary values of ~`value_bytes` (every 7th row is the vocabulary word "banana"),
    in row groups of ROW_GROUP rows, with an `i` column; returns the values."""
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 256, value_bytes, dtype=np.uint8).tobytes()
    words = [b"banana" if i % 7 == 3 else blob[i:] for i in range(rows)]
    table = pa.table({"i": pa.array(range(rows), pa.int64()), "word": pa.array(words, pa.binary())})
    pq.write_table(table, path, row_group_size=ROW_GROUP, use_dictionary=False)
    return words


def run_score(model: str, tmp_path, extra: list[str], capsys) -> tuple[dict, str]:
    prefix = str(tmp_path / "out" / "blobs")
    argv = [
        "score", "--model", model, "--input", str(tmp_path / "in.parquet"), "--output", prefix,
        "--quiet", "--direct_running_mode=in_memory", *extra,
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    with open(f"{prefix}-summary.json") as f:
        return json.load(f), out


def check_scores(model: str, summary: dict, words: list[bytes]) -> None:
    """Every row scored once, with a direct session run's values (read back by DuckDB)."""
    got = duckdb.sql(
        f"SELECT i, id, score FROM read_parquet({summary['files_written']!r}) ORDER BY i"
    ).fetchall()
    assert [r[0] for r in got] == list(range(len(words)))
    with beam_v1.load(model) as session:
        want = session.predict({"word": np.array(words, dtype=object)})
    assert [r[1] for r in got] == want["id"].tolist()
    np.testing.assert_array_equal(np.array([r[2] for r in got], np.float32), want["score"])


def test_default_budget_splits_wide_rows(built_models, tmp_path, capsys):
    """96 rows of 1 MiB (96 MiB) with no flag: several batches, none over the default budget."""
    model = built_models["string_lookup"]
    rows = 96
    words = write_blobs(str(tmp_path / "in.parquet"), rows, MIB)
    summary, out = run_score(model, tmp_path, [], capsys)
    assert summary["rows_in"] == summary["rows_scored"] == rows
    assert summary["rows_failed"] == 0
    assert summary["batches"] >= 2  # row count alone (65,536) made one 96 MiB batch
    assert 0 < summary["largest_batch_bytes"] <= DEFAULT_MAX_BATCH_BYTES
    assert 0 < summary["largest_batch_rows"] < rows
    assert summary["largest_batch_bytes"] >= DEFAULT_MAX_BATCH_BYTES // 2  # not needlessly small
    assert f"largest      {summary['largest_batch_rows']:,} rows" in out
    check_scores(model, summary, words)


def test_max_batch_bytes_flag_is_the_knob(built_models, tmp_path, capsys):
    """--max-batch-bytes 1 MiB over rows of ~256 KiB: at most 4 of them (and a short "banana")
    per batch, all scored."""
    model = built_models["string_lookup"]
    rows = 60
    words = write_blobs(str(tmp_path / "in.parquet"), rows, 256 * 1024, seed=1)
    summary, _ = run_score(model, tmp_path, ["--max-batch-bytes", str(MIB)], capsys)
    assert summary["rows_in"] == summary["rows_scored"] == rows
    assert summary["largest_batch_bytes"] <= MIB
    assert 4 <= summary["largest_batch_rows"] <= 5
    assert summary["batches"] >= rows // 5
    check_scores(model, summary, words)


def test_row_budget_still_applies_to_narrow_rows(built_models, tmp_path, capsys):
    """Small rows: the byte budget does not shrink batches; --batch-size bounds them."""
    model = built_models["string_lookup"]
    rows = 100
    words = write_blobs(str(tmp_path / "in.parquet"), rows, 16, seed=2)
    summary, _ = run_score(model, tmp_path, ["--batch-size", "30"], capsys)
    assert summary["rows_scored"] == rows
    assert summary["largest_batch_rows"] == 30
    assert summary["largest_batch_bytes"] < DEFAULT_MAX_BATCH_BYTES
    check_scores(model, summary, words)


def test_oversized_row_is_scored_alone(built_models, tmp_path, capsys):
    """A row larger than the budget is one batch of its own, not dropped and not merged."""
    model = built_models["string_lookup"]
    words = write_blobs(str(tmp_path / "in.parquet"), 10, 2 * MIB, seed=3)
    summary, _ = run_score(model, tmp_path, ["--max-batch-bytes", str(MIB)], capsys)
    assert summary["rows_scored"] == 10
    assert summary["largest_batch_rows"] == 1
    assert summary["largest_batch_bytes"] > MIB
    check_scores(model, summary, words)


def test_non_positive_budget_is_refused(built_models):
    with pytest.raises(ValueError, match="max_batch_bytes must be positive"):
        beam_v1.RunV1Inference(built_models["string_lookup"], max_batch_bytes=0)


def test_write_blobs_layout(tmp_path):
    """The test data is what the tests claim: row groups of ROW_GROUP rows, plain binary."""
    path = str(tmp_path / "b.parquet")
    write_blobs(path, 50, 1000)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [24, 24, 2]
    assert "RLE_DICTIONARY" not in meta.row_group(0).column(1).encodings
    assert pq.read_table(path).column("word").nbytes > 40 * 1000
