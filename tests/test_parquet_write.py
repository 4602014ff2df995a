"""WriteParquetTables: sinks side by side, and a finalize retried after a partial rename.
"""

from __future__ import annotations

import glob
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from remote_fs import MappedFileSystem


@pytest.mark.parametrize("where", ["local", "beam_filesystem"])
def test_write_parquet_tables_sinks_side_by_side(tmp_path, where):
    """Two sinks whose prefixes nest (`s` and `s-failed`) and whose shard counts are equal keep
    each other's files (Beam's own sink deletes every `s-*-of-00002` file before it renames);
    every row is written once; a shard without rows is an empty file with the schema."""
    from beam_v1.io.parquet_write import WriteParquetTables

    root = tmp_path / "bucket"
    os.makedirs(root / "out")
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.created.clear()
    prefix = {"local": str(root / "out" / "s"), "beam_filesystem": "beamv1test://out/s"}[where]
    schema = pa.schema([("id", pa.int64()), ("v", pa.float32())])
    tables = [
        pa.table({"id": np.arange(i * 10, i * 10 + n), "v": np.ones(n, np.float32)}, schema=schema)
        for i, n in enumerate([10, 0, 7, 10])
    ]
    with beam.Pipeline() as p:
        data = p | beam.Create(tables, reshuffle=False).with_output_types(pa.Table)
        _ = data | "A" >> WriteParquetTables(prefix, schema, num_shards=2)
        _ = data | "B" >> WriteParquetTables(prefix + "-failed", schema, num_shards=2)
        _ = data | "C" >> WriteParquetTables(prefix + "-auto", schema)
        _ = data | "D" >> WriteParquetTables(prefix + "-six", schema, num_shards=6)
    out = root / "out"
    want = sorted(i for t in tables for i in t["id"].to_pylist())
    for name, shards in [("s", 2), ("s-failed", 2), ("s-six", 6)]:
        files = sorted(glob.glob(str(out / f"{name}-[0-9]*-of-*.parquet")))
        assert [os.path.basename(f) for f in files] == [
            f"{name}-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)
        ]
        got = pa.concat_tables([pq.read_table(f) for f in files])
        assert got.schema == schema and sorted(got["id"].to_pylist()) == want
        if shards == 6:  # 3 tables with rows: 3 shards are empty files
            assert sorted(pq.read_metadata(f).num_rows for f in files) == [0, 0, 0, 7, 10, 10]
    auto = glob.glob(str(out / "s-auto-*-of-*.parquet"))
    assert sorted(pa.concat_tables([pq.read_table(f) for f in auto])["id"].to_pylist()) == want
    assert not glob.glob(str(out / "beam-temp-*"))
    # local files are written by pyarrow itself, other schemes through Beam's FileSystems
    assert bool(MappedFileSystem.created) == (where == "beam_filesystem")


def test_write_parquet_tables_finalize_retried_after_a_partial_rename(tmp_path):
    """A finalize that died after renaming some files completes when it runs again; a temp
    file that is neither renamed nor present is still an error."""
    from apache_beam.io.filesystem import BeamIOError

    from beam_v1.io.parquet_write import finalize

    schema = pa.schema([("a", pa.int64())])
    temp = tmp_path / "beam-temp-s-1"
    temp.mkdir()
    paths = []
    for i in range(3):
        paths.append(str(temp / f"{i}.parquet"))
        pq.write_table(pa.table({"a": [i]}, schema=schema), paths[-1])
    os.rename(paths[1], tmp_path / "s-00001-of-00003.parquet")  # the first attempt got this far
    final = finalize(paths, str(tmp_path / "s"), str(temp), schema, "snappy")
    assert [pq.read_table(f)["a"].to_pylist() for f in final] == [[0], [1], [2]]
    assert not temp.exists()
    temp.mkdir()
    with pytest.raises(BeamIOError):
        finalize([str(temp / "lost.parquet")], str(tmp_path / "t"), str(temp), schema, "snappy")
