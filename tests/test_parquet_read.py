"""ReadParquetRowGroups: each row read once, big row groups in slices, memory bounded.
"""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from remote_fs import MappedFileSystem


def _row_group_files(folder, sizes_and_groups):
    """Parquet files of ids; each (rows, row_group_size) gives one file. Returns all ids."""
    os.makedirs(folder, exist_ok=True)
    start, expected_groups = 0, 0
    for i, (rows, group) in enumerate(sizes_and_groups):
        ids = pa.array(np.arange(start, start + rows, dtype=np.int64))
        pq.write_table(pa.table({"id": ids}), os.path.join(folder, f"part-{i}.parquet"),
                       row_group_size=group)
        expected_groups += pq.ParquetFile(os.path.join(folder, f"part-{i}.parquet")).num_row_groups
        start += rows
    return list(range(start)), expected_groups


@pytest.mark.parametrize("where", ["local", "beam_filesystem"])
def test_read_parquet_row_groups_reads_each_row_once(tmp_path, where):
    from beam_v1.io.parquet_read import ReadParquetRowGroups, reading_parquet

    root = tmp_path / "bucket"
    ids, groups = _row_group_files(str(root / "in"), [(250, 100), (40, 1000), (0, 10)])
    assert groups == 3 + 1 + 1  # an empty file still holds one empty row group
    pattern = {
        "local": str(root / "in" / "*.parquet"),
        "beam_filesystem": "beamv1test://in/*.parquet",
    }[where]
    MappedFileSystem.ROOT = str(root)
    MappedFileSystem.opened.clear()
    out = str(tmp_path / "ids")
    with beam.Pipeline() as p:
        _ = (
            p
            | ReadParquetRowGroups(pattern)
            | beam.Map(lambda t: (t.num_rows, t["id"].to_pylist()))
            | beam.Map(json.dumps)
            | beam.io.WriteToText(out)
        )
    tables = [json.loads(line) for name in glob.glob(out + "*") for line in open(name)]
    # narrow rows: one slice per row group; the empty file's row group gives no table
    assert len(tables) == groups - 1
    assert sorted(i for _, got in tables for i in got) == ids
    assert sorted(n for n, _ in tables) == [40, 50, 100, 100]
    opened = set(MappedFileSystem.opened)
    if where == "beam_filesystem":  # other schemes go through Beam's FileSystems
        assert opened == {f"beamv1test://in/part-{i}.parquet" for i in range(3)}
    else:  # local files are opened by pyarrow itself
        assert opened == set()
        with reading_parquet(pattern.replace("*", "part-0")) as parquet:
            assert parquet.metadata.num_rows == 250


def test_read_parquet_row_groups_reads_big_row_groups_in_slices(tmp_path):
    """A row group bigger than `slice_bytes` arrives as several tables of about that size,
    which together hold each row of the file once, with its values (DuckDB reads the file)."""
    from beam_v1.io.parquet_read import ReadParquetRowGroups

    rows, width = 5000, 16
    rng = np.random.default_rng(3)
    values = rng.standard_normal((rows, width)).astype(np.float32)
    table = pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width),
    })
    path = str(tmp_path / "in.parquet")
    pq.write_table(table, path, row_group_size=2000)  # groups of 2000, 2000, 1000 rows
    per_row = 8 + 4 * width
    slice_bytes = 300 * per_row
    out = str(tmp_path / "slices")
    with beam.Pipeline() as p:
        _ = (
            p
            | ReadParquetRowGroups(path, slice_bytes=slice_bytes)
            | beam.Map(lambda t: json.dumps([t.num_rows, t["id"].to_pylist(),
                                             t["x"].to_pylist()]))
            | beam.io.WriteToText(out)
        )
    got = [json.loads(line) for name in glob.glob(out + "*") for line in open(name)]
    sizes = [n for n, _, _ in got]
    assert len(got) >= 5000 // 300  # row groups split, not read whole
    assert max(sizes) < 2 * 300  # about slice_bytes each (the footer's uncompressed bytes)
    by_id = {i: x for _, ids_, xs in got for i, x in zip(ids_, xs)}
    assert sorted(i for _, ids_, _ in got for i in ids_) == list(range(rows))
    truth = duckdb.sql(f"SELECT id, x FROM read_parquet('{path}') ORDER BY id").fetchall()
    assert len(truth) == rows
    for i, x in truth[::97]:
        assert by_id[i] == pytest.approx(list(x))


def test_reading_row_groups_leaves_no_arrow_memory_behind(tmp_path):
    """While the reader hands on a table, the Arrow memory alive besides it does not grow
    with the row groups read: earlier row groups of the files the reader keeps open are not
    still allocated (a whole-row-group read left about one row group allocated per open file,
    up to 4 files). Measured downstream in the reader's fused stage with Arrow's own
    allocation counter, not RSS."""
    from apache_beam.metrics import Metrics

    from beam_v1.io.parquet_read import ReadParquetRowGroups

    rows, width, group = 40_000, 64, 20_000
    rng = np.random.default_rng(5)
    for f in range(3):
        values = rng.standard_normal((rows, width)).astype(np.float32)
        pq.write_table(
            pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width)}),
            str(tmp_path / f"part-{f}.parquet"), row_group_size=group,
        )
    group_bytes = group * width * 4

    class Probe(beam.DoFn):
        def __init__(self):
            self.other = Metrics.distribution("test", "other_arrow_bytes")
            self.rows = Metrics.counter("test", "rows")

        def process(self, table):
            self.other.update(max(0, pa.total_allocated_bytes() - table.nbytes))
            self.rows.inc(table.num_rows)

    p = beam.Pipeline()
    _ = p | ReadParquetRowGroups(str(tmp_path / "*.parquet")) | beam.ParDo(Probe())
    result = p.run()
    result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace("test"))
    assert sum(c.committed for c in metrics["counters"]) == 3 * rows
    (other,) = [d.committed for d in metrics["distributions"]]
    assert other.count == 6  # each row group of each file fits one slice
    # the decoder's own buffers for the slice in hand are there every time; what must not
    # be there is memory that grows with the row groups already read
    assert other.max - other.min < group_bytes / 2, (
        f"other Arrow bytes alive grew from {other.min:,} to {other.max:,}"
    )
