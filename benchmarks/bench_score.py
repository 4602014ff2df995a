"""Side-by-side benchmark of scoring a TF1 SavedModel over Parquet (issue 4, "Benchmark").

One run builds one model (a tf.compat.v1 MLP 100->256->10, input `x` float32 [-1,100], output
`scores` [-1,10]) and one Parquet data set (`id` int64, `x` fixed_size_list<float32, 100>, a few
files, row groups of --row-group-size rows), then measures on them:

  (a)    bare loop: pyarrow `ParquetFile.iter_batches` -> numpy -> one C++ session callable run per
         batch -> `pq.ParquetWriter`;  (a-rg) the same reading `read_row_group`
  (b)    `beam-v1 score ... --quiet` on the DirectRunner (a subprocess)
  (b2)   the same with --direct_running_mode=multi_processing --direct_num_workers=2
  (c)    the per-element route: `beam.io.ReadFromParquet` (one dict per row) -> `RunInference`
         with a small session ModelHandler -> `WriteToParquet` (on a subset)
  (d)    the per-row `sess.run(feed_dict=...)` loop of hand-written TF1 code (on a subset)
  @fixed (a), (b), (b2) on a 1,000-row file: fixed costs, subtracted for steady-state rates
  (a-ov) on request: (a) with the session in a second thread, one batch in flight
  b:NAME on request: (b) with a patched copy of beam_v1 (--b-variant) or extra flags (--b-args)
  memory on request: (b)'s pipeline in one process, sampled: RSS at peak split into Arrow's pool,
         glibc malloc (in use, free but held, mmapped) and the rest (--memory-pools: per pool)

Every variant runs in its own process; wall time, CPU time and peak RSS (the process, and the
sum over its process tree, sampled from /proc) are measured from outside. rows/s uses the time
of the work itself ("work s": model load, read, score, write; not the interpreter and TensorFlow
import), measured inside each process; the whole-process rate is reported too. Outputs are checked:
(a) and (b)/(b2) must hold every id once and agree on a sample of scores; (c) and (d) agree with
(a) on their subset. Then the product's per-batch path and an in-process DirectRunner run are
profiled with cProfile. Results: OUT/results.json and OUT/results.md.

  python benchmarks/bench_score.py --rows 2000000 [--big-rows 10000000] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

N_IN, N_HIDDEN, N_OUT = 100, 256, 10
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULT_TAG = "BENCH_RESULT "
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ============================================================================ model and data


def build_model(path: str, seed: int = 0) -> str:
    """A TF1 graph-mode MLP saved with tf.compat.v1.saved_model.Builder (no Keras)."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, N_IN], name="x")
        w1 = tf.compat.v1.Variable(
            (rng.standard_normal((N_IN, N_HIDDEN)) / np.sqrt(N_IN)).astype(np.float32), name="w1"
        )
        b1 = tf.compat.v1.Variable(np.full(N_HIDDEN, 0.01, np.float32), name="b1")
        w2 = tf.compat.v1.Variable(
            (rng.standard_normal((N_HIDDEN, N_OUT)) / np.sqrt(N_HIDDEN)).astype(np.float32),
            name="w2",
        )
        b2 = tf.compat.v1.Variable(np.zeros(N_OUT, np.float32), name="b2")
        hidden = tf.nn.relu(tf.matmul(x, w1) + b1)
        scores = tf.nn.softmax(tf.matmul(hidden, w2) + b2, name="scores")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            signature = tf.compat.v1.saved_model.predict_signature_def(
                inputs={"x": x}, outputs={"scores": scores}
            )
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()
    return path


def write_data(
    folder: str, rows: int, rows_per_file: int, row_group_size: int, seed: int = 1
) -> list[str]:
    """Parquet files: `id` int64 (0..rows-1) and `x` fixed_size_list<float32, 100>."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    start = 0
    while start < rows:
        n = min(rows_per_file, rows - start)
        path = os.path.join(folder, f"part-{len(paths):05d}.parquet")
        with pq.ParquetWriter(path, _input_schema(), compression="snappy") as writer:
            for g in range(0, n, row_group_size):
                m = min(row_group_size, n - g)
                x = rng.standard_normal((m, N_IN), dtype=np.float32)
                table = pa.table(
                    {
                        "id": pa.array(np.arange(start + g, start + g + m, dtype=np.int64)),
                        "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), N_IN),
                    },
                    schema=_input_schema(),
                )
                writer.write_table(table, row_group_size=row_group_size)
        paths.append(path)
        start += n
    return paths


def write_subset(source_files: list[str], folder: str, rows: int, files: int = 2) -> list[str]:
    """The first `rows` rows of the data set (same ids and values), as `files` files."""
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    tables, have = [], 0
    for path in source_files:
        t = pq.read_table(path)
        tables.append(t)
        have += t.num_rows
        if have >= rows:
            break
    import pyarrow as pa

    table = pa.concat_tables(tables).slice(0, rows)
    per = -(-rows // files)
    paths = []
    for i in range(files):
        part = table.slice(i * per, per)
        if part.num_rows:
            path = os.path.join(folder, f"part-{i:05d}.parquet")
            pq.write_table(part, path, row_group_size=per, compression="snappy")
            paths.append(path)
    return paths


def _input_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32(), N_IN))])


def _output_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("scores", pa.list_(pa.float32(), N_OUT))])


def _scores_column(scores: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(scores.reshape(-1)), N_OUT)


def _load_session(model_dir: str):
    """tf.compat.v1 loader: (session, x tensor name, scores tensor name)."""
    import tensorflow as tf

    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], model_dir)
    sig = meta.signature_def["serving_default"]
    return sess, sig.inputs["x"].name, sig.outputs["scores"].name


# ============================================================================ workers


def worker_bare(model: str, pattern: str, out_dir: str, reader: str, batch_rows: int) -> dict:
    """(a): pyarrow read -> numpy -> C++ session callable -> ParquetWriter, timed per stage."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tensorflow.core.protobuf import config_pb2

    stages = dict.fromkeys(("load", "read", "convert", "session", "convert_back", "write"), 0.0)
    started = time.perf_counter()
    sess, x_name, scores_name = _load_session(model)
    run = sess._make_callable_from_options(
        config_pb2.CallableOptions(feed=[x_name], fetch=[scores_name])
    )
    stages["load"] = time.perf_counter() - started
    os.makedirs(out_dir, exist_ok=True)
    rows = batches = 0
    for i, path in enumerate(sorted(glob.glob(pattern))):
        t = time.perf_counter()
        pf = pq.ParquetFile(path)
        if reader == "iter_batches":
            source = pf.iter_batches(batch_size=batch_rows)
        else:
            source = (pf.read_row_group(g) for g in range(pf.num_row_groups))
        writer = pq.ParquetWriter(
            os.path.join(out_dir, f"part-{i:05d}.parquet"), _output_schema(), compression="snappy"
        )
        stages["write"] += time.perf_counter() - t
        while True:
            t0 = time.perf_counter()
            batch = next(source, None)
            t1 = time.perf_counter()
            stages["read"] += t1 - t0
            if batch is None:
                break
            xcol = batch.column("x")
            if isinstance(xcol, pa.ChunkedArray):
                xcol = xcol.chunk(0) if xcol.num_chunks == 1 else xcol.combine_chunks()
            x = xcol.flatten().to_numpy(zero_copy_only=True).reshape(-1, N_IN)
            t2 = time.perf_counter()
            (scores,) = run(x)
            t3 = time.perf_counter()
            out = pa.Table.from_arrays(
                [batch.column("id"), _scores_column(scores)], schema=_output_schema()
            )
            t4 = time.perf_counter()
            writer.write_table(out)
            t5 = time.perf_counter()
            stages["convert"] += t2 - t1
            stages["session"] += t3 - t2
            stages["convert_back"] += t4 - t3
            stages["write"] += t5 - t4
            rows += batch.num_rows
            batches += 1
        t = time.perf_counter()
        writer.close()
        stages["write"] += time.perf_counter() - t
    seconds = time.perf_counter() - started
    return {"rows": rows, "batches": batches, "seconds": seconds, "stages": stages}


def worker_bare_overlap(model: str, pattern: str, out_dir: str, batch_rows: int) -> dict:
    """(a-ov): (a) with the session run in a second thread, one batch in flight, so reading
    and writing (pyarrow) overlap the session (TensorFlow); both release the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tensorflow.core.protobuf import config_pb2

    started = time.perf_counter()
    sess, x_name, scores_name = _load_session(model)
    run = sess._make_callable_from_options(
        config_pb2.CallableOptions(feed=[x_name], fetch=[scores_name])
    )
    os.makedirs(out_dir, exist_ok=True)
    rows = batches = 0
    with ThreadPoolExecutor(1) as pool:
        for i, path in enumerate(sorted(glob.glob(pattern))):
            writer = pq.ParquetWriter(
                os.path.join(out_dir, f"part-{i:05d}.parquet"),
                _output_schema(),
                compression="snappy",
            )
            pending = None
            for batch in [*pq.ParquetFile(path).iter_batches(batch_size=batch_rows), None]:
                future = None
                if batch is not None:
                    x = batch.column("x").flatten().to_numpy(zero_copy_only=True)
                    future = pool.submit(run, x.reshape(-1, N_IN))
                if pending is not None:  # write the previous batch while this one runs
                    done, (scores,) = pending[0], pending[1].result()
                    writer.write_table(
                        pa.Table.from_arrays(
                            [done.column("id"), _scores_column(scores)], schema=_output_schema()
                        )
                    )
                    rows += done.num_rows
                    batches += 1
                pending = (batch, future) if batch is not None else None
            writer.close()
    seconds = time.perf_counter() - started
    return {"rows": rows, "batches": batches, "seconds": seconds, "stages": {}}


def worker_perrow(model: str, pattern: str, out_dir: str, rows: int) -> dict:
    """(d): hand-written TF1 code: one sess.run with a feed_dict per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started = time.perf_counter()
    sess, x_name, scores_name = _load_session(model)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(glob.glob(pattern))).slice(0, rows)
    x = table.column("x").combine_chunks().flatten().to_numpy().reshape(-1, N_IN)
    loaded = time.perf_counter()
    out = np.empty((len(x), N_OUT), np.float32)
    for i in range(len(x)):
        out[i] = sess.run(scores_name, feed_dict={x_name: x[i : i + 1]})[0]
    scored = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(
        pa.Table.from_arrays([table.column("id"), _scores_column(out)], schema=_output_schema()),
        os.path.join(out_dir, "part-00000.parquet"),
    )
    seconds = time.perf_counter() - started
    return {
        "rows": len(x),
        "seconds": seconds,
        "stages": {"load_read": loaded - started, "session_loop": scored - loaded},
    }


def worker_runinference(model: str, pattern: str, out_dir: str, max_batch: int) -> dict:
    """(c): ReadFromParquet (dict per row) -> RunInference(session handler) -> WriteToParquet."""
    import apache_beam as beam
    from apache_beam.ml.inference.base import (
        KeyedModelHandler,
        ModelHandler,
        PredictionResult,
        RunInference,
    )
    from apache_beam.options.pipeline_options import PipelineOptions

    class _SessionModel:
        def __init__(self, model_dir: str):
            from tensorflow.core.protobuf import config_pb2

            self.sess, x_name, scores_name = _load_session(model_dir)
            self.run = self.sess._make_callable_from_options(
                config_pb2.CallableOptions(feed=[x_name], fetch=[scores_name])
            )

    class SessionModelHandler(ModelHandler):
        """Loads a TF1 SavedModel with the tf.compat.v1 loader; runs a stacked numpy batch."""

        def __init__(self, model_dir: str, max_batch_size: int):
            super().__init__()
            self._model_dir = model_dir
            self._max_batch_size = max_batch_size

        def load_model(self):
            return _SessionModel(self._model_dir)

        def run_inference(self, batch, model, inference_args=None):
            (scores,) = model.run(np.stack(batch))
            return [PredictionResult(x, s) for x, s in zip(batch, scores)]

        def batch_elements_kwargs(self):
            return {"min_batch_size": 256, "max_batch_size": self._max_batch_size}

    def to_row(keyed):
        key, result = keyed
        return {"id": key, "scores": result.inference.tolist()}

    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        _ = (
            p
            | "Read" >> beam.io.ReadFromParquet(pattern)
            | "ToNumpy" >> beam.Map(lambda r: (r["id"], np.asarray(r["x"], dtype=np.float32)))
            | "Infer" >> RunInference(KeyedModelHandler(SessionModelHandler(model, max_batch)))
            | "ToRow" >> beam.Map(to_row)
            | "Write"
            >> beam.io.WriteToParquet(
                os.path.join(out_dir, "scored"), _output_schema(), file_name_suffix=".parquet"
            )
        )
    seconds = time.perf_counter() - started
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(f"{out_dir}/*.parquet"))
    return {"rows": rows, "seconds": seconds}


def _memory_now() -> dict:
    """RSS (MB), Arrow's allocated bytes, and glibc malloc's heap in use, free-but-held and
    mmapped chunks (mallinfo2), in MB."""
    import ctypes

    import pyarrow as pa

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) // 1024
    return {
        "rss": status.get("VmRSS", 0),
        "rss_anon": status.get("RssAnon", 0),
        "rss_file": status.get("RssFile", 0),
        "arrow": pa.total_allocated_bytes() >> 20,
        "malloc_in_use": info.uordblks >> 20,
        "malloc_free_held": info.fordblks >> 20,
        "malloc_mmapped": info.hblkhd >> 20,
    }


def worker_memory(model: str, pattern: str, out_dir: str, batch_rows: int) -> dict:
    """(memory): `ScoreParquet` on the DirectRunner in this process, sampled every 20 ms.

    Reports the memory after imports and after the run, and the sample at peak RSS split
    into Arrow's pool (`pa.total_allocated_bytes`), glibc malloc (in use, free but held,
    mmapped chunks: TensorFlow's and numpy's big buffers) and the rest (Python objects,
    code, the allocators' retained pages). ARROW_DEFAULT_MEMORY_POOL picks Arrow's pool."""
    import threading

    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_v1.scoring.transforms import ScoreParquet

    imports = _memory_now()
    samples: list[dict] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(_memory_now())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    _ = p | ScoreParquet(model, pattern, os.path.join(out_dir, "scored"), batch_size=batch_rows)
    p.run().wait_until_finish()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak = max(samples, key=lambda m: m["rss"])
    return {
        "seconds": seconds,
        "pool": pa.default_memory_pool().backend_name,
        "after_imports": imports,
        "at_peak": peak,
        "max": {k: max(m[k] for m in samples) for k in peak},
        "after_run": _memory_now(),
    }


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench_score.py _worker")
    p.add_argument(
        "kind", choices=["bare", "bare-overlap", "perrow", "runinference", "memory"]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--reader", default="iter_batches")
    p.add_argument("--batch-rows", type=int, default=65536)
    p.add_argument("--rows", type=int, default=20_000)
    a = p.parse_args(argv)
    # imports first, so "seconds" is the work, as in beam-v1's summary
    import apache_beam  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    if a.kind == "bare":
        result = worker_bare(a.model, a.input, a.output, a.reader, a.batch_rows)
    elif a.kind == "bare-overlap":
        result = worker_bare_overlap(a.model, a.input, a.output, a.batch_rows)
    elif a.kind == "perrow":
        result = worker_perrow(a.model, a.input, a.output, a.rows)
    elif a.kind == "memory":
        import beam_v1.scoring.transforms  # noqa: F401 - an import, not the work

        result = worker_memory(a.model, a.input, a.output, a.batch_rows)
    else:
        result = worker_runinference(a.model, a.input, a.output, a.batch_rows)
    print(RESULT_TAG + json.dumps(result), flush=True)


# ============================================================================ measuring


def _proc_table() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, rss bytes)} for every process, from /proc."""
    page = os.sysconf("SC_PAGE_SIZE")
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/statm") as f:
                rss = int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(name)] = (ppid, rss)
    return table


def _tree(root: int, table: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def _hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of one process so far, in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], log_path: str, poll: float = 0.1, env=None) -> dict:
    """Run `cmd`; wall time, peak RSS of its largest process and of its process tree.

    The largest process's peak comes from /usr/bin/time (%M: ru_maxrss of the child, which
    covers the descendants it waited for), with VmHWM polled from /proc as a cross-check. Not
    from this process's own wait4: on Linux a child's ru_maxrss starts at its parent's RSS at
    fork time, and this parent holds TensorFlow. The tree's peak is the sum of VmRSS over the
    process and all its descendants, sampled every `poll` seconds.
    """
    rss_file = log_path + ".maxrss"
    wrapped = cmd
    if os.path.exists("/usr/bin/time"):
        wrapped = ["/usr/bin/time", "-f", "%M %U %S", "-o", rss_file, *cmd]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        # cwd: not the repository, whose beam_v1/ would shadow a --b-variant copy in
        # `python -m` worker processes (multi_processing), where '' comes before PYTHONPATH
        proc = subprocess.Popen(
            wrapped, stdout=log, stderr=subprocess.STDOUT, cwd=os.path.dirname(log_path), env=env
        )
        peak_tree = peak_procs = peak_hwm = 0
        while proc.poll() is None:
            table = _proc_table()
            pids = [p for p in _tree(proc.pid, table) if p in table]
            if wrapped is not cmd:
                pids = [p for p in pids if p != proc.pid]  # not /usr/bin/time itself
            peak_tree = max(peak_tree, sum(table[p][1] for p in pids))
            peak_procs = max(peak_procs, len(pids))
            peak_hwm = max([peak_hwm] + [_hwm(p) for p in pids])
            time.sleep(poll)
    wall = time.perf_counter() - started
    text = Path(log_path).read_text()
    result = None
    for line in text.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}); see {log_path}:\n" + text[-3000:]
        )
    maxrss, cpu = peak_hwm, None
    if os.path.exists(rss_file):
        fields = Path(rss_file).read_text().split()
        if len(fields) >= 3 and fields[-3].isdigit():
            maxrss = max(maxrss, int(fields[-3]) * 1024)
            cpu = float(fields[-2]) + float(fields[-1])  # user + system, waited-for children too
        os.remove(rss_file)
    return {
        "wall_s": wall,
        "peak_rss_mb": maxrss / 2**20,  # the largest single process of the tree
        "cpu_s": cpu,
        "peak_hwm_polled_mb": peak_hwm / 2**20,
        "peak_tree_rss_mb": max(peak_tree, maxrss) / 2**20,
        "processes": peak_procs,
        "result": result,
        "log": log_path,
    }


def _worker_cmd(kind: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_worker", kind, *args]


def _fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    return path


def run_bare(ctx, pattern, rows, out, reader="iter_batches") -> dict:
    m = run_measured(
        _worker_cmd(
            "bare-overlap" if reader == "overlap" else "bare",
            "--model",
            ctx.model,
            "--input",
            pattern,
            "--output",
            _fresh(out),
            "--reader",
            reader,
            "--batch-rows",
            str(ctx.args.batch_size),
        ),
        out + ".log",
    )
    return _entry(m, rows, m["result"]["seconds"], out=out, stages=m["result"]["stages"])


def run_cli(ctx, pattern, rows, out, extra=(), pythonpath=None) -> dict:
    _fresh(out)
    prefix = os.path.join(out, "scored")
    cmd = [  # `python -m beam_v1`, not the console script: works for a --b-variant tree of
        # any layout (the script names the installed tree's entry point)
        sys.executable,
        "-m",
        "beam_v1",
        "score",
        "--model",
        ctx.model,
        "--input",
        pattern,
        "--output",
        prefix,
        "--quiet",
        "--batch-size",
        str(ctx.args.batch_size),
        *extra,
    ]
    env = None
    pythonpath = pythonpath or ctx.pythonpath
    if pythonpath:  # a copy of beam_v1 first on the path (--code snapshot, --b-variant)
        env = dict(os.environ, PYTHONPATH=pythonpath)
    m = run_measured(cmd, out + ".log", env=env)
    summary = json.loads(Path(prefix + "-summary.json").read_text())
    if summary["rows_in"] != rows or summary["rows_scored"] != rows:
        raise RuntimeError(f"beam-v1 scored {summary['rows_scored']} of {rows} rows: {summary}")
    return _entry(m, rows, summary["seconds"], out=out, summary=summary, cmd=" ".join(cmd))


def run_runinference(ctx, pattern, rows, out) -> dict:
    m = run_measured(
        _worker_cmd(
            "runinference",
            "--model",
            ctx.model,
            "--input",
            pattern,
            "--output",
            _fresh(out),
            "--batch-rows",
            str(ctx.args.batch_size),
        ),
        out + ".log",
    )
    if m["result"]["rows"] != rows:
        raise RuntimeError(f"RunInference wrote {m['result']['rows']} of {rows} rows")
    return _entry(m, rows, m["result"]["seconds"], out=out)


def run_perrow(ctx, pattern, rows, out) -> dict:
    m = run_measured(
        _worker_cmd(
            "perrow",
            "--model",
            ctx.model,
            "--input",
            pattern,
            "--output",
            _fresh(out),
            "--rows",
            str(rows),
        ),
        out + ".log",
    )
    return _entry(m, rows, m["result"]["seconds"], out=out, stages=m["result"]["stages"])


def _entry(m: dict, rows: int, seconds: float, **extra) -> dict:
    return {
        "rows": rows,
        "work_s": round(seconds, 3),
        "rows_per_s": rows / seconds,
        "process_s": round(m["wall_s"], 3),
        "process_rows_per_s": rows / m["wall_s"],
        "cpu_s": m["cpu_s"],
        "peak_rss_mb": round(m["peak_rss_mb"], 1),
        "peak_tree_rss_mb": round(m["peak_tree_rss_mb"], 1),
        "peak_hwm_polled_mb": round(m["peak_hwm_polled_mb"], 1),
        "processes": m["processes"],
        **extra,
    }


# ============================================================================ correctness


def read_scores(out_dir: str):
    """(ids sorted, scores in id order) from every Parquet file under out_dir but dead letters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [
        f for f in sorted(glob.glob(os.path.join(out_dir, "*.parquet"))) if "-failed-" not in f
    ]
    table = pa.concat_tables(pq.read_table(f, columns=["id", "scores"]) for f in files)
    ids = table.column("id").to_numpy()
    scores = table.column("scores").combine_chunks().flatten().to_numpy().reshape(-1, N_OUT)
    order = np.argsort(ids, kind="stable")
    return ids[order], scores[order]


def compare(reference: str, other: str, rows: int, sample: int = 20_000, seed: int = 7) -> dict:
    """Every id 0..rows-1 once in `other`, and its scores equal `reference`'s on a sample."""
    ref_ids, ref_scores = read_scores(reference)
    ids, scores = read_scores(other)
    ids_ok = len(ids) == rows and bool(np.array_equal(ids, np.arange(rows)))
    ref_ok = bool(np.array_equal(ref_ids, np.arange(len(ref_ids))))
    rng = np.random.default_rng(seed)
    pick = rng.choice(min(rows, len(ref_ids), len(ids)), size=min(sample, rows), replace=False)
    a, b = ref_scores[pick], scores[pick]
    diff = float(np.max(np.abs(a - b))) if len(pick) else 0.0
    return {
        "rows_checked": int(len(ids)),
        "ids_each_once": ids_ok and ref_ok,
        "sample": int(len(pick)),
        "max_abs_diff": diff,
        "identical": bool(np.array_equal(a, b)),
        "ok": ids_ok and ref_ok and bool(np.allclose(a, b, rtol=1e-5, atol=1e-6)),
    }


# ============================================================================ profile


def profile(ctx, pattern: str, out: str) -> dict:
    """Where the time of beam-v1's path goes: the per-batch scorer, then a DirectRunner run."""
    import cProfile
    import pstats

    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.options.pipeline_options import PipelineOptions

    import beam_v1
    from beam_v1.scoring import columns
    from beam_v1.scoring.scorer import BatchScorer
    from beam_v1.scoring.transforms import ScoreParquet

    files = sorted(glob.glob(pattern))
    size = ctx.args.batch_size
    model = beam_v1.load(ctx.model)
    schema = pq.read_schema(files[0])
    plan = columns.make_plan(model.signature(), schema, required_inputs=model.required_inputs())
    scorer = BatchScorer(model, plan, schema)
    pf = pq.ParquetFile(files[0])
    # a batch as the DoFn sees it: row groups merged, then sliced to the batch size
    merged = pa.concat_tables(pf.read_row_group(g) for g in range(min(2, pf.num_row_groups)))
    batch = merged.slice(0, size)
    single = pa.Table.from_batches(batch.combine_chunks().to_batches())
    reps = 8

    def timed(fn, *a):
        fn(*a)  # warm
        best = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(*a)
            best.append(time.perf_counter() - t)
        return statistics.median(best)

    feeds = columns.to_feeds(batch, plan)
    fetched = model.predict(feeds.groups[0][1], outputs=list(plan.output_keys))
    x = batch.column("x").combine_chunks().flatten().to_numpy().reshape(-1, N_IN)
    from tensorflow.core.protobuf import config_pb2

    sig = model.signature()
    raw_run = model.session._make_callable_from_options(
        config_pb2.CallableOptions(
            feed=[sig.inputs["x"].tensor_name], fetch=[sig.outputs["scores"].tensor_name]
        )
    )
    n = batch.num_rows
    per_batch = {
        "rows": n,
        "batch_chunks": batch.column("x").num_chunks,
        "score_total_ms": timed(scorer.score, batch) * 1e3,
        "score_total_one_chunk_ms": timed(scorer.score, single) * 1e3,
        "to_feeds_ms": timed(columns.to_feeds, batch, plan) * 1e3,
        "to_feeds_one_chunk_ms": timed(columns.to_feeds, single, plan) * 1e3,
        "predict_ms": timed(
            lambda: model.predict(feeds.groups[0][1], outputs=list(plan.output_keys))
        )
        * 1e3,
        "raw_callable_ms": timed(raw_run, x) * 1e3,
        "from_fetches_ms": timed(columns.from_fetches, fetched, plan, n) * 1e3,
        "bare_convert_ms": timed(
            lambda: batch.column("x").combine_chunks().flatten().to_numpy().reshape(-1, N_IN)
        )
        * 1e3,
        "bare_convert_back_ms": timed(lambda: _scores_column(fetched["scores"])) * 1e3,
    }
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        scorer.score(batch)
    prof.disable()
    prof.dump_stats(os.path.join(out, "profile_batch_scorer.prof"))
    per_batch["cprofile_ms_per_batch"] = _breakdown(pstats.Stats(prof), reps, _BATCH_FUNCS)

    # in-process DirectRunner run over the data, with and without the profiler
    def pipeline_run(prefix):
        t = time.perf_counter()
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
        _ = p | ScoreParquet(ctx.model, pattern, prefix, batch_size=size)
        p.run().wait_until_finish()
        return time.perf_counter() - t

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    # warm up on one small file: the first pipeline in a process also pays lazy imports
    warm = _fresh(os.path.join(out, "profile_warm"))
    pq.write_table(single.slice(0, 1000), os.path.join(warm, "w.parquet"))
    t = time.perf_counter()
    p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    _ = p | ScoreParquet(ctx.model, os.path.join(warm, "*.parquet"), f"{warm}/o", batch_size=size)
    p.run().wait_until_finish()
    fixed = time.perf_counter() - t
    shutil.rmtree(warm, ignore_errors=True)
    plain = pipeline_run(os.path.join(_fresh(os.path.join(out, "profile_plain")), "scored"))
    prof = cProfile.Profile()
    prof.enable()
    profiled = pipeline_run(os.path.join(_fresh(os.path.join(out, "profile_run")), "scored"))
    prof.disable()
    path = os.path.join(out, "profile_directrunner.prof")
    prof.dump_stats(path)
    stats = pstats.Stats(prof)
    top = _top(stats, 25)
    shutil.rmtree(os.path.join(out, "profile_plain"), ignore_errors=True)
    shutil.rmtree(os.path.join(out, "profile_run"), ignore_errors=True)
    return {
        "per_batch": per_batch,
        "directrunner": {
            "rows": rows,
            "files": len(files),
            "seconds_no_profiler": plain,
            "seconds_1000_rows_no_profiler": fixed,
            "rows_per_s_no_profiler": rows / plain,
            "seconds_profiled": profiled,
            "stages_s": _breakdown(stats, 1, _RUN_FUNCS, scale=1.0, total=profiled),
            "top_tottime": top,
            "prof_file": path,
        },
    }


# (label, file suffix, function name): cumulative time of these functions
_BATCH_FUNCS = [
    ("to_feeds (Arrow -> numpy)", "beam_v1/columns.py", "to_feeds"),
    ("session (V1Model.predict)", "beam_v1/session.py", "predict"),
    ("  of which C++ callable", "tensorflow/python/client/session.py", "__call__"),
    ("from_fetches (numpy -> Arrow)", "beam_v1/columns.py", "from_fetches"),
    ("_scored_table (attach kept columns)", "beam_v1/inference.py", "_scored_table"),
    ("_failed_table", "beam_v1/inference.py", "_failed_table"),
    ("BatchScorer.score total", "beam_v1/inference.py", "score"),
]
_RUN_FUNCS = [
    ("read (ParquetFile.read_row_group)", "pyarrow/parquet/core.py", "read_row_group"),
    ("DoFn re-batching (_take_buffer: concat)", "beam_v1/dofn.py", "_take_buffer"),
    ("convert (columns.to_feeds)", "beam_v1/columns.py", "to_feeds"),
    ("session (V1Model.predict)", "beam_v1/session.py", "predict"),
    ("  of which C++ callable", "tensorflow/python/client/session.py", "__call__"),
    ("convert back (columns.from_fetches)", "beam_v1/columns.py", "from_fetches"),
    ("output table (BatchScorer._scored_table)", "beam_v1/inference.py", "_scored_table"),
    ("write (ParquetWriter.write_table)", "pyarrow/parquet/core.py", "write_table"),
    ("BatchScorer.score total", "beam_v1/inference.py", "score"),
    ("model load (V1Model.__init__)", "beam_v1/session.py", "__init__"),
    ("preflight (check_scoring)", "beam_v1/preflight.py", "check_scoring"),
]


def _breakdown(stats, reps, funcs, scale=1e3, total=None) -> dict:
    out = {}
    for label, suffix, name in funcs:
        cum = 0.0
        for (file, _line, fn), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
            if fn == name and file.replace("\\", "/").endswith(suffix):
                cum = max(cum, ct)  # the outermost entry; recursion counts once
        out[label] = round(cum / reps * scale, 3)
    if total is not None:
        top = ("read", "DoFn", "BatchScorer", "write", "model load", "preflight")
        accounted = sum(v for k, v in out.items() if k.startswith(top))
        out["Beam and the rest (total - the above)"] = round(total - accounted, 3)
        out["total (profiled run)"] = round(total, 3)
    return out


def _top(stats, k: int) -> list[dict]:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:k]
    return [
        {
            "function": f"{Path(file).name}:{line}({fn})",
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
            "calls": nc,
        }
        for (file, line, fn), (_cc, nc, tt, ct, _) in rows
    ]


# ============================================================================ the run


class Ctx:
    def __init__(self, args):
        self.args = args
        self.model = ""
        self.pythonpath: str | None = None  # where beam_v1 is imported from (--code snapshot)


def _snapshot_code(out: str, results: dict) -> str:
    """Copy beam_v1/ to OUT/code; record the commit, local changes and a digest of the copy."""
    import hashlib

    code = _fresh(os.path.join(out, "code"))
    target = os.path.join(code, "beam_v1")
    shutil.copytree(REPO / "beam_v1", target, ignore=shutil.ignore_patterns("__pycache__"))
    digest = hashlib.sha256()
    for path in sorted(Path(target).rglob("*.py")):
        digest.update(path.relative_to(target).as_posix().encode() + path.read_bytes())

    def git(*a):
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO, capture_output=True, text=True, timeout=30
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    results["code"] = {
        "snapshot": target,
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "changed_files": git("status", "--short", "--", "beam_v1").splitlines(),
        "sha256": digest.hexdigest()[:16],
    }
    return code


def _median_entry(runs: list[dict]) -> dict:
    rates = [r["rows_per_s"] for r in runs]
    med = dict(sorted(runs, key=lambda r: r["rows_per_s"])[len(runs) // 2])
    med["runs"] = len(runs)
    med["rows_per_s_median"] = statistics.median(rates)
    med["rows_per_s_all"] = [round(r) for r in rates]
    med["work_s_median"] = statistics.median(r["work_s"] for r in runs)
    med["process_rows_per_s_median"] = statistics.median(r["process_rows_per_s"] for r in runs)
    cpus = [r["cpu_s"] for r in runs if r.get("cpu_s") is not None]
    med["cpu_s_median"] = statistics.median(cpus) if cpus else None
    med["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
    med["peak_tree_rss_mb_max"] = max(r["peak_tree_rss_mb"] for r in runs)
    return med


def _steady(variants: dict, key: str) -> dict | None:
    """Rates with the fixed costs (the same command on a tiny file) subtracted."""
    full, tiny = variants.get(key), variants.get(key + "@fixed")
    if not full or not tiny:
        return None
    rows = full["rows"] - tiny["rows"]
    secs = full["work_s_median"] - tiny["work_s_median"]
    out = {
        "fixed_work_s": round(tiny["work_s_median"], 2),
        "rows_per_s": round(rows / secs) if secs > 0 else None,
    }
    if full.get("cpu_s_median") is not None and tiny.get("cpu_s_median") is not None:
        out["fixed_cpu_s"] = round(tiny["cpu_s_median"], 2)
        out["cpu_us_per_row"] = round((full["cpu_s_median"] - tiny["cpu_s_median"]) / rows * 1e6, 2)
    return out


def _say(*a):
    print(*a, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--big-rows", type=int, default=0, help="a second, bigger run (for RSS)")
    p.add_argument(
        "--big-variants", default="b,a", help="what runs at --big-rows: b, a and/or b:NAME"
    )
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument("--repeat", type=int, default=2, help="interleaved runs of a, a-rg, b, b2")
    p.add_argument("--subset-c", type=int, default=200_000, help="rows for (c)")
    p.add_argument("--subset-d", type=int, default=20_000, help="rows for (d)")
    p.add_argument("--rows-per-file", type=int, default=500_000)
    p.add_argument("--row-group-size", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=65536, help="rows per session run")
    p.add_argument("--variants", default="a,a-rg,b,b2,c,d,b-subset,fixed,profile")
    p.add_argument(
        "--b-variant",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also run (b) with DIR first on PYTHONPATH (a patched copy of beam_v1), "
        "interleaved with the others; repeatable",
    )
    p.add_argument(
        "--b-args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="also run (b) with these extra `beam-v1 score` arguments (with --b-variant of the "
        "same NAME: both); repeatable",
    )
    p.add_argument(
        "--memory-pools",
        action="store_true",
        help="the 'memory' variant runs once per Arrow pool (mimalloc, jemalloc, system)",
    )
    p.add_argument("--fixed-rows", type=int, default=1000, help="rows of the fixed-cost runs")
    p.add_argument("--profile-files", type=int, default=2, help="data files the profile reads")
    p.add_argument("--keep-data", action="store_true", help="keep generated data and outputs")
    p.add_argument(
        "--code",
        choices=["snapshot", "tree"],
        default="snapshot",
        help="snapshot (default): copy beam_v1/ into OUT/code at the start and run that copy "
        "throughout, so one run measures one version even while the tree is edited; "
        "tree: import beam_v1 as installed",
    )
    args = p.parse_args(argv)
    variants = set(args.variants.split(","))
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    ctx = Ctx(args)
    results: dict = {
        "command": "python benchmarks/bench_score.py " + " ".join(argv or sys.argv[1:]),
        "machine": _machine(),
        "config": vars(args),
    }
    t_all = time.perf_counter()
    if args.code == "snapshot":
        ctx.pythonpath = _snapshot_code(out, results)
        sys.path.insert(0, ctx.pythonpath)  # the in-process profile imports the copy too

    _say(f"building the model and {args.rows:,} rows of Parquet under {out} ...")
    ctx.model = build_model(os.path.join(_fresh(os.path.join(out, "model")), "mlp"))
    data = os.path.join(out, f"data_{args.rows}")
    shutil.rmtree(data, ignore_errors=True)
    t = time.perf_counter()
    files = write_data(data, args.rows, args.rows_per_file, args.row_group_size)
    subset_dir = os.path.join(out, "data_subset")
    shutil.rmtree(subset_dir, ignore_errors=True)
    subset = write_subset(files, subset_dir, max(args.subset_c, args.subset_d))
    pattern = os.path.join(data, "*.parquet")
    subset_pattern = os.path.join(subset_dir, "*.parquet")
    data_mb = sum(os.path.getsize(f) for f in files) / 2**20
    results["data"] = {
        "rows": args.rows,
        "files": len(files),
        "row_group_size": args.row_group_size,
        "mb_on_disk": round(data_mb, 1),
        "subset_rows": max(args.subset_c, args.subset_d),
        "subset_files": len(subset),
        "generate_s": round(time.perf_counter() - t, 1),
    }
    _say(f"  {len(files)} files, {data_mb:,.0f} MB, in {results['data']['generate_s']} s")

    errors = results["errors"] = []
    checks = results["checks"] = {}
    res = results["variants"] = {}

    def save():
        results["steady"] = {k: st for k in res if (st := _steady(res, k))}
        results["ratios"] = _ratios(results)
        results["total_s"] = round(time.perf_counter() - t_all, 1)
        Path(out, "results.json").write_text(json.dumps(results, indent=2, default=str))
        Path(out, "results.md").write_text(report(results))

    def attempt(label, fn, *a, **kw):
        """Run one measurement; a failure is recorded and the run goes on."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - e.g. the code under test broke mid-run
            errors.append({"variant": label, "error": str(e)[-2000:]})
            _say(f"  ({label}) FAILED: {str(e).splitlines()[0]}")
            return None

    try:
        _run_all(
            ctx, args, variants, out, files, pattern, subset_pattern, data, results, attempt, save
        )
    finally:
        save()
        if not args.keep_data:
            for d in glob.glob(os.path.join(out, "out_*")) + glob.glob(os.path.join(out, "data_*")):
                if os.path.isdir(d):
                    shutil.rmtree(d, ignore_errors=True)
    _say(report(results))
    _say(f"results: {out}/results.json, {out}/results.md ({results['total_s']} s in all)")
    ok = all(c.get("ok", True) for c in checks.values()) and not errors
    return 0 if ok else 1


def _run_all(
    ctx, args, variants, out, files, pattern, subset_pattern, data, results, attempt, save
) -> None:
    res, checks = results["variants"], results["checks"]
    fixed_pattern = None
    if "fixed" in variants:  # the same commands on a tiny file: start-up and fixed costs
        fixed_dir = _fresh(os.path.join(out, "data_fixed"))
        write_subset(files, fixed_dir, args.fixed_rows, files=1)
        fixed_pattern = os.path.join(fixed_dir, "*.parquet")
    patched = dict(v.split("=", 1) for v in args.b_variant)
    b_args = {k: shlex.split(v) for k, v in (a.split("=", 1) for a in args.b_args)}
    b_names = list(dict.fromkeys([*patched, *b_args]))
    runs: dict[str, list[dict]] = {}
    order = [v for v in ("a", "a-rg", "a-ov", "b", "b2") if v in variants]
    order += [f"b:{name}" for name in b_names]
    if fixed_pattern:
        order += [v + "@fixed" for v in ("a", "b", "b2") if v in variants]
        order += [f"b:{name}@fixed" for name in b_names]
    multi = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    for rep in range(args.repeat):
        for v in order:
            o = os.path.join(out, "out_" + v.replace(":", "_").replace("@", "_"))
            base, _, tiny = v.partition("@")
            src, n = (fixed_pattern, args.fixed_rows) if tiny else (pattern, args.rows)
            if base == "a":
                r = attempt(v, run_bare, ctx, src, n, o, "iter_batches")
            elif base == "a-rg":
                r = attempt(v, run_bare, ctx, src, n, o, "row_group")
            elif base == "a-ov":
                r = attempt(v, run_bare, ctx, src, n, o, "overlap")
            elif base == "b":
                r = attempt(v, run_cli, ctx, src, n, o)
            elif base == "b2":
                r = attempt(v, run_cli, ctx, src, n, o, multi)
            else:
                name = base.split(":", 1)[1]
                r = attempt(
                    v, run_cli, ctx, src, n, o, b_args.get(name, ()), pythonpath=patched.get(name)
                )
            if r is None:
                continue
            runs.setdefault(v, []).append(r)
            res[v] = _median_entry(runs[v])
            _say(
                f"  [{rep + 1}/{args.repeat}] ({v}) {r['rows_per_s']:>10,.0f} rows/s  "
                f"work {r['work_s']:.1f} s  process {r['process_s']:.1f} s  "
                f"RSS {r['peak_rss_mb']:,.0f} MB (tree {r['peak_tree_rss_mb']:,.0f} MB)"
            )
        save()

    if "a" in res:
        for v in ["a-rg", "a-ov", "b", "b2"] + [f"b:{name}" for name in b_names]:
            if v in res:
                checks[f"a vs {v}"] = compare(res["a"]["out"], res[v]["out"], args.rows)
                _say(f"  check a vs {v}: {checks[f'a vs {v}']}")

    if "b-subset" in variants:
        o = os.path.join(out, "out_b-subset")
        r = attempt("b-subset", run_cli, ctx, subset_pattern, args.subset_c, o)
        if r:
            res["b-subset"] = _median_entry([r])
            _say(f"  (b on {args.subset_c:,} rows) {r['rows_per_s']:,.0f} rows/s")
    if "c" in variants:
        o = os.path.join(out, "out_c")
        c_pattern = subset_pattern
        if args.subset_c != max(args.subset_c, args.subset_d):
            c_pattern = os.path.join(
                _fresh_subset(files, out, "data_subset_c", args.subset_c), "*.parquet"
            )
        r = attempt("c", run_runinference, ctx, c_pattern, args.subset_c, o)
        if r:
            res["c"] = _median_entry([r])
            _say(f"  (c) {r['rows_per_s']:,.0f} rows/s on {args.subset_c:,} rows")
            if "a" in res:
                checks["a vs c"] = _compare_subset(res["a"]["out"], o, args.subset_c)
                _say(f"  check a vs c: {checks['a vs c']}")
    if "d" in variants:
        o = os.path.join(out, "out_d")
        r = attempt("d", run_perrow, ctx, subset_pattern, args.subset_d, o)
        if r:
            res["d"] = _median_entry([r])
            _say(f"  (d) {r['rows_per_s']:,.0f} rows/s on {args.subset_d:,} rows")
            if "a" in res:
                checks["a vs d"] = _compare_subset(res["a"]["out"], o, args.subset_d)
                _say(f"  check a vs d: {checks['a vs d']}")
    save()

    if "memory" in variants:
        _say("where (b)'s memory goes, in process ...")
        pools = ["mimalloc", "jemalloc", "system"] if args.memory_pools else [None]
        results["memory"] = {}
        for pool in pools:
            o = _fresh(os.path.join(out, f"out_memory_{pool or 'default'}"))
            env = dict(os.environ)
            if ctx.pythonpath:
                env["PYTHONPATH"] = ctx.pythonpath
            if pool:
                env["ARROW_DEFAULT_MEMORY_POOL"] = pool
            cmd = _worker_cmd("memory", "--model", ctx.model, "--input", pattern, "--output", o,
                              "--batch-rows", str(args.batch_size))
            m = attempt(f"memory {pool}", run_measured, cmd, o + ".log", env=env)
            if m:
                entry = {**m["result"], "peak_rss_mb": round(m["peak_rss_mb"], 1)}
                results["memory"][pool or "default"] = entry
                _say(f"  ({pool or 'default pool'}) " + json.dumps(entry))
        save()

    if "profile" in variants:
        _say("profiling beam-v1 in process ...")
        prof_pattern = os.path.join(data, f"part-0000[0-{args.profile_files - 1}].parquet")
        prof = attempt("profile", profile, ctx, prof_pattern, out)
        if prof:
            results["profile"] = prof
            _say(json.dumps(prof["per_batch"], indent=1))
            _say(json.dumps(prof["directrunner"]["stages_s"], indent=1))
        save()

    if not args.keep_data:
        shutil.rmtree(data, ignore_errors=True)

    if args.big_rows:
        _say(f"big run: {args.big_rows:,} rows ...")
        big = os.path.join(out, f"data_{args.big_rows}")
        shutil.rmtree(big, ignore_errors=True)
        t = time.perf_counter()
        big_files = write_data(big, args.big_rows, args.rows_per_file, args.row_group_size)
        big_pattern = os.path.join(big, "*.parquet")
        results["big_data"] = {
            "rows": args.big_rows,
            "files": len(big_files),
            "mb_on_disk": round(sum(os.path.getsize(f) for f in big_files) / 2**20, 1),
            "generate_s": round(time.perf_counter() - t, 1),
        }
        big_res = results["big"] = {}
        for v in args.big_variants.split(","):
            o = os.path.join(out, f"out_big_{v}")
            if v == "a":
                r = attempt("big a", run_bare, ctx, big_pattern, args.big_rows, o)
            elif v == "b":
                r = attempt("big b", run_cli, ctx, big_pattern, args.big_rows, o)
            elif v.startswith("b:") and v[2:] in b_names:
                r = attempt(
                    f"big {v}", run_cli, ctx, big_pattern, args.big_rows, o.replace(":", "_"),
                    b_args.get(v[2:], ()), pythonpath=patched.get(v[2:]),
                )
            else:
                continue
            if r is None:
                continue
            big_res[v] = _median_entry([r])
            _say(
                f"  ({v}) {r['rows_per_s']:,.0f} rows/s  work {r['work_s']:.1f} s  "
                f"RSS {r['peak_rss_mb']:,.0f} MB"
            )
        if "a" in big_res and "b" in big_res:
            checks["big a vs b"] = compare(big_res["a"]["out"], big_res["b"]["out"], args.big_rows)
            _say(f"  check big a vs b: {checks['big a vs b']}")
        elif "b" in big_res:
            ids, _ = read_scores(big_res["b"]["out"])
            checks["big b ids"] = {
                "ok": len(ids) == args.big_rows
                and bool(np.array_equal(ids, np.arange(args.big_rows)))
            }
        if not args.keep_data:
            shutil.rmtree(big, ignore_errors=True)


def _fresh_subset(files, out, name, rows) -> str:
    folder = os.path.join(out, name)
    shutil.rmtree(folder, ignore_errors=True)
    write_subset(files, folder, rows)
    return folder


def _compare_subset(reference: str, other: str, rows: int) -> dict:
    ref_ids, ref_scores = read_scores(reference)
    ids, scores = read_scores(other)
    ok_ids = bool(np.array_equal(ids, np.arange(rows)))
    diff = float(np.max(np.abs(ref_scores[:rows] - scores))) if ok_ids else float("nan")
    return {
        "rows_checked": int(len(ids)),
        "ids_each_once": ok_ids,
        "max_abs_diff": diff,
        "ok": ok_ids and bool(np.allclose(ref_scores[:rows], scores, rtol=1e-5, atol=1e-6)),
    }


def _ratios(results) -> dict:
    v = results.get("variants", {})
    big = results.get("big", {})
    steady = results.get("steady", {})

    def rate(entry, key="rows_per_s_median"):
        return entry.get(key, entry.get("rows_per_s")) if entry else None

    def ratio(x, y):
        return round(x / y, 3) if x and y else None

    def pairs(x, y):  # per repeat: runs of x and y were interleaved, so each pair shares a load
        if x not in runs_of or y not in runs_of:
            return None
        return [round(p / q, 3) for p, q in zip(runs_of[x], runs_of[y])]

    runs_of = {k: e["rows_per_s_all"] for k, e in v.items() if e.get("rows_per_s_all")}
    bs = ["b"] + [k for k in v if k.startswith("b:") and "@" not in k]
    out = {}
    for b in bs:
        out[f"{b}/a"] = ratio(rate(v.get(b)), rate(v.get("a")))
        out[f"{b}/a per repeat"] = pairs(b, "a")
        out[f"{b}/a-rg"] = ratio(rate(v.get(b)), rate(v.get("a-rg")))
        out[f"{b}/a-ov"] = ratio(rate(v.get(b)), rate(v.get("a-ov")))
        if b != "b":
            out[f"{b}/b"] = ratio(rate(v.get(b)), rate(v.get("b")))
            out[f"{b}/b per repeat"] = pairs(b, "b")
        sb, sa = steady.get(b), steady.get("a")
        if sb and sa:
            out[f"{b}/a steady state (fixed costs subtracted)"] = ratio(
                sb["rows_per_s"], sa["rows_per_s"]
            )
            if sb.get("cpu_us_per_row") and sa.get("cpu_us_per_row"):
                out[f"{b}/a CPU per row (a's CPU/row / b's)"] = ratio(
                    sa["cpu_us_per_row"], sb["cpu_us_per_row"]
                )
    for b in bs:
        if v.get(b) and v.get("a"):
            out[f"peak RSS {b}/a"] = ratio(v[b]["peak_rss_mb_max"], v["a"]["peak_rss_mb_max"])
    for k, e in big.items():
        if k != "a" and big.get("a"):
            out[f"big peak RSS {k}/a"] = ratio(e["peak_rss_mb"], big["a"]["peak_rss_mb"])
            out[f"big {k}/a rows/s"] = ratio(rate(e), rate(big["a"]))
    out["b/a (whole process, start-up included)"] = ratio(
        rate(v.get("b"), "process_rows_per_s_median"),
        rate(v.get("a"), "process_rows_per_s_median"),
    )
    out["b/c"] = ratio(rate(v.get("b")), rate(v.get("c")))
    out["b-subset/c (same subset)"] = ratio(rate(v.get("b-subset")), rate(v.get("c")))
    out["b/d"] = ratio(rate(v.get("b")), rate(v.get("d")))
    out["b2/b"] = ratio(rate(v.get("b2")), rate(v.get("b")))
    out["b2/b per repeat"] = pairs("b2", "b")
    if "b" in big:
        out["big b/a"] = ratio(rate(big.get("b")), rate(big.get("a")))
        if "b" in v:
            out["RSS b big/2M"] = ratio(big["b"]["peak_rss_mb"], v["b"]["peak_rss_mb_max"])
            # marginal rate between the two sizes: fixed costs (start-up, load) cancel out
            rows = big["b"]["rows"] - v["b"]["rows"]
            secs = big["b"]["work_s"] - v["b"]["work_s_median"]
            out["b marginal rows/s (2M->big)"] = round(rows / secs) if secs > 0 else None
    return {k: val for k, val in out.items() if val is not None}


def _machine() -> dict:
    import pyarrow

    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        pass
    versions = {"python": platform.python_version(), "pyarrow": pyarrow.__version__}
    for mod in ("tensorflow", "apache_beam", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "?"
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_mb": mem, **versions}


def report(results: dict) -> str:
    labels = {
        "a": "(a) bare loop: iter_batches + callable + ParquetWriter",
        "a-rg": "(a-rg) bare loop, read_row_group",
        "a-ov": "(a-ov) bare loop, session in a 2nd thread (1 batch in flight)",
        "b": "(b) beam-v1 score, DirectRunner",
        "b2": "(b2) beam-v1 score, multi_processing x2",
        "b-subset": "(b) beam-v1 score on the (c) subset",
        "c": "(c) ReadFromParquet -> RunInference",
        "d": "(d) per-row sess.run(feed_dict)",
    }
    m = results.get("machine", {})
    code = results.get("code", {})
    lines = [
        f"command: `{results['command']}`",
        "",
        f"machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {m.get('mem_mb', 0):,} MB RAM; "
        f"Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, Beam "
        f"{m.get('apache_beam')}, pyarrow {m.get('pyarrow')}, numpy {m.get('numpy')}",
        "",
        f"code: beam_v1 at commit {code.get('commit', '?')}"
        + (f" plus local changes {code['changed_files']}" if code.get("changed_files") else "")
        + (f", snapshot sha256 {code['sha256']}" if code.get("sha256") else " (as installed)"),
        "",
        "| variant | rows | rows/s (work, median) | each run | work s | process s | "
        "rows/s (process) | CPU s | peak RSS MB (process) | peak RSS MB (tree) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    table = list(results.get("variants", {}).items()) + [
        (f"big {k}", e) for k, e in results.get("big", {}).items()
    ]
    for key, e in table:
        base = key.replace("big ", "").split("@")[0]
        name = labels.get(base) or (
            f"(b) beam-v1 score, variant '{base[2:]}'" if base.startswith("b:") else base
        )
        if key.startswith("big ") or "@" in key:
            name += f" ({e['rows']:,} rows)"
        cpu = e.get("cpu_s_median", e.get("cpu_s"))
        lines.append(
            f"| {name} | {e['rows']:,} | {e.get('rows_per_s_median', e['rows_per_s']):,.0f} | "
            f"{', '.join(f'{x:,}' for x in e.get('rows_per_s_all', []))} | "
            f"{e.get('work_s_median', e['work_s']):.2f} | {e['process_s']} | "
            f"{e['process_rows_per_s']:,.0f} | {'-' if cpu is None else f'{cpu:.1f}'} | "
            f"{e['peak_rss_mb_max']:,.0f} | {e['peak_tree_rss_mb_max']:,.0f} |"
        )
    if results.get("steady"):
        lines += [
            "",
            "steady state (each variant's run on a tiny file subtracted: start-up, pipeline "
            "construction, model load):",
            "",
            "| variant | fixed work s | steady rows/s | fixed CPU s | CPU us per row |",
            "|---|---:|---:|---:|---:|",
        ]
        for k, st in results["steady"].items():
            lines.append(
                f"| {k} | {st['fixed_work_s']} | {st['rows_per_s'] or '-'} | "
                f"{st.get('fixed_cpu_s', '-')} | {st.get('cpu_us_per_row', '-')} |"
            )
    lines += ["", "| ratio | value |", "|---|---:|"]
    for k, val in results.get("ratios", {}).items():
        lines.append(f"| {k} | {val} |")
    lines += ["", "checks: " + json.dumps(results.get("checks", {}))]
    for e in results.get("errors", []):
        lines += ["", f"FAILED ({e['variant']}): {e['error'][-600:]}"]
    for pool, e in results.get("memory", {}).items():
        at, imp = e["at_peak"], e["after_imports"]
        lines += [
            "",
            f"memory ({pool}, Arrow pool {e['pool']}): peak RSS {e['peak_rss_mb']:,.0f} MB, "
            f"{imp['rss']:,} MB after imports; at the peak sample: "
            + json.dumps(at) + "; maxima: " + json.dumps(e["max"]),
        ]
    a = results.get("variants", {}).get("a")
    if a and a.get("stages"):
        stages = {k: round(v, 2) for k, v in a["stages"].items()}
        lines += ["", "(a) stages, s: " + json.dumps(stages)]
    if "profile" in results:
        pb = results["profile"]["per_batch"]
        dr = results["profile"]["directrunner"]
        lines += [
            "",
            "per batch (ms, median of 8, no profiler): "
            + json.dumps(
                {
                    k: round(v, 2) if isinstance(v, float) else v
                    for k, v in pb.items()
                    if k != "cprofile_ms_per_batch"
                }
            ),
            "per batch under cProfile (ms): " + json.dumps(pb["cprofile_ms_per_batch"]),
            "",
            f"in-process DirectRunner, {dr['rows']:,} rows: {dr['rows_per_s_no_profiler']:,.0f} "
            f"rows/s without the profiler ({dr['seconds_no_profiler']:.1f} s; the same pipeline "
            f"on 1,000 rows: {dr['seconds_1000_rows_no_profiler']:.1f} s); cumulative seconds "
            "under cProfile:",
            "",
        ]
        lines += [f"- {k}: {val}" for k, val in dr["stages_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2:])
    else:
        sys.exit(main())
