"""`beam-v1 dump-variables MODEL [MODEL ...] --output PREFIX [--format parquet|npz] [--parts]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from beam_v1.cli.flags import EXIT_MODEL_FAILED, add_tags_flag, command_parser
from beam_v1.errors import BeamV1Error
from beam_v1.runs import direct_runner_for, run_to_end

PROGRESS_SECONDS = 10.0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        sub,
        "dump-variables",
        help="write models' variables to Parquet or .npz, read from their checkpoints",
        description="Flags not listed here must be Beam PipelineOptions.",
    )
    add_dump_flags(parser)
    parser.set_defaults(run=run_dump, beam_flags=True)
    return parser


def add_dump_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--format", choices=["parquet", "npz"], default="parquet")
    parser.add_argument(
        "--parts", action="store_true", help="keep partitioned variables as their parts"
    )
    add_tags_flag(parser)
    parser.add_argument(
        "--slice-mb",
        type=float,
        default=64.0,
        help="variables bigger than this travel as slices (default 64 MiB)",
    )
    parser.add_argument(
        "--quiet", action="store_true",
        help="no progress lines and no summary (errors are still printed)",
    )


def _read_jsonl(path: str) -> list[dict]:
    from apache_beam.io.filesystems import FileSystems  # deferred: Beam start-up

    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path, compression_type="uncompressed") as f:
        text = f.read().decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_dump(args: argparse.Namespace, pipeline_args: Sequence[str] = ()) -> int:
    """Dump the models' variables; print a summary; 1 if a model failed, else 0.

    Raises BeamV1Error on a user error or a pipeline that did not end DONE.
    """
    # deferred: Beam and TensorFlow start-up, not needed to parse flags
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_v1.variables.dump import (
        DumpVariables,
        WriteVariables,
        local_dir_for,
        normal_model_path,
    )

    if args.slice_mb <= 0:
        raise BeamV1Error(f"--slice-mb must be positive, got {args.slice_mb}.")
    options = PipelineOptions(list(pipeline_args))
    models = list(dict.fromkeys(normal_model_path(m) for m in args.models))
    local_dir_for(args.output)
    started = time.perf_counter()
    # the DirectRunner's FnApiRunner, without its PrismRunner attempt (see direct_runner_for)
    pipeline = beam.Pipeline(runner=direct_runner_for(options), options=options)
    dumped = (
        pipeline
        | "Models" >> beam.Create(models)
        | "Dump"
        >> DumpVariables(
            args.tags,
            parts=args.parts,
            slice_bytes=int(args.slice_mb * (1 << 20)),
            progress_seconds=0.0 if args.quiet else PROGRESS_SECONDS,
        )
    )
    _ = dumped.variables | "Write" >> WriteVariables(args.output, args.format, dumped.failed)
    run_to_end(pipeline, "The dump-variables pipeline")
    seconds = time.perf_counter() - started

    written = _read_jsonl(args.output + "-manifest.jsonl")
    failed = _read_jsonl(args.output + "-failed.jsonl")
    done = {w["model"] for w in written}
    failed_models = {f["model"] for f in failed}
    empty = [m for m in models if m not in done and m not in failed_models]
    n_vars = sum(w["variables"] for w in written)
    n_bytes = sum(w["bytes"] for w in written)
    lines = [
        f"beam-v1 dump-variables: {len(models)} model{'s' if len(models) != 1 else ''}: "
        f"{len(written)} dumped, "
        f"{len(empty)} without variables, {len(failed)} failed; {n_vars} variables, "
        f"{n_bytes / 1e6:,.1f} MB in {seconds:,.1f} s ({args.format})",
    ]
    lines += [f"  {w['model']} -> {w['file']} ({w['variables']} variables)" for w in written]
    lines += [f"  {m}: no variables (its graph declares none), nothing written" for m in empty]
    if written:
        lines.append(f"  manifest: {args.output}-manifest.jsonl")
    for f in failed:
        lines.append(f"  FAILED {f['model']}: {f['error']}")
    if not args.quiet:
        print("\n".join(lines))
    if failed:
        if args.quiet:  # the summary's FAILED lines still belong on stderr
            print("\n".join(f"FAILED {f['model']}: {f['error']}" for f in failed), file=sys.stderr)
        print(
            f"beam-v1: error: {len(failed)} of {len(models)} models could not be dumped "
            f"(listed in {args.output}-failed.jsonl).",
            file=sys.stderr,
        )
        return EXIT_MODEL_FAILED
    return 0
