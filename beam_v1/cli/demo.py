"""`beam-v1 demo`: build a TF1 model and Parquet data, score them on the DirectRunner."""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_v1.cli.flags import command_parser
from beam_v1.errors import BeamV1Error

N_FEATURES = 16
N_CLASSES = 3


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        sub, "demo", help="score a generated model's Parquet data on the DirectRunner"
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows of generated data")
    parser.add_argument(
        "--workdir", default=None, help="an empty or new folder to use instead of a temp dir"
    )
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    return run_demo(args.rows, args.workdir)


def build_demo_model(path: str, seed: int = 0) -> str:
    """A TF1 graph-mode classifier: x float32 [-1,16], age int64 [-1] -> label, probabilities."""
    import tensorflow as tf  # deferred: TensorFlow start-up, only when the demo runs

    tf.get_logger().setLevel("ERROR")  # TF1 builder APIs warn that they are TF1 APIs
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, N_FEATURES], name="x")
        age = tf.compat.v1.placeholder(tf.float32, [None], name="age")
        w1 = tf.compat.v1.Variable(
            rng.normal(size=(N_FEATURES + 1, 32)).astype(np.float32), name="dense/kernel"
        )
        b1 = tf.compat.v1.Variable(np.zeros(32, np.float32), name="dense/bias")
        w2 = tf.compat.v1.Variable(
            rng.normal(size=(32, N_CLASSES)).astype(np.float32), name="logits/kernel"
        )
        features = tf.concat([x, tf.expand_dims(age / 100.0, 1)], axis=1)
        hidden = tf.nn.relu(tf.matmul(features, w1) + b1)
        probabilities = tf.nn.softmax(tf.matmul(hidden, w2), name="probabilities")
        label = tf.argmax(probabilities, axis=1, name="label")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            builder = tf.compat.v1.saved_model.Builder(path)
            signature = tf.compat.v1.saved_model.predict_signature_def(
                inputs={"x": x, "age": age},
                outputs={"label": label, "probabilities": probabilities},
            )
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={"serving_default": signature}
            )
            builder.save()
    return path


def write_demo_data(
    folder: str, rows: int, files: int = 4, seed: int = 1, bad_rows: int = 3
) -> tuple[str, int]:
    """Parquet files with columns id, x (fixed_size_list<16>), age; `bad_rows` with a null age."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    per_file = -(-rows // files)
    written = 0
    for i in range(files):
        n = min(per_file, rows - written)
        if n <= 0:
            break
        x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        age = rng.integers(18, 90, size=n).astype(np.int64)
        mask = np.zeros(n, dtype=bool)
        if i == 0 and bad_rows:
            mask[rng.choice(n, size=min(bad_rows, n), replace=False)] = True
        table = pa.table(
            {
                "id": pa.array(np.arange(written, written + n, dtype=np.int64)),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), N_FEATURES),
                "age": pa.array(age, mask=mask),
            }
        )
        pq.write_table(table, os.path.join(folder, f"part-{i:05d}.parquet"), row_group_size=50_000)
        written += n
    return os.path.join(folder, "*.parquet"), written


def _short(row: dict) -> str:
    def fmt(v):
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v[:4]) + (", ...]" if len(v) > 4 else "]")
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return "  ".join(f"{k}={fmt(v)}" for k, v in row.items())


def run_demo(rows: int = 200_000, workdir: str | None = None) -> int:
    """Build the demo model and data in `workdir` (a new temp dir by default), score, print."""
    from beam_v1.scoring.job import format_summary, score  # deferred: Beam and TF start-up

    if rows < 1:
        raise BeamV1Error(f"--rows must be at least 1, got {rows}.")
    folder = workdir or tempfile.mkdtemp(prefix="beam_v1_demo_")
    if os.path.exists(os.path.join(folder, "model")):
        raise BeamV1Error(
            f"--workdir {folder} already holds a demo (its 'model' folder): give a new or "
            "empty folder."
        )
    model = build_demo_model(os.path.join(folder, "model"))
    pattern, n = write_demo_data(os.path.join(folder, "data"), rows)
    output = os.path.join(folder, "out", "scored")
    print(f"beam-v1 demo: a TF1 SavedModel in {model}")
    print(f"              {n:,} rows of Parquet in {pattern} (3 rows with a null 'age')")
    print("              scoring on the DirectRunner ...\n")
    summary = score(model, pattern, output, ["--runner=DirectRunner"], progress=True)
    print(format_summary(summary))
    print("\nFirst rows of", summary["files_written"][0])
    for row in pq.read_table(summary["files_written"][0]).slice(0, 5).to_pylist():
        print("  " + _short(row))
    if summary["dead_letter_files"]:
        failed = pq.read_table(summary["dead_letter_files"][0], columns=["id", "error"])
        print("\nDead letter (rows set aside, with why):")
        for row in failed.to_pylist():
            print(f"  id={row['id']}: {row['error']}")
    print(
        "\nScore your own files the same way:\n"
        "  beam-v1 inspect YOUR_MODEL\n"
        "  beam-v1 score --model YOUR_MODEL --input 'data/*.parquet' --output out/scored "
        "[--runner DirectRunner --direct_running_mode multi_processing --direct_num_workers 2]"
    )
    return 0
