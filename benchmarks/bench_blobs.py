"""Peak memory of `beam-v1 score` on wide rows (issue 14, "Memory bounded by default").

Generates Parquet files of 2 MB binary values in row groups of 25 rows (plain encoding, no
compression), builds a tf.compat.v1 model that takes the values as a string input (`blob`
string [-1] -> `length` int32 = tf.strings.length, `score` float32), and runs
`python -m beam_v1 score` on each size with no memory flag, as a whole process. The peak RSS
of the process tree (the sum over the process and its children, polled from /proc by psutil
every 50 ms) is recorded. The baseline "imports only" is a
process that imports tensorflow, apache_beam, pyarrow and beam_v1 and loads the model. Every
run's summary must show rows in = rows scored; a sample of output lengths is checked against
the input. Generated data is deleted after each size.

  python benchmarks/bench_blobs.py --sizes-gb 1.5,6 [--work /tmp/bench-blobs] [--out FILE.json]

`--probe-row-group-mb M` instead measures how much Arrow memory reading one row group of M MB
takes through `read_row_group`, `iter_batches` over that row group alone, and the dataset
scanner (each in its own process): whether a big row group can be read in bounded slices.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

VALUE_BYTES = 2 * 10**6
ROW_GROUP = 25
ROWS_PER_FILE = 250  # 500 MB files


def build_model(path: str) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        blob = v1.placeholder(tf.string, [None], name="blob")
        length = tf.strings.length(blob, name="length")
        score = tf.multiply(tf.cast(length, tf.float32), 0.5, name="score")
        info = v1.saved_model.utils.build_tensor_info
        sig = v1.saved_model.signature_def_utils.build_signature_def(
            {"blob": info(blob)}, {"length": info(length), "score": info(score)}, "predict"
        )
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(sess, ["serve"], {"serving_default": sig})
            builder.save()


def write_data(
    folder: str, rows: int, row_group: int = ROW_GROUP, files: int | None = None
) -> None:
    """`rows` values of VALUE_BYTES (each distinct) in files of ROWS_PER_FILE rows (or in
    `files` files), row groups of `row_group` rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder)
    base = np.random.default_rng(0).integers(0, 256, VALUE_BYTES, dtype=np.uint8).tobytes()
    schema = pa.schema([("id", pa.int64()), ("blob", pa.binary())])
    per_file = -(-rows // files) if files else ROWS_PER_FILE
    for f, start in enumerate(range(0, rows, per_file)):
        stop = min(rows, start + per_file)
        with pq.ParquetWriter(
            os.path.join(folder, f"part-{f:05d}.parquet"), schema,
            compression="none", use_dictionary=False,
        ) as writer:
            for g in range(start, stop, row_group):
                ids = range(g, min(stop, g + row_group))
                values = [i.to_bytes(8, "little") + base[8:] for i in ids]
                table = pa.table({"id": list(ids), "blob": values}, schema=schema)
                writer.write_table(table, row_group_size=row_group)


def measure(cmd: list[str], env: dict) -> dict:
    """Run `cmd`: its wall time and the peak RSS of its process tree (psutil polling)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    done = threading.Event()

    def poll():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    done.set()
    poller.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited {proc.returncode}:\n{err.decode()[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "tree_peak_rss_mb": round(peak / 2**20),
        "stdout": out.decode(),
    }


IMPORTS = """
import sys, tensorflow, apache_beam, pyarrow, pyarrow.parquet, beam_v1, beam_v1.scoring.transforms
m = beam_v1.load(sys.argv[1]); m.predict({"blob": [b"x"]}); m.close()
"""


PROBE = """
import sys, pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
path, how = sys.argv[1], sys.argv[2]
first = None
if how == "read_row_group":
    pq.ParquetFile(path).read_row_group(0)
elif how == "iter_batches":
    f = pq.ParquetFile(pa.OSFile(path), pre_buffer=False, buffer_size=2**20)
    for b in f.iter_batches(batch_size=16, row_groups=[0]):
        first = first or pa.total_allocated_bytes()
else:
    opts = ds.ParquetFragmentScanOptions(pre_buffer=False, buffer_size=2**20)
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=opts)
    for b in ds.dataset(path, format=fmt).to_batches(
        batch_size=16, batch_readahead=0, fragment_readahead=0, use_threads=False
    ):
        first = first or pa.total_allocated_bytes()
print(pa.default_memory_pool().max_memory() >> 20, (first or 0) >> 20)
"""


def probe_row_group(work: str, megabytes: int) -> dict:
    """Arrow pool peak (MB) and bytes allocated after the first batch, per way of reading."""
    path = os.path.join(work, "one-row-group.parquet")
    rows = megabytes * 10**6 // VALUE_BYTES
    write_data(os.path.join(work, "probe"), rows, row_group=rows, files=1)
    os.rename(os.path.join(work, "probe", "part-00000.parquet"), path)
    found = {}
    for how in ("read_row_group", "iter_batches", "dataset"):
        out = subprocess.run(
            [sys.executable, "-c", PROBE, path, how], capture_output=True, check=True, text=True
        ).stdout.split()
        found[how] = {"pool_peak_mb": int(out[0]), "after_first_batch_mb": int(out[1])}
        print(how, found[how], flush=True)
    return found


def check_outputs(prefix: str, rows: int) -> None:
    import pyarrow.parquet as pq

    with open(f"{prefix}-summary.json") as f:
        summary = json.load(f)
    assert summary["rows_in"] == summary["rows_scored"] == rows, summary
    table = pq.read_table(summary["files_written"][0], columns=["id", "length"])
    assert table.num_rows and all(n == VALUE_BYTES for n in table["length"].to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-gb", default="1.5,6")
    parser.add_argument("--work", default="/tmp/bench-blobs")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--extra", default="", help="extra flags for `beam_v1 score`")
    parser.add_argument("--probe-row-group-mb", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    if args.probe_row_group_mb:
        try:
            probe_row_group(args.work, args.probe_row_group_mb)
        finally:
            shutil.rmtree(args.work, ignore_errors=True)
        return
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    model = os.path.join(args.work, "model")
    build_model(model)
    results = {"imports": measure([sys.executable, "-c", IMPORTS, model], env)}
    results["imports"].pop("stdout")
    print(f"imports only: {results['imports']}", flush=True)
    try:
        for gb in [float(s) for s in args.sizes_gb.split(",")]:
            rows = int(gb * 10**9 / VALUE_BYTES)
            data = os.path.join(args.work, f"data-{gb}")
            write_data(data, rows)
            prefix = os.path.join(args.work, f"out-{gb}", "scored")
            cmd = [
                sys.executable, "-m", "beam_v1", "score", "--model", model,
                "--input", os.path.join(data, "*.parquet"), "--output", prefix, "--quiet",
                *args.extra.split(),
            ]
            run = measure(cmd, env)
            check_outputs(prefix, rows)
            with open(f"{prefix}-summary.json") as f:
                summary = json.load(f)
            run.pop("stdout")
            run.update(
                rows=rows,
                input_gb=round(sum(os.path.getsize(p) for p in glob.glob(f"{data}/*")) / 1e9, 2),
                batches=summary["batches"],
                largest_batch_rows=summary["largest_batch_rows"],
                largest_batch_bytes=summary["largest_batch_bytes"],
                command=" ".join(cmd),
            )
            results[f"{gb} GB"] = run
            print(f"{gb} GB: {run}", flush=True)
            shutil.rmtree(data)
            shutil.rmtree(os.path.dirname(prefix))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    base = results["imports"]["tree_peak_rss_mb"]
    for key, run in results.items():
        if key != "imports":
            run["over_imports_mb"] = run["tree_peak_rss_mb"] - base
            print(f"{key}: peak {run['tree_peak_rss_mb']} MB = imports {base} MB "
                  f"+ {run['over_imports_mb']} MB (budget: + 1024 MB)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
