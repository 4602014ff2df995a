"""Interop benchmark (issue 7): RunInference(V1ModelHandler) vs RunV1Inference, V1Layer overhead.

One model (bench_score's tf.compat.v1 MLP 100->256->10, `x` float32 [-1,100] -> `scores`
[-1,10]) and one in-memory data set of --rows rows. In this process, on the DirectRunner:

  (1) per-row cost of a whole pipeline over the same rows, model load included:
      - rows (one numpy row per element) | RunInference(V1ModelHandler(...))
        (Beam's BatchElements in front, max_batch_size --handler-batch)
      - pyarrow.RecordBatch of --arrow-batch rows | RunV1Inference(...)
      - the same row source with no model (Beam's own per-row cost)
      Rows are generated inside the pipeline from chunk numbers (a Create of the data itself
      would pickle it into the pipeline proto, which dominates).
      - the floor: `V1Model.predict` over the same rows in batches of --arrow-batch, no Beam
      Every pipeline asserts that it scored every row.
  (2) V1Layer call overhead vs a direct `V1Model.predict` (C++ session callable), per call at
      batch sizes 1, 64 and 4096 (median of --repeat timed loops): V1Layer eager,
      V1Layer under `tf.function`, a functional keras.Model's `predict_on_batch`, and the
      alternative design, a `tf.py_function` bridge around `V1Model.predict` under `tf.function`.
      Outputs are checked equal to the session's before timing.

  /work/venv/bin/python benchmarks/bench_interop.py [--rows 200000] [--repeat 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _time(fn, repeat: int) -> float:
    fn()  # warm up (traces, callables)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _chunk(start: int, size: int, n: int, width: int) -> np.ndarray:
    """Rows start..start+size of the data set, the same every time (seeded by `start`)."""
    rows = min(size, n - start)
    return np.random.RandomState(start).rand(rows, width).astype(np.float32)


def pipelines(path: str, x: np.ndarray, handler_batch: int, arrow_batch: int) -> dict:
    """`x` gives only the data set's shape; the rows come from `_chunk`."""
    import apache_beam as beam
    import pyarrow as pa
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.util import assert_that, equal_to

    import beam_v1
    from beam_v1.interop.handler import V1ModelHandler

    n = len(x)
    out = {}
    # the rows are made inside the pipeline from chunk numbers (a beam.Create of the data, or a
    # closure over it, would pickle and bz2-compress it into the pipeline proto, which dominates)
    chunks = list(range(0, n, arrow_batch))

    width = x.shape[1]

    def rows_of(start):
        return list(_chunk(start, arrow_batch, n, width))

    def batch_of(start):
        part = _chunk(start, arrow_batch, n, width)
        flat = pa.array(part.reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, part.shape[1])
        return pa.RecordBatch.from_arrays([column], names=["x"])

    start = time.perf_counter()
    with beam.Pipeline() as p:
        counted = (
            p
            | beam.Create(chunks)
            | beam.FlatMap(rows_of)
            | RunInference(V1ModelHandler(path, min_batch_size=1, max_batch_size=handler_batch))
            | beam.Map(lambda r: 1)
            | beam.CombineGlobally(sum)
        )
        assert_that(counted, equal_to([n]))
    out["runinference_v1modelhandler"] = time.perf_counter() - start

    start = time.perf_counter()
    with beam.Pipeline() as p:
        result = (
            p
            | beam.Create(chunks)
            | beam.Map(batch_of)
            | beam_v1.RunV1Inference(path, batch_size=arrow_batch)
        )
        counted = result.scored | beam.Map(lambda t: t.num_rows) | beam.CombineGlobally(sum)
        assert_that(counted, equal_to([n]))
    out["runv1inference"] = time.perf_counter() - start

    start = time.perf_counter()
    with beam.Pipeline() as p:  # the same source with no model: the pipeline's own cost
        counted = (
            p
            | beam.Create(chunks)
            | beam.FlatMap(rows_of)
            | beam.Map(lambda r: 1)
            | beam.CombineGlobally(sum)
        )
        assert_that(counted, equal_to([n]))
    out["baseline_rows_no_model"] = time.perf_counter() - start

    start = time.perf_counter()
    with beam_v1.load(path) as model:
        for i in chunks:
            model.predict({"x": _chunk(i, arrow_batch, n, width)})
    out["v1model_predict_loop"] = time.perf_counter() - start
    return {k: {"seconds": v, "us_per_row": v / n * 1e6} for k, v in out.items()}


def layer_overhead(path: str, repeat: int) -> dict:
    import keras
    import tensorflow as tf

    import beam_v1
    from beam_v1.keras import V1Layer

    model = beam_v1.load(path)
    layer = V1Layer(path, outputs="scores")
    traced = tf.function(lambda t: layer(t))

    def bridge_call(t):
        def run(v):
            return model.predict({"x": v.numpy()}, outputs=["scores"])["scores"]

        y = tf.py_function(run, [t], tf.float32)
        y.set_shape([None, 10])
        return y

    bridge = tf.function(bridge_call)
    inp = keras.Input((100,))
    kmodel = keras.Model(inp, layer(inp))

    results = {}
    rng = np.random.RandomState(0)
    for batch in (1, 64, 4096):
        x = rng.rand(batch, 100).astype(np.float32)
        xt = tf.constant(x)
        ref = model.predict({"x": x})["scores"]
        for name, got in (
            ("v1layer_eager", layer(x).numpy()),
            ("v1layer_tf_function", traced(xt).numpy()),
            ("keras_model_predict_on_batch", kmodel.predict_on_batch(x)),
            ("py_function_bridge", bridge(xt).numpy()),
        ):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=name)
        loops = max(1, 2000 // batch)

        def loop(fn, loops=loops):
            return lambda: [fn() for _ in range(loops)]

        timings = {
            "v1model_predict": _time(loop(lambda x=x: model.predict({"x": x})), repeat),
            "v1layer_eager": _time(loop(lambda xt=xt: layer(xt)), repeat),
            "v1layer_tf_function": _time(loop(lambda xt=xt: traced(xt)), repeat),
            "keras_model_predict_on_batch": _time(
                loop(lambda x=x: kmodel.predict_on_batch(x)), repeat
            ),
            "py_function_bridge": _time(loop(lambda xt=xt: bridge(xt)), repeat),
        }
        results[batch] = {k: v / loops * 1e6 for k, v in timings.items()}  # us per call
    model.close()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--handler-batch", type=int, default=4096)
    parser.add_argument("--arrow-batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import bench_score

    with tempfile.TemporaryDirectory(prefix="bench_interop_") as tmp:
        path = bench_score.build_model(os.path.join(tmp, "model"))
        x = np.random.RandomState(1).rand(args.rows, bench_score.N_IN).astype(np.float32)
        report = {
            "rows": args.rows,
            "handler_batch": args.handler_batch,
            "arrow_batch": args.arrow_batch,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "pipelines": pipelines(path, x, args.handler_batch, args.arrow_batch),
            "layer_us_per_call": layer_overhead(path, args.repeat),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
