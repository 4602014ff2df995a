"""Benchmark: a tf.Example signature fed from Parquet columns, three ways, side by side.

    python benchmarks/bench_examples.py [--rows 200000] [--taxi-copies 250] [--batch 65536]
        [--results benchmarks/out/RESULTS-examples.md]  (then pasted into RESULTS.md)

(direct)    beam_v1.model.examples.ExampleScorer, mode auto: the parse op's outputs fed from columns
(serialize) ExampleScorer, mode serialize: serialized examples built from the columns
            (per-column encoding, no protobuf object per row), parsed by the graph
(tfx-bsl)   TFX-BSL style: a `tf.train.Example` per row built with TensorFlow's Python API,
            serialized, fed to the signature's string input (`V1Model.predict`)

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


def tfx_bsl_style(model, scorer, table):
    import numpy as np
    from test_examples import tf_examples

    serialized = np.array(tf_examples(table, scorer.spec), dtype=object)
    return model.predict({scorer.input_key: serialized}, signature=scorer.sig.key,
                         outputs=list(scorer.output_keys))


def run_ways(model, signature, table, batch):
    import numpy as np

    from beam_v1.model import examples

    direct = examples.ExampleScorer(model, signature, mode="auto")
    assert direct.direct, direct.blocker
    exact = examples.ExampleScorer(model, signature, mode="serialize")
    ways = {
        "direct": lambda t: direct.score(t)[1],
        "serialize": lambda t: exact.score(t)[1],
        "tfx-bsl": lambda t: tfx_bsl_style(model, exact, t),
    }
    results, outputs = {}, {}
    for name, fn in ways.items():
        fn(table.slice(0, min(batch, 1024)))  # warm-up: callables built, graph optimised
        started = time.perf_counter()
        parts = [fn(table.slice(i, batch)) for i in range(0, table.num_rows, batch)]
        results[name] = time.perf_counter() - started
        outputs[name] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for name in ("serialize", "tfx-bsl"):
        for key, value in outputs["direct"].items():
            np.testing.assert_array_equal(value, outputs[name][key], err_msg=f"{name} {key}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--taxi-copies", type=int, default=250)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--results", default=str(HERE / "out" / "RESULTS-examples.md"))
    args = parser.parse_args(argv)

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
        "# tf.Example signatures from Parquet columns: direct feed vs serialize vs TFX-BSL style",
        "",
        f"`python benchmarks/bench_examples.py --rows {args.rows} --taxi-copies "
        f"{args.taxi_copies} --batch {args.batch}` on {os.cpu_count()} CPU(s); one process, "
        "same Arrow table for every way, wall time incl. conversion, after a warm-up batch. "
        "Outputs checked identical across the three ways.",
        "",
        "| model | rows | way | seconds | rows/s | vs tfx-bsl |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for model_name, n, results in rows_out:
        base = results["tfx-bsl"]
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
