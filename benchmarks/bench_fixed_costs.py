"""Fixed costs and per-worker throughput of `beam-v1 score` at 1 and 2 workers (issue 16,
item 7): the measurements behind the scaling model in RESULTS.md.

Variants, each a whole `python -m beam_v1 score` process, on a tiny input (fixed cost) and a
big one (throughput), one at a time:

  dr      DirectRunner, in-memory (one process)
  mp1     --direct_running_mode=multi_processing --direct_num_workers=1
  mp2     the same with 2 workers
  dask1   beam_v1's DaskRunner on a fresh `dask.distributed` cluster of 1 worker process
          (--nthreads 1): a tiny job (cold: the worker imports TensorFlow), the tiny job again
          (warm), then the big job on the same, warm cluster
  dask2   the same with 2 worker processes

Timestamps come from the processes themselves: a `sitecustomize` probe (written to OUT/probe
and put first on PYTHONPATH for the run and its worker processes) records, per process, its
start (from /proc), when Python reached `site`, the import of `tensorflow`, `apache_beam` and
`beam_v1`, the preflight (`check_scoring`), each model load (`load_shared_model`), each batch
scored (`_timed_score`: start, end, rows), Beam's worker shutdown (`close_all`) and `atexit`.
Process exits and CPU seconds per process are sampled from /proc from outside every 50 ms.
Every run's summary must count every input row. Each run appends to OUT/fixed_costs.json;
`--report` prints, from every run there: the terms per variant (medians), the model fitted on
1 worker and checked on 2, the projection to 1B rows on 8, 64 and 512 workers, and the
fixed cost of the DirectRunner variants phase by phase.

  python benchmarks/bench_fixed_costs.py --rows 2000000 --tiny-rows 1000 [--repeat 2]
  python benchmarks/bench_fixed_costs.py --report
  python benchmarks/bench_fixed_costs.py --exit-test 3   # interpreter exit vs os._exit
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from bench_score import build_model, write_data, write_subset  # noqa: E402

PROBE = r'''
"""Benchmark probe (bench_fixed_costs.py): timestamps of this process's phases."""
import atexit, importlib.abc, importlib.machinery, json, os, sys, time

_DIR = os.environ.get("BENCH_PROBE_DIR")
_WATCH = {"tensorflow", "apache_beam", "beam_v1"}
_WRAP = {
    "beam_v1.scoring.dofn": ["load_shared_model", "_timed_score"],
    "beam_v1.scoring.preflight": ["check_scoring"],
    "beam_v1.cli.score": ["score"],
    "apache_beam.runners.portability.fn_api_runner.worker_handlers":
        ["WorkerHandlerManager.close_all"],
}


def _emit(**event):
    event["pid"] = os.getpid()
    event["cpu"] = time.process_time()  # this process's CPU seconds (all threads) so far
    with open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(event) + "\n")


def _wrap(owner, name, label):
    fn = getattr(owner, name)

    def wrapped(*a, **k):
        t0, c0 = time.time(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            rows = None
            if label.endswith("_timed_score") and len(a) > 1:
                rows = getattr(a[1], "num_rows", None)
            _emit(ev=label, t0=t0, t1=time.time(), rows=rows, cpu0=c0)

    setattr(owner, name, wrapped)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, fullname):
        self.inner, self.fullname = inner, fullname

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        t0, c0 = time.time(), time.process_time()
        self.inner.exec_module(module)
        if self.fullname in _WATCH:
            _emit(ev="import " + self.fullname, t0=t0, t1=time.time(), cpu0=c0)
        for path in _WRAP.get(self.fullname, ()):
            owner = module
            *parents, name = path.split(".")
            for p in parents:
                owner = getattr(owner, p)
            _wrap(owner, name, path)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCH and fullname not in _WRAP:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader, fullname)
        return spec


def _proc_start():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


if _DIR:
    _emit(ev="start", t=_proc_start(), argv=sys.argv[:3], ppid=os.getppid())
    _emit(ev="site", t=time.time())
    atexit.register(lambda: _emit(ev="atexit", t=time.time()))
    sys.meta_path.insert(0, _Finder())
'''


# ============================================================================ measuring


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(ppid, state, cpu seconds) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), fields[0], (int(fields[11]) + int(fields[12])) / tick


def _snapshot() -> dict[int, tuple[int, str, float]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            s = _stat(int(name))
            if s is not None:
                out[int(name)] = s
    return out


def _descendants(root: int, table: dict) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, ()))
    return out


def run_process(cmd: list[str], log_path: str, env: dict, watch: tuple[int, ...] = ()) -> dict:
    """Run `cmd`; its launch and exit time, CPU (children included, from wait4), and per
    process of its tree (and of `watch`, e.g. dask workers): last time seen alive and CPU s."""
    seen: dict[int, dict] = {}
    base = {pid: s[2] for pid in watch if (s := _stat(pid))}
    with open(log_path, "w") as log:
        launch = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=os.path.dirname(log_path))
        while True:
            done, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.time()
            if done:
                break
            table = _snapshot()
            for pid in _descendants(proc.pid, table) | set(watch):
                if pid in table:
                    ppid, state, cpu = table[pid]
                    rec = seen.setdefault(pid, {"first_seen": now})
                    rec["cpu_s"] = cpu - base.get(pid, 0.0)
                    if state != "Z":
                        rec["last_alive"] = now
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {log_path}:\n"
                           + Path(log_path).read_text()[-3000:])
    for pid in watch:
        if (s := _stat(pid)) and pid in seen:
            seen[pid]["cpu_s"] = s[2] - base.get(pid, 0.0)
    return {"launch": launch, "exit": now, "pid": proc.pid,
            "cpu_s": usage.ru_utime + usage.ru_stime, "procs": seen}


def read_probe(probe_dir: str) -> dict[int, list[dict]]:
    events: dict[int, list[dict]] = {}
    for path in glob.glob(os.path.join(probe_dir, "*.jsonl")):
        for line in Path(path).read_text().splitlines():
            e = json.loads(line)
            events.setdefault(e["pid"], []).append(e)
    return events


def _first(events: list[dict], ev: str) -> dict | None:
    return next((e for e in events if e["ev"] == ev), None)


def timeline(run: dict, events: dict[int, list[dict]], launcher: int) -> dict:
    """The phases of one job, seconds from its launch, from the probe and /proc samples."""
    launch, exit_ = run["launch"], run["exit"]

    def rel(t):
        return None if t is None else round(t - launch, 3)

    def span(e):  # [start, end] in s from launch, and the CPU s the process spent in between
        if e is None:
            return None
        return [rel(e["t0"]), rel(e["t1"]), round(e["cpu"] - e.get("cpu0", e["cpu"]), 3)]

    def cpu_at(e):
        return None if e is None else round(e["cpu"], 3)

    mine = {pid: [e for e in evs if e.get("t", e.get("t0", 0)) >= launch - 1
                  and e.get("t", e.get("t1", 0)) <= exit_ + 1] for pid, evs in events.items()}
    le = mine.get(launcher, [])
    out = {
        "wall_s": round(exit_ - launch, 3),
        "cpu_s_tree": round(run["cpu_s"], 2),
        "launcher": {
            "python_up": rel((_first(le, "site") or {}).get("t")),
            "import_tensorflow": span(_first(le, "import tensorflow")),
            "import_apache_beam": span(_first(le, "import apache_beam")),
            "check_scoring": span(_first(le, "check_scoring")),
            "score": span(_first(le, "score")),
            "close_all": span(_first(le, "WorkerHandlerManager.close_all")),
            "atexit": rel((_first(le, "atexit") or {}).get("t")),
            "cpu_at_atexit": cpu_at(_first(le, "atexit")),
            "exit": rel(exit_),
        },
        "workers": {},
    }
    for pid, evs in sorted(mine.items()):
        batches = [e for e in evs if e["ev"] == "_timed_score"]
        if not batches:
            continue
        rows = sum(e["rows"] or 0 for e in batches)
        first_b = min(batches, key=lambda e: e["t0"])
        last_b = max(batches, key=lambda e: e["t1"])
        first, last = first_b["t0"], last_b["t1"]
        start = _first(events[pid], "start")
        loads = [span(e) for e in evs if e["ev"] == "load_shared_model"]
        proc = run["procs"].get(pid, {})
        out["workers"][pid] = {
            "process_start": rel(start["t"]) if start and start["t"] >= launch - 1 else None,
            "python_up": rel((_first(evs, "site") or {}).get("t")),
            "import_apache_beam": span(_first(evs, "import apache_beam")),
            "import_tensorflow": span(_first(evs, "import tensorflow")),
            "model_loads": loads,
            "first_batch": rel(first),
            "last_batch_end": rel(last),
            "batches": len(batches),
            "rows": rows,
            "batch_s": round(sum(e["t1"] - e["t0"] for e in batches), 3),
            "cpu_at_first_batch": round(first_b["cpu0"], 3),
            "cpu_at_last_batch_end": round(last_b["cpu"], 3),
            "cpu_at_atexit": cpu_at(_first(evs, "atexit")),
            "rows_per_s_span": round(rows / max(last - first, 1e-9)),
            "atexit": rel((_first(evs, "atexit") or {}).get("t")),
            "exit": rel(proc.get("last_alive")) if pid != launcher else rel(exit_),
            "cpu_s": round(proc.get("cpu_s", 0.0), 2),
        }
    ws = out["workers"].values()
    if ws:
        first = min(w["first_batch"] for w in ws)
        last = max(w["last_batch_end"] for w in ws)
        out["startup_s"] = first
        out["work_s"] = round(last - first, 3)
        out["shutdown_s"] = round(exit_ - launch - last, 3)
        out["rows"] = sum(w["rows"] for w in ws)
    return out


def cli_cmd(model: str, pattern: str, prefix: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "beam_v1", "score", "--model", model, "--input", pattern,
            "--output", prefix, "--quiet", "--batch-size", "65536", *extra]


def one_job(name, model, pattern, rows, out, env, probe, extra, watch=()) -> dict:
    name += TAG[0]
    folder = os.path.join(out, "runs", name)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    prefix = os.path.join(folder, "scored")
    run = run_process(cli_cmd(model, pattern, prefix, extra), folder + ".log", env, watch)
    summary = json.loads(Path(prefix + "-summary.json").read_text())
    if summary["rows_in"] != rows or summary["rows_scored"] != rows:
        raise RuntimeError(f"{name}: scored {summary['rows_scored']} of {rows}: {summary}")
    t = timeline(run, read_probe(probe), run["pid"])
    t.update(name=name, rows_in=rows, files_written=len(summary["files_written"]),
             summary_seconds=summary["seconds"])
    if watch:
        t["worker_cpu_s"] = {p: round(run["procs"].get(p, {}).get("cpu_s", 0.0), 2)
                             for p in watch}
    print(json.dumps(_brief(t)), flush=True)
    return t


def _brief(t: dict) -> dict:
    keys = ("name", "wall_s", "startup_s", "work_s", "shutdown_s", "cpu_s_tree", "rows")
    return {k: t.get(k) for k in keys}


CODE = [str(REPO)]
TAG = [""]  # the beam_v1 tree the launcher runs (--code)


def probe_env(probe: str) -> dict:
    shutil.rmtree(probe, ignore_errors=True)
    os.makedirs(probe)
    Path(probe, "sitecustomize.py").write_text(PROBE)
    return dict(os.environ, BENCH_PROBE_DIR=probe, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join([probe, CODE[0]]))


def direct_variants(args, model, inputs, out) -> list[dict]:
    modes = {
        "dr": [],
        "mp1": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
        "mp2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    }
    results = []
    for rep in range(args.repeat):
        for size, (pattern, rows) in inputs.items():
            for name, extra in modes.items():
                if name not in args.variants:
                    continue
                probe = os.path.join(out, "probe", f"{name}-{size}-{rep}{args.tag}")
                env = probe_env(probe)
                results.append(one_job(f"{name}-{size}-r{rep}", model, pattern, rows, out, env,
                                       probe, extra))
    return results


def dask_variants(args, model, inputs, out) -> list[dict]:
    import clusters

    results = []
    for workers in (1, 2):
        if f"dask{workers}" not in args.variants:
            continue
        for rep in range(args.repeat):
            probe = os.path.join(out, "probe", f"dask{workers}-{rep}{args.tag}")
            env = probe_env(probe)
            logs = os.path.join(out, "runs", f"dask{workers}-r{rep}{args.tag}-cluster")
            shutil.rmtree(logs, ignore_errors=True)
            os.makedirs(logs)
            saved = os.environ.copy()
            os.environ.update(env)  # clusters.worker_env() passes it on to the workers
            try:
                t0 = time.time()
                with clusters.dask_cluster(logs, workers=workers) as address:
                    ready = time.time() - t0
                    os.environ.clear()
                    os.environ.update(saved)
                    pids = _dask_worker_pids(probe, workers)
                    extra = ["--runner", "DaskRunner", "--dask_client_address", address]
                    for job, (size, cold) in enumerate(
                        (("tiny", "cold"), ("tiny", "warm"), ("big", "warm"))
                    ):
                        pattern, rows = inputs[size]
                        t = one_job(f"dask{workers}-{size}-{cold}-r{rep}", model, pattern, rows,
                                    out, env, probe, extra, watch=tuple(pids))
                        t["cluster_ready_s"] = round(ready, 2) if job == 0 else None
                        results.append(t)
            finally:
                os.environ.clear()
                os.environ.update(saved)
    return results


def _dask_worker_pids(probe: str, workers: int) -> list[int]:
    """Every process of the cluster that the probe saw start (scheduler, nannies, workers)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        pids = sorted(read_probe(probe))
        if len(pids) >= 1 + 2 * workers:
            return pids
        time.sleep(0.5)
    return sorted(read_probe(probe))


# ============================================================================ the model


def _phase(t: dict, n: int) -> dict:
    """One job's terms in wall s (this machine, as loaded) and CPU s (what an idle core would
    take for the single-threaded start-up and shutdown phases)."""
    ws = list(t["workers"].values())
    launcher = t["launcher"]
    pre_cpu = launcher["import_tensorflow"][2] + launcher["import_apache_beam"][2]
    name = t["name"]
    if name.startswith("dr"):  # the launcher is the worker
        start_cpu = max(w["cpu_at_first_batch"] for w in ws)
    elif name.startswith("mp"):  # the launcher's imports, then the slowest worker's start
        start_cpu = pre_cpu + max(w["cpu_at_first_batch"] for w in ws)
    else:  # a dask worker, up already: its TensorFlow import (cold) and model loads
        start_cpu = pre_cpu + max(
            (w["import_tensorflow"][2] if w["import_tensorflow"] else 0.0)
            + sum(x[2] for x in w["model_loads"]) for w in ws
        )
    fin_launcher = t["cpu_s_tree"] - (launcher["cpu_at_atexit"] or 0)
    if t["name"].startswith("mp"):
        fin_launcher -= sum(w["cpu_s"] for w in ws)  # the tree's CPU includes the workers
        fin_workers = [w["cpu_s"] - w["cpu_at_atexit"] for w in ws if w["cpu_at_atexit"]]
    else:
        fin_workers = []
    return {
        "wall_s": t["wall_s"], "startup_s": t["startup_s"], "work_s": t["work_s"],
        "shutdown_s": t["shutdown_s"], "rows": t["rows_in"],
        "preflight_to_first_batch_s": t["startup_s"] - launcher["check_scoring"][1],
        "scored_rows": t["rows"],
        "close_all_s": (launcher["close_all"][1] - launcher["close_all"][0])
        if launcher["close_all"] else 0.0,
        "cpu_startup_s": start_cpu,
        # the job's CPU: the launcher's process tree, plus the cluster's processes on Dask
        "cpu_job_s": t["cpu_s_tree"] + sum((t.get("worker_cpu_s") or {}).values()),
        "cpu_finalize_launcher_s": fin_launcher,
        "cpu_finalize_worker_s": max(fin_workers) if fin_workers else 0.0,
    }


def terms(results: list[dict], prefix: str, n: int) -> dict:
    """Median terms over repeats: startup and shutdown from the tiny runs of `prefix`
    (e.g. "mp1", "dask2-" + "warm"), rate and CPU per row from the big runs."""
    import statistics

    family, _, kind = prefix.partition(":")
    tiny = [_phase(r, n) for r in results
            if r["name"].startswith(family + "-tiny") and kind in r["name"]]
    big = [_phase(r, n) for r in results
           if r["name"].startswith(family + "-big") and kind in r["name"]]

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    rows = big[0]["rows"]
    out = {k: med(tiny, k) for k in ("wall_s", "startup_s", "shutdown_s", "close_all_s",
                                     "cpu_startup_s", "cpu_finalize_launcher_s",
                                     "cpu_finalize_worker_s")}
    out.update(
        runs=(len(tiny), len(big)),
        wall_big_s=med(big, "wall_s"),
        span_rows_per_s=rows / med(big, "work_s"),  # first batch to last, in the workers
        scored_per_row=med(big, "scored_rows") / rows,
        # CPU per row beyond the fixed cost: reading, scoring and writing, every process
        cpu_us_per_row=(med(big, "cpu_job_s") - med(tiny, "cpu_job_s"))
        / (rows - tiny[0]["rows"]) * 1e6,
    )
    # steady rate: batches overlap reading on the DirectRunner (first batch to last); a Dask
    # task reads its whole partition before its first batch, so that reading is added: the
    # big run's wait from the preflight to the first batch beyond the tiny run's
    work = med(big, "work_s")
    if family.startswith("dask"):
        work += med(big, "preflight_to_first_batch_s") - med(tiny, "preflight_to_first_batch_s")
    out.update(work_big_s=work, rows_per_s=rows / work)
    out["rows_per_s_per_worker"] = out["rows_per_s"] / n
    return out


def predict(t1: dict, n: int, rows: float, serial_s: float) -> dict:
    """T(n, R) = startup(1) + R / (n * rate(1)) + shutdown(1) + (n - 1) * serial_s: the
    workers start together (start-up as one worker's), share the rows with efficiency 1, and
    `serial_s` is what each further worker adds one after the other (Beam's close of one)."""
    rate = n * t1["rows_per_s"]
    parts = {"startup_s": t1["startup_s"], "work_s": rows / rate,
             "shutdown_s": t1["shutdown_s"] + (n - 1) * serial_s}
    return {**parts, "wall_s": sum(parts.values()), "rows_per_s": rate}


def report(results: list[dict], rows_big: int, target_rows: float = 1e9) -> str:  # noqa: C901
    """Markdown: measured terms, the fit on 1 worker checked on 2, the projection."""
    lines = ["| variant | runs (tiny, big) | start-up s | shutdown s | Beam close_all s | "
             "steady rows/s | per worker | in-batch rows/s | scored/row | CPU us/row | "
             "start-up CPU s | finalize CPU s (launcher / worker) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    measured = {}
    variants = [("dr", 1), ("mp1", 1), ("mp2", 2)] + [
        (f"dask{n}:{kind}{fix}", n) for fix in ("", "+fix") for kind in ("warm", "cold")
        for n in (1, 2)
    ]
    for prefix, n in variants:
        fam, _, kind = prefix.partition(":")
        kind, plus, _ = kind.partition("+")
        # "+fix": the runs tagged -fix2 (dask_compat without the double scoring)
        group = [r for r in results if ("-fix2" in r["name"]) == bool(plus)]
        try:
            if kind == "cold":  # a cold cluster ran only a tiny job: its rates are the warm ones
                t = terms([r for r in group if "cold" in r["name"] or "big" in r["name"]],
                          fam + ":", n)
                t.update({k: v for k, v in measured[prefix.replace("cold", "warm")].items()
                          if "per_row" in k or "rows_per_s" in k or k.startswith("work")})
            else:
                t = terms(group, fam + ":" + kind, n)
        except (IndexError, ValueError, KeyError):
            continue
        measured[prefix] = t
        lines.append(
            f"| {prefix} | {t['runs'][0]}, {t['runs'][1]} | {t['startup_s']:.1f} | "
            f"{t['shutdown_s']:.1f} | {t['close_all_s']:.1f} | {t['rows_per_s']:,.0f} | "
            f"{t['rows_per_s_per_worker']:,.0f} | {t['span_rows_per_s']:,.0f} | "
            f"{t['scored_per_row']:.0f} | "
            f"{t['cpu_us_per_row']:.2f} | {t['cpu_startup_s']:.1f} | "
            f"{t['cpu_finalize_launcher_s']:.1f} / {t['cpu_finalize_worker_s']:.1f} |"
        )
    lines += ["", "Fit on 1 worker, checked on 2. Wall s on this machine as loaded; CPU s "
              "(the load-independent check) for the start-up (launcher, then the slowest "
              "worker), one worker's share of the job's CPU per row, and the shutdown's serial "
              "part "
              "(each worker's exit in turn, then the launcher's):", "",
              "| family | point | predicted | measured | measured / predicted |",
              "|---|---|---:|---:|---:|"]

    def row(fam, label, pred, got):
        lines.append(f"| {fam} | {label} | {pred:.1f} | {got:.1f} | {got / pred:.2f} |")

    for fam, one, two in (("mp", "mp1", "mp2"), ("dask warm", "dask1:warm", "dask2:warm"),
                          ("dask warm, fixed", "dask1:warm+fix", "dask2:warm+fix")):
        if one not in measured or two not in measured:
            continue
        t1, t2 = measured[one], measured[two]
        serial = t1["close_all_s"]  # Beam closes each worker in turn; 0 on Dask
        row(fam, "2 workers, 1,000 rows: wall", predict(t1, 2, 1000, serial)["wall_s"],
            t2["wall_s"])
        row(fam, f"2 workers, {rows_big:,} rows: wall",
            predict(t1, 2, rows_big, serial)["wall_s"], t2["wall_big_s"])
        row(fam, "start-up CPU s (parallel: as 1 worker)", t1["cpu_startup_s"],
            t2["cpu_startup_s"])
        row(fam, "work CPU s per worker (half of 1 worker's)",
            t1["cpu_us_per_row"] * rows_big / 2e6, t2["cpu_us_per_row"] * rows_big / 2e6)
        if fam == "mp":
            row(fam, "shutdown CPU s (serial: launcher + 2 x worker)",
                t1["cpu_finalize_launcher_s"] + 2 * t1["cpu_finalize_worker_s"],
                t2["cpu_finalize_launcher_s"] + 2 * t2["cpu_finalize_worker_s"])
    lines += ["", projection(measured, target_rows)]
    return "\n".join(lines) + "\n"


def projection(measured: dict, rows: float) -> str:
    """T(N) for `rows` on N workers, one per vCPU, from the 1-worker terms; the largest term.

    as measured: this run's wall terms (a machine loaded ~4x) and per-worker rate;
    idle: the start-up and shutdown CPU s as wall (single-threaded phases on a free core)
    and 1 / (CPU s per row) per worker."""
    lines = ["| runner | terms | N | start-up s | work s | shutdown s (serial part) | "
             "total s | dominant |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for fam, key in (("multi_processing", "mp1"), ("Dask, warm cluster", "dask1:warm"),
                     ("Dask, fresh cluster", "dask1:cold"),
                     ("Dask fixed, warm cluster", "dask1:warm+fix"),
                     ("Dask fixed, fresh cluster", "dask1:cold+fix")):
        if key not in measured:
            continue
        t = measured[key]
        serial_wall = t["close_all_s"]
        idle_start = t["cpu_startup_s"]
        idle_fixed_shutdown = t["cpu_finalize_launcher_s"]
        idle_serial = t["cpu_finalize_worker_s"]
        idle_rate = 1e6 / t["cpu_us_per_row"]
        for label, start, shut, serial, rate in (
            ("as measured", t["startup_s"], t["shutdown_s"] - serial_wall, serial_wall,
             t["rows_per_s"]),
            ("idle", idle_start, idle_fixed_shutdown, idle_serial, idle_rate),
        ):
            for n in (8, 64, 512):
                work = rows / (n * rate)
                down = shut + n * serial
                parts = {"start-up": start, "work": work, "shutdown": down}
                top = max(parts, key=parts.get)
                lines.append(f"| {fam} | {label} | {n} | {start:.1f} | {work:,.1f} | "
                             f"{down:,.1f} ({n * serial:,.1f}) | {sum(parts.values()):,.1f} | "
                             f"{top} |")
    return "\n".join(lines)


def breakdown(results: list[dict], prefix: str) -> str:
    """The fixed cost of the tiny runs of `prefix`, phase by phase (medians): wall s on this
    machine and the CPU s of the process in that phase."""
    import statistics

    runs = [r for r in results if r["name"].startswith(prefix + "-tiny")]
    phases: dict[str, list[tuple[float, float | None]]] = {}

    def add(name, wall, cpu=None):
        phases.setdefault(name, []).append((wall, cpu))

    for r in runs:
        L = r["launcher"]  # noqa: N806
        ws = sorted(r["workers"].values(), key=lambda w: w["first_batch"])
        add("launcher: start Python", L["python_up"])
        add("launcher: import apache_beam", L["import_apache_beam"][1] - L["import_apache_beam"][0],
            L["import_apache_beam"][2])
        add("launcher: import tensorflow", L["import_tensorflow"][1] - L["import_tensorflow"][0],
            L["import_tensorflow"][2])
        add("launcher: checks before the run (no session)",
            L["check_scoring"][1] - L["check_scoring"][0], L["check_scoring"][2])
        w = ws[-1]  # the last worker to start scoring
        if w["process_start"] is not None and w["process_start"] > 0:
            add("launcher: pipeline and runner set-up, to the workers' start",
                w["process_start"] - L["check_scoring"][1])
            spread = max(x["process_start"] for x in ws) - min(x["process_start"] for x in ws)
            add("workers: spread of their process starts (serial start?)", spread)
            add("worker: start Python", w["python_up"] - w["process_start"])
            add("worker: import apache_beam and Beam's worker set-up",
                w["import_tensorflow"][0] - w["python_up"])
            add("worker: import tensorflow", w["import_tensorflow"][1] - w["import_tensorflow"][0],
                w["import_tensorflow"][2])
            add("worker: to the model load", w["model_loads"][0][0] - w["import_tensorflow"][1])
        add("worker: model load (one session)", w["model_loads"][0][1] - w["model_loads"][0][0],
            w["model_loads"][0][2])
        add("worker: to the first batch", w["first_batch"] - w["model_loads"][0][1])
        add("= start-up (launch to the last worker's first batch)", w["first_batch"])
        last = max(x["last_batch_end"] for x in ws)
        if L["close_all"] and r["name"].startswith("mp"):
            add("launcher: last batch to Beam's close_all (sink finalize)",
                L["close_all"][0] - last)
            for i, x in enumerate(sorted(ws, key=lambda x: x["exit"])):
                add(f"close_all: worker {i + 1} exits (atexit to exit)", x["exit"] - x["atexit"],
                    x["cpu_s"] - x["cpu_at_atexit"])
            add("close_all in all", L["close_all"][1] - L["close_all"][0])
        add("launcher: interpreter exit (atexit to exit)", L["exit"] - L["atexit"],
            r["cpu_s_tree"] - L["cpu_at_atexit"] - sum(x["cpu_s"] for x in ws if x["exit"]
                                                      != L["exit"]))
        add("= shutdown (last batch end to exit)", r["shutdown_s"])
        add("= whole process", r["wall_s"], r["cpu_s_tree"])
    lines = [f"| {prefix}: phase ({len(runs)} run(s), median) | wall s | CPU s |",
             "|---|---:|---:|"]
    for name, values in phases.items():
        wall = statistics.median(v[0] for v in values)
        cpus = [v[1] for v in values if v[1] is not None]
        cpu = f"{statistics.median(cpus):.2f}" if cpus else ""
        lines.append(f"| {name} | {wall:.2f} | {cpu} |")
    return "\n".join(lines)


EXIT_CHILD = r"""
import atexit, os, sys, time
import apache_beam, numpy as np, tensorflow
import beam_v1
beam_v1.load(sys.argv[2]).predict({"x": np.zeros((10, 100), np.float32)})
print(repr(time.time()), flush=True)
if sys.argv[1] == "os._exit":  # what a CLI could do after a successful run
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
"""


def exit_cost(model: str, rounds: int) -> list[dict]:
    """Seconds from the end of the work (TensorFlow and Beam imported, a model loaded and run)
    to the process's exit: a normal exit (interpreter finalisation) vs atexit + os._exit."""
    rows = []
    for rep in range(rounds):
        for mode in ("normal", "os._exit"):
            proc = subprocess.Popen([sys.executable, "-c", EXIT_CHILD, mode, model],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    env=dict(os.environ, PYTHONPATH=CODE[0]))
            done = float(proc.stdout.readline())
            _, status, usage = os.wait4(proc.pid, 0)
            after = round(time.time() - done, 3)
            rows.append({"exit": mode, "round": rep, "exit_after_work_s": after,
                         "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                         "status": os.waitstatus_to_exitcode(status)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ============================================================================ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--tiny-rows", type=int, default=1000)
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--row-group-size", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--variants", default="dr,mp1,mp2,dask1,dask2")
    p.add_argument("--out", default=str(HERE / "out" / "fixed_costs"))
    p.add_argument("--code", default=str(REPO), help="run this copy of beam_v1 (a folder "
                   "holding beam_v1/) in the launcher; Dask workers get this tree too")
    p.add_argument("--tag", default="", help="appended to every run's name")
    p.add_argument("--report", action="store_true", help="only print the tables of OUT's runs")
    p.add_argument("--exit-test", type=int, default=0, metavar="ROUNDS",
                   help="only time a process's exit after the work, normal vs os._exit")
    args = p.parse_args(argv)
    CODE[0] = os.path.abspath(args.code)
    TAG[0] = args.tag
    args.variants = set(args.variants.split(","))
    out = os.path.abspath(args.out)
    if args.report:
        results = json.loads(Path(out, "fixed_costs.json").read_text())
        print(report(results, args.rows))
        for prefix in ("dr", "mp1", "mp2"):
            print(breakdown(results, prefix) + "\n")
        return 0
    os.makedirs(out, exist_ok=True)
    model = os.path.join(out, "model")
    data = os.path.join(out, f"data-{args.rows}")
    tiny = os.path.join(out, f"tiny-{args.tiny_rows}")
    if not os.path.exists(os.path.join(model, "saved_model.pb")):
        shutil.rmtree(model, ignore_errors=True)
        build_model(model)
    if args.exit_test:
        exit_cost(model, args.exit_test)
        return 0
    if not glob.glob(os.path.join(data, "*.parquet")):
        write_data(data, args.rows, args.rows_per_file, args.row_group_size)
    if not glob.glob(os.path.join(tiny, "*.parquet")):
        write_subset(sorted(glob.glob(os.path.join(data, "*.parquet"))), tiny, args.tiny_rows)
    inputs = {"tiny": (os.path.join(tiny, "*.parquet"), args.tiny_rows),
              "big": (os.path.join(data, "*.parquet"), args.rows)}
    results = direct_variants(args, model, inputs, out) + dask_variants(args, model, inputs, out)
    path = os.path.join(out, "fixed_costs.json")
    previous = json.loads(Path(path).read_text()) if os.path.exists(path) else []
    Path(path).write_text(json.dumps(previous + results, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
