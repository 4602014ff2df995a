"""A scoring job: one pipeline run of ScoreParquet or ScoreTFRecord, and its summary (SPEC §6).

The Python API behind `beam-v1 score` (`beam_v1.scoring.job.score`); no command-line parsing.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_v1.errors import BeamV1Error
from beam_v1.io import files
from beam_v1.io.parquet_read import reading_parquet
from beam_v1.runs import direct_runner_for, run_to_end
from beam_v1.scoring import latency
from beam_v1.scoring.transforms import ScoreParquet, ScoreTFRecord

PROGRESS_SECONDS = 5.0


def score(
    model: str,
    input_pattern: str,
    output_prefix: str,
    pipeline_args: Sequence[str] = (),
    *,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score `input_pattern` with `model` as one pipeline; write and return the summary.

    Args:
      model, input_pattern, output_prefix: as ScoreParquet (ScoreTFRecord with
        `input_format="tfrecord"`).
      pipeline_args: Beam PipelineOptions flags (`--runner`, ...).
      progress: log a progress line per worker every PROGRESS_SECONDS.
      **kwargs: the transform's other keywords, plus `input_format` ("parquet" or
        "tfrecord") and `decode_features` (TFRecord only).

    Returns:
      The summary written to `PREFIX-summary.json` (rows in/scored/failed, files, timings).

    Raises:
      BeamV1Error: a user error found before the run, or a pipeline that did not end DONE.
    """
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
    # the DirectRunner's FnApiRunner, without its PrismRunner attempt (see direct_runner_for)
    pipeline = beam.Pipeline(runner=direct_runner_for(options), options=options)
    label = "ScoreTFRecord" if input_format == "tfrecord" else "ScoreParquet"
    _ = pipeline | label >> transform
    # checks passed: drop an earlier (complete or killed) run's files so none mix with ours
    remove_earlier_outputs(output_prefix, transform.dead_letter_prefix)
    result = run_to_end(pipeline, "The scoring pipeline")
    seconds = time.perf_counter() - started
    summary = summarize(result, transform, seconds)
    with FileSystems.create(f"{output_prefix}-summary.json") as f:
        f.write(json.dumps(summary, indent=2).encode())
    return summary


def remove_earlier_outputs(output_prefix: str, dead_letter_prefix: str) -> list[str]:
    """Delete PREFIX-summary.json (first), earlier shards of both prefixes, Beam temp dirs."""
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
            stale += sorted(glob.glob(os.path.join(glob.escape(base), f"beam-temp-{last}-*")))
        stale = [p for p in stale if p not in removed]
        if stale:
            FileSystems.delete(stale)
            removed += stale
    return removed


def summarize(result, transform, seconds: float) -> dict[str, Any]:
    """The run's summary from its metrics (namespace beam_v1) and the files it wrote."""
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
    written = _matching(f"{transform.output_prefix}-*-of-*.parquet")
    failed_files = _matching(f"{transform.dead_letter_prefix}-*-of-*.parquet")
    written = [f for f in written if f not in failed_files]
    load = dists.get("model_load_ms")
    if counted:  # no metrics: the rows are those of the files the run wrote
        counters.update(rows_scored=_rows(written), rows_failed=_rows(failed_files))
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
        "files_written": written,
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
    total = 0
    for path in paths:
        with reading_parquet(path) as parquet:
            total += parquet.metadata.num_rows
    return total


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _matching(pattern: str) -> list[str]:
    try:
        return files.match(pattern)
    except Exception:  # noqa: BLE001 - no match
        return []


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as the aligned lines `beam-v1 score` prints."""

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
