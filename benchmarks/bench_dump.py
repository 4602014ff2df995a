"""Benchmark: a TF1 model's variables out, three ways, on a generated ~1 GB model.

    python benchmarks/bench_dump.py [--big 4 --big-mb 200 --small 100 --small-mb 2]
        [--repeat 5] [--workdir DIR] [--model DIR] [--keep] [--baseline SRC_TREE]
        [--results benchmarks/out/RESULTS-dump.md]
    (the results file is then pasted into benchmarks/RESULTS.md)

(a) session: `tf.compat.v1.saved_model.loader.load` + `sess.run(global_variables())`
(b) parquet: `DumpVariables` -> `WriteVariables(..., "parquet")` on the DirectRunner
(c) npz:     `DumpVariables` -> `WriteVariables(..., "npz")`
Each runs in its own subprocess: wall time, and peak RSS less the RSS right after importing
TensorFlow, Apache Beam and beam_v1. With `--repeat N` the three runs are interleaved N times
(a, b, c, a, b, c, ...: a busy shared machine slows neighbours alike) and the table gives the
median, plus each round's (b)/(a) and (c)/(a) ratios. Every variable's SHA-256 from (a) is
compared with the dumps read back by `read_variables` (not timed). Generated data is deleted
at the end unless `--keep`; `--model DIR` reuses a model generated before. `--baseline DIR`
adds (b) and (c) run with the beam_v1 of another source tree (e.g. `git worktree add DIR
COMMIT`), interleaved with the others: before and after, side by side in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    """VmHWM: this process's own peak (ru_maxrss would start at the parent's peak: Linux
    carries it across fork + exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def generate(path: str, big: int, big_mb: float, small: int, small_mb: float) -> dict:
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    cols = 1024
    big_rows = int(big_mb * 2**20 / 4 / cols)
    small_rows = max(1, int(small_mb * 2**20 / 4 / cols))
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, cols], name="x")
        outs = []
        for i in range(big):
            w = v1.get_variable(
                f"big_{i}",
                [big_rows, cols],
                tf.float32,
                v1.random_uniform_initializer(-1, 1),
                use_resource=(i % 2 == 0),
            )
            outs.append(tf.reduce_sum(x @ tf.transpose(w[:4])))
        for i in range(small):
            w = v1.get_variable(
                f"layer_{i}/kernel",
                [small_rows, cols],
                tf.float32,
                v1.random_uniform_initializer(-1, 1),
                use_resource=False,
            )
            outs.append(tf.reduce_sum(w[:1]))
        y = tf.identity(tf.add_n(outs), name="y")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(path)
            sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
            builder.add_meta_graph_and_variables(sess, ["serve"], {"serving_default": sig})
            builder.save()
    total = big * big_rows * cols * 4 + small * small_rows * cols * 4
    del np
    return {"bytes": total, "largest": big_rows * cols * 4, "variables": big + small}


def _hashes(values: dict) -> dict:
    return {k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in values.items()}


def child(mode: str, model: str, out: str) -> None:
    """One measured run; prints a JSON line."""
    import apache_beam as beam  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import tensorflow as tf

    import beam_v1.variables.checkpoint  # noqa: F401
    import beam_v1.variables.dump  # noqa: F401

    base = _rss_mb()
    started = time.perf_counter()
    hashes = None
    if mode == "session":
        v1 = tf.compat.v1
        with v1.Session(graph=tf.Graph()) as sess:
            v1.saved_model.loader.load(sess, ["serve"], model)
            gvars = v1.global_variables()
            values = dict(zip([v.op.name for v in gvars], sess.run(gvars)))
        seconds = time.perf_counter() - started
        peak = _peak_mb()
        hashes = _hashes(values)
    else:
        from beam_v1.variables.dump import DumpVariables, WriteVariables

        with beam.Pipeline() as p:
            dumped = p | beam.Create([model]) | DumpVariables(progress_seconds=0)
            _ = dumped.variables | WriteVariables(out, mode, failed=dumped.failed)
        seconds = time.perf_counter() - started
        peak = _peak_mb()
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "base_mb": base,
                "peak_mb": peak,
                "hashes": hashes,
                "beam_v1": os.path.dirname(os.path.dirname(beam_v1.variables.dump.__file__)),
            }
        )
    )


def _verify(mode: str, out: str, expected: dict) -> bool:
    from beam_v1.variables.checkpoint import read_variables

    got = _hashes(read_variables(out))
    return got == expected


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "OUT"))
    parser.add_argument("--big", type=int, default=4)
    parser.add_argument("--big-mb", type=float, default=200)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--small-mb", type=float, default=2)
    parser.add_argument("--workdir", default=None, help="where the run's own temp folder goes")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--baseline", default=None, help="a source tree to compare against")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds (median)")
    parser.add_argument("--model", default=None, help="a model generated before (--keep)")
    parser.add_argument(
        "--results", default=os.path.join(os.path.dirname(__file__), "out", "RESULTS-dump.md")
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    # only what this run creates is deleted: never a --model given, nor anything else in --workdir
    work = tempfile.mkdtemp(prefix="bench_dump_", dir=args.workdir)
    model = args.model or os.path.join(work, "model")
    try:
        t = time.perf_counter()
        if args.model:
            info = json.loads(open(os.path.join(model, "bench.json"), encoding="utf-8").read())
        else:
            info = generate(model, args.big, args.big_mb, args.small, args.small_mb)
            with open(os.path.join(model, "bench.json"), "w", encoding="utf-8") as f:
                json.dump(info, f)
        print(
            f"model {info['bytes'] / 2**20:,.0f} MiB in {info['variables']} variables "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        rounds = []
        for i in range(args.repeat):
            runs = {}
            for mode in _modes(args):
                out = os.path.join(work, f"{mode}-{i}", "dump")
                runs[mode] = _run_child(mode, model, out, args.baseline)
                r = runs[mode]
                print(
                    f"round {i + 1}: {mode}: {r['seconds']:.2f} s, peak RSS "
                    f"{r['peak_mb']:,.0f} MiB, after imports {r['base_mb']:,.0f} MiB",
                    flush=True,
                )
            expected = runs["session"]["hashes"]
            for mode in _modes(args)[1:]:
                folder = os.path.join(work, f"{mode}-{i}")
                runs[mode]["exact"] = _verify(mode, os.path.join(folder, "dump"), expected)
                files = [f for f in os.listdir(folder) if f.endswith(_format(mode))]
                runs[mode]["file_mb"] = (
                    sum(os.path.getsize(os.path.join(folder, f)) for f in files) / 2**20
                )
                shutil.rmtree(folder, ignore_errors=True)
            runs["session"]["hashes"] = None
            rounds.append(runs)
        _write_results(args, info, rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.model:
            print(f"model kept in {model}", flush=True)
    return 0


def _modes(args) -> list[str]:
    return ["session", "parquet", "npz"] + (["parquet@base", "npz@base"] if args.baseline else [])


def _format(mode: str) -> str:
    return mode.split("@")[0]


def _run_child(mode: str, model: str, out: str, baseline: str | None) -> dict:
    env = dict(os.environ)
    if mode.endswith("@base"):  # sys.path comes before the editable install's finder
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", _format(mode), model, out],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode or not lines:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{mode} run failed")
    result = json.loads(lines[-1])
    if mode.endswith("@base") and os.path.realpath(result["beam_v1"]) != os.path.realpath(baseline):
        raise SystemExit(f"{mode} imported beam_v1 from {result['beam_v1']}, not {baseline}")
    return result


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


_LABELS = {
    "session": "(a) load + sess.run(global_variables())",
    "parquet": "(b) DumpVariables -> Parquet",
    "npz": "(c) DumpVariables -> npz",
    "parquet@base": "(b) baseline tree",
    "npz@base": "(c) baseline tree",
}


def _write_results(args, info, rounds) -> None:
    mib = 2**20
    largest = info["largest"] / mib
    modes = _modes(args)
    med = {
        mode: {
            key: _median([r[mode][key] for r in rounds])
            for key in ("seconds", "peak_mb", "base_mb")
        }
        for mode in modes
    }
    worst_extra = {
        mode: max(r[mode]["peak_mb"] - r[mode]["base_mb"] for r in rounds) for mode in modes
    }
    exact = {mode: all(r[mode]["exact"] for r in rounds) for mode in modes[1:]}
    a = med["session"]
    rows = []
    for mode in modes:
        r = med[mode]
        extra = worst_extra[mode]
        ratio = "1.00" if mode == "session" else f"{r['seconds'] / a['seconds']:.2f}"
        rows.append(
            f"| {_LABELS[mode]} | {r['seconds']:.2f} | {ratio} | {r['peak_mb']:,.0f} | "
            f"{extra:,.0f} | {extra / largest:.2f}x | "
            + (
                "n/a (reference)"
                if mode == "session"
                else ("bit-exact" if exact[mode] else "MISMATCH")
            )
            + " |"
        )
    short = {m: _LABELS[m].split(" ")[0] + (" base" if m.endswith("@base") else "") for m in modes}
    per_round_head = (
        "| round | "
        + " | ".join(short[m] for m in modes)
        + " | "
        + " | ".join(f"{short[m]}/(a)" for m in modes[1:])
        + " |\n|"
        + "---|" * (2 * len(modes))
    )
    per_round = "\n".join(
        f"| {i + 1} | "
        + " | ".join(f"{r[m]['seconds']:.2f}" for m in modes)
        + " | "
        + " | ".join(f"{r[m]['seconds'] / r['session']['seconds']:.2f}" for m in modes[1:])
        + " |"
        for i, r in enumerate(rounds)
    )
    baseline = ""
    if args.baseline:
        commit = subprocess.run(
            ["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        baseline = f"Baseline tree: `{args.baseline}` (commit {commit or 'unknown'}).\n"
    verdicts = []
    for mode in ("parquet", "npz"):
        r = med[mode]
        extra = worst_extra[mode]
        wins = sum(x[mode]["seconds"] <= x["session"]["seconds"] for x in rounds)
        verdicts.append(
            f"- {mode}: time {'met' if r['seconds'] <= a['seconds'] else 'MISSED'} "
            f"(median {r['seconds']:.2f} s vs {a['seconds']:.2f} s; no slower than (a) in "
            f"{wins} of {len(rounds)} rounds); memory "
            f"{'met' if extra < 1.5 * largest else 'MISSED'} (worst {extra:,.0f} MiB vs the "
            f"1.5 x {largest:,.0f} = {1.5 * largest:,.0f} MiB limit); file "
            f"{rounds[0][mode]['file_mb']:,.0f} MiB."
        )
    extra_a = worst_extra["session"]
    text = f"""Command: `python benchmarks/bench_dump.py --big {args.big} --big-mb {args.big_mb:g} \
--small {args.small} --small-mb {args.small_mb:g} --repeat {args.repeat}\
{" --baseline " + args.baseline if args.baseline else ""}`

Generated model (tf.compat.v1, written by this TensorFlow): {info["variables"]} float32
variables, {info["bytes"] / mib:,.0f} MiB in total; {args.big} of {largest:,.0f} MiB
(half resource, half ref variables) and {args.small} of {args.small_mb:g} MiB. Default slice
threshold (64 MiB), so each big variable travels as {int(-(-largest // 64))} slices.
{baseline}Machine: {os.cpu_count()} CPUs, DirectRunner (in-process FnApiRunner). Each run in its own
process, the {len(modes)} interleaved {len(rounds)} times; seconds and peak RSS are medians, "extra"
(peak RSS less the RSS right after importing TensorFlow, Beam and beam_v1) is the worst round.

| run | seconds | vs (a) | peak RSS MiB | extra MiB | extra / largest variable | values |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Each round (seconds):

{per_round_head}
{per_round}

Targets (issue 6): (b) and (c) no slower than (a); extra RSS under 1.5x the largest variable.
{chr(10).join(verdicts)}
- (a) needs {extra_a:,.0f} MiB extra ({extra_a / (info["bytes"] / mib):.2f}x the whole model).
"""
    os.makedirs(os.path.dirname(args.results) or ".", exist_ok=True)
    with open(args.results, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
