"""Scale-out benchmark (issue 16, items 3 and 4): several worker processes on one machine.

On bench_score.py's MLP input (its model and data generators), each variant a whole
`python -m beam_v1 score` process, side by side in one run:

  1proc     DirectRunner, one process
  mp2       --direct_running_mode multi_processing --direct_num_workers 2, thread budget on
  mp2-nob   the same with the budget off (BEAM_V1_PROCESSES_PER_MACHINE=1: TensorFlow's pools)
  dask2     beam_v1's DaskRunner on a dask.distributed cluster of 2 single-thread worker
            processes on 127.0.0.1 (started as tests/clusters.py does)

For each: rows/s over the run's own time (the summary's seconds) and "steady" rows/s with the
fixed cost (the same variant on a 1,000-row input of two files, so that each of two workers
pays its per-run costs, such as loading the model) taken off; CPU seconds per row (user + sys
of the process tree, children included; for dask2 plus the worker processes' CPU read from
/proc before and after), whole and steady (the fixed run's CPU taken off); peak RSS of the
largest process and of the tree (for dask2 the workers' VmHWM, summed). The dask cluster
does one run before the measured ones (`warm_dask`, its figures reported apart as the
first run), as a long-lived cluster has. Then a model with
one 1 GiB variable scored by multi_processing x2 with and without `--model-copies 1`: peak
resident memory of the tree.

    python benchmarks/bench_scale.py --rows 2000000 [--big-mb 1024] [--out benchmarks/out/scale]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import bench_score  # noqa: E402  (the MLP model, its data and the measured-process runner)
import clusters  # noqa: E402  (a real dask cluster on 127.0.0.1)

MP2 = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
FIXED_ROWS = 1000
BIG_IN = 16


def _say(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def build_big_model(path: str, megabytes: int) -> str:
    """x float32 [-1,16] -> y = sum(x @ w[:16], axis=1), w one variable of `megabytes` MiB."""
    import tensorflow as tf

    v1 = tf.compat.v1
    cols = 1024
    rows = max(BIG_IN, int(megabytes * 2**20 / 4 / cols))
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, BIG_IN], name="x")
        w = v1.get_variable("w", [rows, cols], tf.float32, v1.random_uniform_initializer(-1, 1))
        y = tf.identity(tf.reduce_sum(x @ w[:BIG_IN], axis=1), name="y")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(path)
            sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], {"serving_default": sig})
            builder.save()
    return path


def write_big_data(folder: str, rows: int) -> str:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(2):
        x = rng.standard_normal((rows // 2, BIG_IN), dtype=np.float32)
        pq.write_table(pa.table({
            "id": np.arange(i * (rows // 2), (i + 1) * (rows // 2), dtype=np.int64),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), BIG_IN),
        }), os.path.join(folder, f"part-{i}.parquet"), row_group_size=max(1, rows // 8))
    return os.path.join(folder, "*.parquet")


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("BEAM_V1_PROCESSES_PER_MACHINE", None)  # the variants set it themselves
    env.update(extra or {})
    return env


def _proc_cpu(pid: int) -> float:
    """utime + stime of a live process, in seconds (its own, not its children's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def score_run(model: str, pattern: str, out: str, args: list[str], env=None,
              rows: int | None = None) -> dict:
    """One measured `python -m beam_v1 score` process; checks every row was scored."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    prefix = os.path.join(out, "scored")
    cmd = [sys.executable, "-m", "beam_v1", "score", "--model", model, "--input", pattern,
           "--output", prefix, "--quiet", *args]
    m = bench_score.run_measured(cmd, out + ".log", env=env or _env())
    summary = json.loads(Path(prefix + "-summary.json").read_text())
    if rows is not None and summary["rows_scored"] != rows:
        raise RuntimeError(f"{cmd}: scored {summary['rows_scored']} of {rows} rows")
    return {"measured": m, "summary": summary, "cmd": " ".join(cmd)}


def run_variant(name: str, model: str, pattern: str, rows: int, out: str, dask=None) -> dict:
    args, env = [], _env()
    if name in ("mp2", "mp2-nob"):
        args = MP2
    if name == "mp2-nob":
        env = _env({"BEAM_V1_PROCESSES_PER_MACHINE": "1"})
    worker_pids: list[int] = []
    if name == "dask2":
        address, worker_pids = dask
        args = ["--runner", "DaskRunner", "--dask_client_address", address]
    before = {p: _proc_cpu(p) for p in worker_pids}
    run = score_run(model, pattern, out, args, env, rows)
    worker_cpu = sum(_proc_cpu(p) - before[p] for p in worker_pids)
    m = run["measured"]
    worker_hwm = [_hwm_mb(p) for p in worker_pids]
    return {
        "rows": rows,
        "seconds": run["summary"]["seconds"],
        "cpu_s": (m["cpu_s"] or 0.0) + worker_cpu,
        "worker_cpu_s": worker_cpu,
        "peak_rss_mb": max([m["peak_rss_mb"], *worker_hwm]),
        "peak_tree_rss_mb": m["peak_tree_rss_mb"] + sum(worker_hwm),
        "process_s": m["wall_s"],
        "model_loads": run["summary"]["model_loads"],
        "cmd": run["cmd"],
    }


def _rates(full: dict, fixed: dict, rows: int) -> dict:
    """Whole-run and steady rates (the fixed-cost run's time and CPU taken off)."""
    return {
        "fixed_s": fixed["seconds"],
        "fixed_cpu_s": fixed["cpu_s"],
        "rows_per_s": rows / full["seconds"],
        "steady_rows_per_s": (rows - FIXED_ROWS) / max(full["seconds"] - fixed["seconds"], 1e-9),
        "cpu_s_per_row": full["cpu_s"] / rows,
        "steady_cpu_s_per_row": (full["cpu_s"] - fixed["cpu_s"]) / (rows - FIXED_ROWS),
    }


def _median_run(runs: list[dict]) -> dict:
    """Per number, the median over the rounds; each round's values kept under `rounds`."""
    import statistics

    out = dict(runs[-1])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["rounds"] = [{k: v for k, v in r.items() if k != "cmd"} for r in runs]
    return out


def _hwm_mb(pid: int) -> float:
    """Peak RSS (VmHWM) of a live process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _dask_worker_pids(address: str) -> list[int]:
    from dask.distributed import Client

    with Client(address) as client:
        return sorted(client.run(os.getpid).values())


def warm_dask(dask: tuple[str, list[int]], model: str, pattern: str, out: str) -> dict:
    """One `score` run on the fixed-cost input (one file per worker) on a fresh cluster,
    before anything is measured; returns its seconds and CPU (client + workers).

    A fresh worker pays, once in its life, for importing TensorFlow, Beam and beam_v1 while
    it unpickles its first task (seconds of wall time, ~1 CPU s). Left in, that lands in
    the first measured run (the 2M-row one) and not in the fixed-cost run after it, and the
    steady figures would subtract unlike things; a long-lived cluster has paid it already."""
    run = run_variant("dask2", model, pattern, FIXED_ROWS, out, dask)
    return {"seconds": run["seconds"], "cpu_s": run["cpu_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--big-mb", type=int, default=1024, help="0: skip the big-model rows")
    p.add_argument("--big-rows", type=int, default=20_000)
    p.add_argument("--out", default=str(HERE / "out" / "scale"))
    p.add_argument("--variants", default="1proc,mp2,mp2-nob,dask2")
    p.add_argument("--repeat", type=int, default=1, help="rounds, interleaved; medians reported")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    data = os.path.join(out, "data")
    model = os.path.join(out, "mlp")
    if not os.path.isdir(model):
        _say("building the MLP and", args.rows, "rows")
        bench_score.build_model(model)
    marker = os.path.join(data, f"rows-{args.rows}")
    if not os.path.exists(marker):
        shutil.rmtree(data, ignore_errors=True)
        bench_score.write_data(data, args.rows, max(1, args.rows // 4), 100_000)
        Path(marker).touch()
    pattern = os.path.join(data, "part-*.parquet")
    fixed = os.path.join(data, "fixed2")
    if not os.path.isdir(fixed):  # one file per worker: each pays its per-run costs here too
        bench_score.write_subset(sorted(glob.glob(pattern)), fixed, FIXED_ROWS, files=2)
    fixed_pattern = os.path.join(fixed, "*.parquet")
    variants = args.variants.split(",")
    results: dict = {"rows": args.rows, "cores": len(os.sched_getaffinity(0)),
                     "repeat": args.repeat, "variants": {}}
    import contextlib

    with contextlib.ExitStack() as stack:
        dask = None
        if "dask2" in variants:
            address = stack.enter_context(clusters.dask_cluster(out, workers=2))
            dask = (address, _dask_worker_pids(address))
            results["dask_first_run"] = warm_dask(dask, model, fixed_pattern,
                                                  os.path.join(out, "dask2-first"))
            _say("dask workers' first run:", json.dumps(results["dask_first_run"]))
        rounds: dict[str, list[dict]] = {name: [] for name in variants}
        for i in range(args.repeat):  # interleaved: a busy shared machine slows all alike
            for name in variants:
                _say("round", i + 1, "variant", name)
                full = run_variant(name, model, pattern, args.rows, os.path.join(out, name), dask)
                fixed = run_variant(name, model, fixed_pattern, FIXED_ROWS,
                                    os.path.join(out, name + "-fixed"), dask)
                full.update(_rates(full, fixed, args.rows))
                rounds[name].append(full)
                _say(name, json.dumps({k: v for k, v in full.items() if k != "cmd"}))
        for name, runs in rounds.items():
            results["variants"][name] = _median_run(runs)
    if args.big_mb:
        big = os.path.join(out, f"big-{args.big_mb}")
        if not os.path.isdir(big):
            _say("building a model with a", args.big_mb, "MiB variable")
            build_big_model(big, args.big_mb)
        tiny = os.path.join(out, "big-1")
        if not os.path.isdir(tiny):  # the same graph with a 1 MiB variable: the baseline
            build_big_model(tiny, 1)
        big_pattern = write_big_data(os.path.join(out, "bigdata"), args.big_rows)
        results["big"] = {"mb": args.big_mb, "rows": args.big_rows}
        for name, path, extra in (("mp2-1MiB", tiny, []), ("mp2", big, []),
                                  ("mp2-copies1", big, ["--model-copies", "1"])):
            _say("big model", name)
            run = score_run(path, big_pattern, os.path.join(out, "big-" + name), MP2 + extra,
                            rows=args.big_rows)
            m = run["measured"]
            results["big"][name] = {
                "peak_tree_rss_mb": m["peak_tree_rss_mb"], "peak_rss_mb": m["peak_rss_mb"],
                "processes": m["processes"], "seconds": run["summary"]["seconds"],
                "model_loads": run["summary"]["model_loads"], "cmd": run["cmd"],
            }
            _say(name, json.dumps(results["big"][name]))
    Path(out, "results.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    return 0


def report(results: dict) -> str:
    v = results["variants"]
    base = v.get("1proc")
    lines = [
        f"{results['rows']:,} rows, {results['cores']} cores, median of {results['repeat']} "
        "interleaved round(s)",
        "",
        "| variant | rows/s | steady rows/s | fixed s | CPU us/row (whole) | "
        "CPU us/row (steady) | steady CPU vs 1proc | peak RSS MB process / tree | loads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in v.items():
        ratio = (f"{r['steady_cpu_s_per_row'] / base['steady_cpu_s_per_row']:.2f}x"
                 if base else "-")
        lines.append(
            f"| {name} | {r['rows_per_s']:,.0f} | {r['steady_rows_per_s']:,.0f} | "
            f"{r['fixed_s']:.1f} | {r['cpu_s_per_row'] * 1e6:.1f} | "
            f"{r['steady_cpu_s_per_row'] * 1e6:.1f} | {ratio} | "
            f"{r['peak_rss_mb']:,.0f} / {r['peak_tree_rss_mb']:,.0f} | {r['model_loads']} |"
        )
    first = results.get("dask_first_run")
    if first:
        lines.append(f"\ndask2: the cluster's first run ({FIXED_ROWS:,} rows, not in the rows "
                     f"above): {first['seconds']:.1f} s, {first['cpu_s']:.1f} CPU s")
    big = results.get("big")
    if big:
        base_mb = big["mp2-1MiB"]["peak_tree_rss_mb"]
        lines += ["", f"Model with a {big['mb']} MiB variable, {big['rows']:,} rows, "
                  "multi_processing x2 (model MB = tree MB - the 1 MiB model's tree MB):", "",
                  "| variant | peak tree RSS MB | model MB in the tree | peak process RSS MB "
                  "| model loads | s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name in ("mp2-1MiB", "mp2", "mp2-copies1"):
            b = big[name]
            lines.append(f"| {name} | {b['peak_tree_rss_mb']:,.0f} | "
                         f"{b['peak_tree_rss_mb'] - base_mb:,.0f} | {b['peak_rss_mb']:,.0f} | "
                         f"{b['model_loads']} | {b['seconds']:.1f} |")
        ratio = big["mp2-copies1"]["peak_tree_rss_mb"] / big["mp2"]["peak_tree_rss_mb"]
        held = [(big[n]["peak_tree_rss_mb"] - base_mb) / big["mb"] for n in ("mp2", "mp2-copies1")]
        lines.append(f"\ntree RSS copies1 / default: {ratio:.2f}; model copies held in the "
                     f"tree: {held[0]:.2f}x (default) vs {held[1]:.2f}x (--model-copies 1)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
