"""Benchmark: a tf.Example signature fed from Parquet columns.

Two modes.

In one process, three ways side by side:

    python benchmarks/bench_examples.py [--rows 200000] [--taxi-copies 250] [--batch 65536]
        [--results benchmarks/out/RESULTS-examples.md]  (then pasted into RESULTS.md)

(direct)      beam_v1.scoring.example_feeds.ExampleScorer, mode auto: the parse op's outputs
              fed from columns
(serialize)   ExampleScorer, mode serialize: serialized examples built from the columns
              (per-column encoding, no protobuf object per row), parsed by the graph
(proto-loop)  a Python proto loop: a `tf.train.Example` per row built with TensorFlow's Python
              API, serialized, fed to the signature's string input (`V1Model.predict`). This is
              not TFX-BSL; it is the loop a user writes by hand.

Whole processes, interleaved (`--processes`):

    python benchmarks/bench_examples.py --processes [--rows 500000] [--rounds 3] [--floor]

An Estimator-style model (`tf.compat.v1.io.parse_example` of x float32[100], a int64, b float32,
all required; an MLP 100->256->10 on x plus a and b) and a Parquet file of --rows rows. Each
round runs, as separate processes, `python -m beam_v1 score` on the default feed path and a bare
loop (`--proto-loop`: pyarrow batches -> a `tf.train.Example` per row in Python -> the session
of a plain tf.compat.v1 loader -> the outputs written to Parquet). Wall seconds per process,
imports and start-up included, and CPU seconds (user + system of the process and its children);
outputs checked equal; the ratios are bare loop / beam-v1. `--floor` adds a third process per
round that only imports Beam, TensorFlow and pyarrow and exits as beam-v1 does: what no
change to beam-v1 can cut.

Models: the Estimator-style fixture of tests/test_examples.py (numeric with/without default,
bucketized, vocabulary file -> indicator, var-len int ids -> indicator, a [2] numeric) on
--rows generated rows; and the TFX Chicago-taxi 1.15 export (rewritten BoostedTreesBucketize)
on its 414 examples repeated --taxi-copies times. All three ways run in one process on the same
Arrow table, batch by batch (--batch rows), after one warm-up batch each; outputs are checked
equal across the three ways. Times are wall seconds for the whole table, conversion included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))


def proto_loop(model, scorer, table):
    import numpy as np
    from test_examples import tf_examples

    serialized = np.array(tf_examples(table, scorer.spec), dtype=object)
    return model.predict({scorer.input_key: serialized}, signature=scorer.sig.key,
                         outputs=list(scorer.output_keys))


def run_ways(model, signature, table, batch):
    import numpy as np

    from beam_v1.scoring import example_feeds

    direct = example_feeds.ExampleScorer(model, signature, mode="auto")
    assert direct.direct, direct.blocker
    exact = example_feeds.ExampleScorer(model, signature, mode="serialize")
    ways = {
        "direct": lambda t: direct.score(t)[1],
        "serialize": lambda t: exact.score(t)[1],
        "proto-loop": lambda t: proto_loop(model, exact, t),
    }
    results, outputs = {}, {}
    for name, fn in ways.items():
        fn(table.slice(0, min(batch, 1024)))  # warm-up: callables built, graph optimised
        started = time.perf_counter()
        parts = [fn(table.slice(i, batch)) for i in range(0, table.num_rows, batch)]
        results[name] = time.perf_counter() - started
        outputs[name] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for name in ("serialize", "proto-loop"):
        for key, value in outputs["direct"].items():
            np.testing.assert_array_equal(value, outputs[name][key], err_msg=f"{name} {key}")
    return results


# ------------------------------------------------------------------ whole processes

FEATURES_DOC = "x float32[100], a int64, b float32 (all required)"


def build_mlp_estimator(path: str) -> str:
    """parse_example(x float32[100], a int64, b float32) -> MLP 100->256->10 (+ a, b)."""
    import builders
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.1, (100, 256)).astype(np.float32)
    w2 = rng.normal(0, 0.1, (256, 10)).astype(np.float32)

    def make():
        serialized = v1.placeholder(tf.string, [None], name="input_example_tensor")
        f = v1.io.parse_example(serialized, {
            "x": v1.io.FixedLenFeature([100], tf.float32),
            "a": v1.io.FixedLenFeature([], tf.int64),
            "b": v1.io.FixedLenFeature([], tf.float32),
        })
        hidden = tf.nn.relu(tf.matmul(f["x"], v1.get_variable("w1", initializer=w1)))
        logits = tf.matmul(hidden, v1.get_variable("w2", initializer=w2))
        extra = tf.cast(f["a"], tf.float32) * 0.01 + f["b"]
        scores = tf.identity(logits + extra[:, None], name="scores")
        return {"serving_default": builders.predict({"examples": serialized},
                                                    {"scores": scores})}, None

    return builders.build(path, make)


def write_input(path: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    x = pa.FixedSizeListArray.from_arrays(rng.normal(0, 1, rows * 100).astype(np.float32), 100)
    table = pa.table({"x": x, "a": pa.array(rng.integers(0, 100, rows)),
                      "b": pa.array(rng.normal(0, 1, rows).astype(np.float32))})
    pq.write_table(table, path, row_group_size=65536)


def run_proto_loop(model: str, input_path: str, output: str, batch: int = 65536) -> None:
    """The bare loop, in this process: Parquet batches -> tf.train.Example per row (Python) ->
    Session.run of the signature -> outputs to one Parquet file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    v1 = tf.compat.v1
    with v1.Session(graph=tf.Graph()) as sess:
        meta = v1.saved_model.loader.load(sess, ["serve"], model)
        sig = meta.signature_def["serving_default"]
        feed, fetch = sig.inputs["examples"].name, sig.outputs["scores"].name
        parts = []
        for record_batch in pq.ParquetFile(input_path).iter_batches(batch_size=batch):
            cols = record_batch.to_pydict()
            serialized = [
                tf.train.Example(features=tf.train.Features(feature={
                    "x": tf.train.Feature(float_list=tf.train.FloatList(value=x)),
                    "a": tf.train.Feature(int64_list=tf.train.Int64List(value=[a])),
                    "b": tf.train.Feature(float_list=tf.train.FloatList(value=[b])),
                })).SerializeToString()
                for x, a, b in zip(cols["x"], cols["a"], cols["b"])
            ]
            parts.append(sess.run(fetch, {feed: serialized}))
    scores = np.concatenate(parts)
    pq.write_table(pa.table({"scores": pa.FixedSizeListArray.from_arrays(scores.ravel(), 10)}),
                   output)


# the imports every `beam-v1 score` process needs, then the end beam-v1's command line uses
# (os._exit once done, see beam_v1.cli.process_end): the floor of any such process
IMPORTS_FLOOR = "import os, apache_beam, tensorflow, pyarrow.parquet; os._exit(0)"


def run_processes(rows: int, rounds: int, results: str, floor: bool = False) -> int:
    import resource
    import statistics
    import subprocess

    import numpy as np
    import pyarrow.parquet as pq

    load = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(HERE.parent)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_mlp_estimator(os.path.join(tmp, "model"))
        data = os.path.join(tmp, "in.parquet")
        write_input(data, rows)
        commands = {
            "beam-v1 score": [sys.executable, "-m", "beam_v1", "score", "--model", model,
                              "--input", data, "--output", os.path.join(tmp, "scored"),
                              "--num-shards", "1", "--quiet"],
            "proto loop": [sys.executable, str(Path(__file__).resolve()), "--proto-loop",
                           model, data, os.path.join(tmp, "loop.parquet")],
        }
        if floor:
            commands["imports floor"] = [sys.executable, "-c", IMPORTS_FLOOR]
        times: dict[str, list[float]] = {k: [] for k in commands}
        cpu: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(rounds):  # interleaved: A B A B ...
            for name, cmd in commands.items():
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                times[name].append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[name].append(after.ru_utime + after.ru_stime
                                 - before.ru_utime - before.ru_stime)
        (scored,) = Path(tmp).glob("scored-0*.parquet")
        ours = np.asarray(pq.read_table(scored).column("scores").to_pylist(), np.float32)
        loop = np.asarray(pq.read_table(os.path.join(tmp, "loop.parquet"))
                          .column("scores").to_pylist(), np.float32)
        assert ours.shape == loop.shape == (rows, 10), (ours.shape, loop.shape)
        np.testing.assert_allclose(ours, loop, rtol=1e-5, atol=1e-5)  # batch splits differ
    a_name, b_name = "beam-v1 score", "proto loop"
    ratios = [b / a for a, b in zip(times[a_name], times[b_name])]
    cpu_ratios = [b / a for a, b in zip(cpu[a_name], cpu[b_name])]
    lines = [
        f"`python benchmarks/bench_examples.py --processes --rows {rows} --rounds {rounds}"
        f"{' --floor' if floor else ''}` on "
        f"{os.cpu_count()} CPU(s), load average {load:.1f} at the start. Model: parse_example "
        f"of {FEATURES_DOC}, MLP 100->256->10.",
        "",
        "| round | beam-v1 score wall / CPU (s) | proto loop wall / CPU (s) | "
        "proto loop / beam-v1, wall | CPU |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i in range(rounds):
        lines.append(f"| {i + 1} | {times[a_name][i]:.1f} / {cpu[a_name][i]:.1f} | "
                     f"{times[b_name][i]:.1f} / {cpu[b_name][i]:.1f} | {ratios[i]:.2f}x | "
                     f"{cpu_ratios[i]:.2f}x |")
    lines.append(f"| median | | | {statistics.median(ratios):.2f}x | "
                 f"{statistics.median(cpu_ratios):.2f}x |")
    if floor:
        above = [a - f for a, f in zip(times[a_name], times["imports floor"])]
        lines += [
            "",
            "Imports floor (`python -c \"" + IMPORTS_FLOOR + "\"`), in the same rounds: "
            "wall / CPU (s) "
            + ", ".join(f"{w:.1f} / {c:.1f}" for w, c in zip(times["imports floor"],
                                                            cpu["imports floor"]))
            + f"; beam-v1 score above it, median wall {statistics.median(above):.1f} s.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    Path(results).write_text(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", action="store_true",
                        help="beam-v1 score vs a bare proto loop, whole processes, interleaved")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor", action="store_true",
                        help="with --processes: also time a process that only imports Beam, "
                        "TensorFlow and pyarrow (the floor of beam-v1's fixed cost)")
    parser.add_argument("--proto-loop", nargs=3, metavar=("MODEL", "INPUT", "OUTPUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None,
                        help="rows (default 200000; 500000 with --processes)")
    parser.add_argument("--taxi-copies", type=int, default=250)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--results", default=str(HERE / "out" / "RESULTS-examples.md"))
    args = parser.parse_args(argv)
    if args.proto_loop:
        run_proto_loop(*args.proto_loop)
        return 0
    if args.processes:
        return run_processes(args.rows or 500_000, args.rounds,
                             args.results.replace("RESULTS-examples", "RESULTS-examples-processes"),
                             floor=args.floor)
    args.rows = args.rows or 200_000

    import pyarrow as pa
    from test_examples import REALMODELS, TAXI_DATA, build_estimator_style, fixture_table

    import beam_v1
    from beam_v1.io import tfrecord

    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = build_estimator_style(os.path.join(tmp, "model"))
        table = fixture_table(args.rows, seed=1)
        with beam_v1.load(path) as model:
            rows_out.append(("Estimator-style fixture", table.num_rows,
                             run_ways(model, "serving_default", table, args.batch)))
    taxi = REALMODELS / "tfx__chicago_taxi_estimator_tf1.15_1571697424"
    if taxi.is_dir():
        (record_file,) = TAXI_DATA.glob("*.gz")
        one = tfrecord.decode_examples(tfrecord.read_records(str(record_file)))
        table = pa.concat_tables([one] * args.taxi_copies)
        with beam_v1.load(str(taxi)) as model:
            rows_out.append(("Chicago taxi tf1.15 (predict)", table.num_rows,
                             run_ways(model, "predict", table, args.batch)))

    lines = [
        "# tf.Example signatures from Parquet columns: direct feed vs serialize vs a Python "
        "proto loop",
        "",
        f"`python benchmarks/bench_examples.py --rows {args.rows} --taxi-copies "
        f"{args.taxi_copies} --batch {args.batch}` on {os.cpu_count()} CPU(s); one process, "
        "same Arrow table for every way, wall time incl. conversion, after a warm-up batch. "
        "Outputs checked identical across the three ways.",
        "",
        "| model | rows | way | seconds | rows/s | vs proto loop |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for model_name, n, results in rows_out:
        base = results["proto-loop"]
        for way, seconds in results.items():
            lines.append(f"| {model_name} | {n:,} | {way} | {seconds:.3f} | "
                         f"{n / seconds:,.0f} | {base / seconds:.1f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
