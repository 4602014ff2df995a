"""`beam-v1 score`: flags, the pipeline run, and the summary users see (SPEC §3, §6)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from beam_v1.cli.main import csv_list
from beam_v1.errors import BeamV1Error

PROGRESS_SECONDS = 5.0


def _column_mapping(value: str) -> tuple[str, str]:
    column, sep, key = value.partition("=")
    if not sep or not column or not key:
        raise argparse.ArgumentTypeError(f"--map wants COLUMN=INPUT_KEY, got {value!r}")
    return column, key


def add_score_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="SavedModel dir (local, gs://, s3://, ...)")
    parser.add_argument("--input", required=True, help="Parquet file pattern (glob)")
    parser.add_argument("--output", required=True, help="output prefix: PREFIX-SSSSS-of-NNNNN")
    parser.add_argument(
        "--signature",
        default=None,
        help="signature key (default: serving_default, else the only one)",
    )
    parser.add_argument(
        "--outputs",
        type=csv_list,
        default=None,
        help="output keys to write (default: every batch-aligned output)",
    )
    parser.add_argument(
        "--keep-columns",
        type=csv_list,
        default=None,
        help="input columns to copy to the output (default: all not fed)",
    )
    parser.add_argument(
        "--map",
        dest="column_map",
        type=_column_mapping,
        action="append",
        default=[],
        metavar="COLUMN=INPUT_KEY",
        help="feed input INPUT_KEY from COLUMN; repeatable",
    )
    parser.add_argument("--batch-size", type=int, default=65536, help="rows per session run")
    parser.add_argument(
        "--max-batch-bytes",
        type=int,
        default=None,
        help="bound a batch by its Arrow bytes too (default 64 MiB; a single larger row runs "
        "alone)",
    )
    parser.add_argument(
        "--dead-letter", default=None, help="prefix for failed rows (default: PREFIX-failed)"
    )
    parser.add_argument(
        "--num-shards", type=int, default=0, help="output files (default: the runner decides)"
    )
    parser.add_argument("--intra-op-threads", type=int, default=0)
    parser.add_argument("--inter-op-threads", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--example-feed",
        choices=("auto", "serialize"),
        default="auto",
        help="tf.Example signatures fed from feature columns: feed the parse op's outputs "
        "directly when provably the same (auto), or always build serialized examples",
    )
    parser.add_argument(
        "--strict-schema",
        action="store_true",
        help="read every input file's footer before the run and refuse the input if a file's "
        "schema does not cast to the first file's (default: that file's rows go to the dead "
        "letter with the reason)",
    )
    parser.add_argument(
        "--input-format",
        choices=("parquet", "tfrecord"),
        default="parquet",
        help="tfrecord: files of serialized tf.Example (see --compression)",
    )
    parser.add_argument(
        "--compression",
        choices=("auto", "none", "gzip", "zlib"),
        default="auto",
        help="with --input-format tfrecord: as tf.data.TFRecordDataset's compression_type; "
        "auto tells none, GZIP or ZLIB from each file's first bytes",
    )
    parser.add_argument(
        "--decode-features",
        action="store_true",
        help="with --input-format tfrecord: write the examples' features as kept columns",
    )


def score(
    model: str,
    input_pattern: str,
    output_prefix: str,
    pipeline_args: Sequence[str] = (),
    *,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ScoreParquet as a pipeline, wait for it, write and return the summary."""
    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_v1.scoring.transforms import ScoreParquet

    options = PipelineOptions(list(pipeline_args))
    FileSystems.set_options(options)  # the checks stage the model here with e.g. --s3_endpoint_url
    started = time.perf_counter()
    input_format = kwargs.pop("input_format", "parquet")
    decode_features = kwargs.pop("decode_features", False)
    compression = kwargs.pop("compression", "auto")
    if input_format != "tfrecord" and compression != "auto":
        raise BeamV1Error("--compression applies to --input-format tfrecord (Parquet files "
                          "carry their own codec).")
    if input_format == "tfrecord":  # serialized tf.Examples (beam_v1.io.tfrecord)
        from beam_v1.scoring.transforms import ScoreTFRecord

        kwargs.pop("example_feed", None)  # the records are serialized examples already
        if kwargs.pop("strict_schema", False):
            raise BeamV1Error(
                "--strict-schema applies to Parquet input (every record of a TFRecord file is "
                "a serialized tf.Example); drop it with --input-format tfrecord."
            )

        transform = ScoreTFRecord(
            model, input_pattern, output_prefix, decode_features=decode_features,
            compression=compression,
            progress_seconds=PROGRESS_SECONDS if progress else None, **kwargs,
        )
    else:
        transform = ScoreParquet(
            model,
            input_pattern,
            output_prefix,
            progress_seconds=PROGRESS_SECONDS if progress else None,
            **kwargs,
        )
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | transform  # labelled by its class: ScoreParquet or ScoreTFRecord
    # checks passed: drop an earlier (complete or killed) run's files so none mix with ours
    remove_earlier_outputs(output_prefix, transform.dead_letter_prefix)
    result = pipeline.run()
    state = result.wait_until_finish()
    seconds = time.perf_counter() - started
    if str(state).upper().split(".")[-1] not in ("DONE", "UNKNOWN"):
        raise BeamV1Error(f"The pipeline ended in state {state}.")
    summary = summarize(result, transform, seconds)
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(f"{output_prefix}-summary.json") as f:
        f.write(json.dumps(summary, indent=2).encode())
    return summary


def remove_earlier_outputs(output_prefix: str, dead_letter_prefix: str) -> list[str]:
    """Delete PREFIX-summary.json (first), earlier shards of both prefixes, Beam temp dirs."""
    import posixpath
    import re

    from apache_beam.io.filesystems import FileSystems

    removed = []
    summary = f"{output_prefix}-summary.json"
    if FileSystems.exists(summary):
        FileSystems.delete([summary])
        removed.append(summary)
    for prefix in dict.fromkeys((output_prefix, dead_letter_prefix)):
        shard = re.compile(re.escape(posixpath.basename(prefix)) + r"-\d+-of-\d+\.parquet")
        stale = [
            path
            for path in _matching(f"{prefix}-*-of-*.parquet")
            if shard.fullmatch(posixpath.basename(path))
        ]
        base, last = FileSystems.split(prefix)
        if "://" in prefix:  # object stores: the temp "dir" is its objects
            stale += _matching(FileSystems.join(base, f"beam-temp-{last}-*/*"))
        else:
            import glob

            stale += sorted(glob.glob(os.path.join(glob.escape(base), f"beam-temp-{last}-*")))
        stale = [p for p in stale if p not in removed]
        if stale:
            FileSystems.delete(stale)
            removed += stale
    return removed


def summarize(result, transform, seconds: float) -> dict[str, Any]:
    from apache_beam.metrics.metric import MetricsFilter

    from beam_v1.scoring import latency

    counted = False
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace("beam_v1"))
    except NotImplementedError:  # a runner without metrics (Beam's DaskRunner)
        metrics, counted = {"counters": [], "distributions": []}, True

    def value(item):
        try:
            return item.committed if item.committed is not None else item.attempted
        except Exception:  # noqa: BLE001 - runners without committed metrics
            return item.attempted

    counters = {c.key.metric.name: 0 for c in metrics["counters"]}
    for c in metrics["counters"]:
        counters[c.key.metric.name] += value(c) or 0
    dists = {}
    for d in metrics["distributions"]:
        v = value(d)
        if v is not None and v.count:
            dists[d.key.metric.name] = v
    observed = dists.get("batch_latency_ms")
    bounds = dict(low=observed.min, high=observed.max) if observed else {}
    files = _matching(f"{transform.output_prefix}-*-of-*.parquet")
    failed_files = _matching(f"{transform.dead_letter_prefix}-*-of-*.parquet")
    files = [f for f in files if f not in failed_files]
    load = dists.get("model_load_ms")
    if counted:  # no metrics: the rows are those of the files the run wrote
        counters.update(rows_scored=_rows(files), rows_failed=_rows(failed_files))
        counters["rows_in"] = counters["rows_scored"] + counters["rows_failed"]
    rows, nbytes = dists.get("batch_size"), dists.get("batch_bytes")
    rows_in = counters.get("rows_in", 0)
    return {
        "model": transform.model,
        "input": transform.input_pattern,
        "signature": transform.checked.signature.key,
        "rows_in": rows_in,
        "rows_scored": counters.get("rows_scored", 0),
        "rows_failed": counters.get("rows_failed", 0),
        "files_written": files,
        "dead_letter_files": failed_files,
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows_in / seconds, 1) if seconds else None,
        "model_loads": counters.get("model_loads", 0),
        "model_load_seconds": round(load.max / 1000, 3) if load else None,
        "batches": counters.get("batches", 0),
        "largest_batch_rows": rows.max if rows else 0,
        "largest_batch_bytes": nbytes.max if nbytes else 0,
        "batch_latency_ms_p50": _rounded(latency.quantile(counters, 0.50, **bounds)),
        "batch_latency_ms_p95": _rounded(latency.quantile(counters, 0.95, **bounds)),
        **({"counts": COUNTED} if counted else {}),
    }


COUNTED = "counts from the written files: the runner reports no metrics"


def _rows(paths: list[str]) -> int:
    from beam_v1.io.parquet_read import reading_parquet

    total = 0
    for path in paths:
        with reading_parquet(path) as parquet:
            total += parquet.metadata.num_rows
    return total


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _matching(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # noqa: BLE001 - no match
        return []


def format_summary(summary: dict[str, Any]) -> str:
    def fmt(v):
        return "-" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))

    lines = [
        f"rows in      {fmt(summary['rows_in'])}"
        + (f"  ({summary['counts']})" if "counts" in summary else ""),
        f"rows scored  {fmt(summary['rows_scored'])}",
        f"rows failed  {fmt(summary['rows_failed'])}"
        + (
            f"  (dead letter: {', '.join(summary['dead_letter_files'])})"
            if summary["rows_failed"]
            else ""
        ),
        f"files        {len(summary['files_written'])}: "
        + ", ".join(summary["files_written"][:4])
        + (" ..." if len(summary["files_written"]) > 4 else ""),
        f"time         {summary['seconds']} s, {fmt(summary['rows_per_second'])} rows/s",
        f"model load   {fmt(summary['model_load_seconds'])} s "
        f"({summary['model_loads']} load(s), one per worker process)",
        f"batch        p50 {fmt(summary['batch_latency_ms_p50'])} ms, "
        f"p95 {fmt(summary['batch_latency_ms_p95'])} ms over {summary['batches']} batches",
        f"largest      {fmt(summary['largest_batch_rows'])} rows, "
        f"{fmt(summary['largest_batch_bytes'])} bytes in one batch",
    ]
    return "\n".join(lines)


def run_score(args: argparse.Namespace, pipeline_args: Sequence[str]) -> int:
    summary = score(
        args.model,
        args.input,
        args.output,
        pipeline_args,
        progress=not args.quiet,
        dead_letter_prefix=args.dead_letter,
        signature=args.signature,
        tags=args.tags,
        outputs=args.outputs,
        keep_columns=args.keep_columns,
        column_map=dict(args.column_map),
        batch_size=args.batch_size,
        max_batch_bytes=args.max_batch_bytes,
        num_shards=args.num_shards,
        intra_op_threads=args.intra_op_threads,
        inter_op_threads=args.inter_op_threads,
        op_libraries=args.op_libraries,
        import_modules=args.import_modules,
        allow_unsafe_ops=args.allow_unsafe_ops,
        rewrites=args.rewrites,
        example_feed=args.example_feed,
        strict_schema=args.strict_schema,
        input_format=args.input_format,
        decode_features=args.decode_features,
        compression=args.compression,
    )
    print(format_summary(summary))
    print(f"summary      {args.output}-summary.json", file=sys.stdout)
    return 0
