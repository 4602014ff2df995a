"""Read time of a fixed_size_list<100> float32 Parquet file through beam-v1's row-group slice
reader (`SliceReader.slices`, what `ReadParquetRowGroups` runs per row group) against
pyarrow's slice loop alone (`ParquetFile.iter_batches` per row group, the reader before null
fixed-size rows were handled), in one process, interleaved, same slice sizes.

Three files of ROWS rows (id int64 + x fixed_size_list<100> float32, row groups of 131,072):
- plain: no null row; both readers run on it (the cost of the null handling on files that do
  not need it; the acceptance figure is the ratio of the two);
- nulls: 1% null rows, which pyarrow's reader refuses; only SliceReader reads it (read as
  lists, rebuilt as fixed_size_list with the null rows null).

  python benchmarks/bench_fixed_lists.py [--rows 2000000] [--repeats 9] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_v1.io.parquet_read import SliceReader, open_for_slices, slice_rows

WIDTH, GROUP = 100, 131_072


def write(path: str, rows: int, null_share: float, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), WIDTH))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            mask = pa.array(rng.random(n) < null_share) if null_share else None
            x = pa.FixedSizeListArray.from_arrays(
                pa.array(rng.standard_normal(n * WIDTH, dtype=np.float32)), WIDTH, mask=mask
            )
            writer.write_table(pa.table({"id": np.arange(start, start + n), "x": x}))


def pyarrow_slices(path: str) -> int:
    parquet = open_for_slices(path)
    rows = 0
    for i in range(parquet.metadata.num_row_groups):
        meta = parquet.metadata.row_group(i)
        for batch in parquet.iter_batches(batch_size=slice_rows(meta), row_groups=[i]):
            rows += pa.Table.from_batches([batch]).num_rows
    parquet.close(force=True)
    return rows


def slice_reader(path: str) -> int:
    reader = SliceReader(path)
    rows = 0
    for i in range(reader.parquet.metadata.num_row_groups):
        for table in reader.slices(i, slice_rows(reader.parquet.metadata.row_group(i))):
            rows += table.num_rows
    reader.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-fixed-lists-")
    plain, nulls = os.path.join(work, "plain.parquet"), os.path.join(work, "nulls.parquet")
    write(plain, args.rows, 0.0)
    write(nulls, args.rows, 0.01, seed=1)
    runs = [("pyarrow_slices_plain", pyarrow_slices, plain),
            ("slice_reader_plain", slice_reader, plain),
            ("slice_reader_nulls", slice_reader, nulls)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for r in range(args.repeats):
        for name, read, path in runs if r % 2 == 0 else runs[::-1]:
            started = time.perf_counter()
            assert read(path) == args.rows, name
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["pyarrow_slices_plain"])
    result = {
        "rows": args.rows, "width": WIDTH, "repeats": args.repeats,
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "min_s": {k: round(min(v), 3) for k, v in times.items()},
        "ratio_to_pyarrow_slices_plain": {
            k: round(statistics.median(v) / base, 3) for k, v in times.items()
        },
    }
    print(json.dumps(result, indent=1))
    for path in (plain, nulls):
        os.remove(path)


if __name__ == "__main__":
    main()
