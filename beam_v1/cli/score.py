"""`beam-v1 score`: its flags, and the run through beam_v1.scoring.job (SPEC §3, §6)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from beam_v1.cli.flags import add_load_flags, command_parser, csv_list
from beam_v1.scoring.options import DEFAULT_BATCH_SIZE  # no Beam or TensorFlow there


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        sub,
        "score",
        help="score Parquet files with a SavedModel on a Beam runner",
        description="Flags not listed here must be Beam PipelineOptions "
        "(--runner, --direct_running_mode, --direct_num_workers, --setup_file, ...).",
    )
    add_score_flags(parser)
    add_load_flags(parser)
    parser.set_defaults(run=run_score, beam_flags=True)
    return parser


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
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="rows per session run"
    )
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
    parser.add_argument(
        "--intra-op-threads", type=int, default=0,
        help="threads inside one op of the session (default 0: the machine's cores divided by "
        "the worker processes on it; TensorFlow's own default for one process)",
    )
    parser.add_argument(
        "--inter-op-threads", type=int, default=0,
        help="ops run in parallel by the session (default 0: as --intra-op-threads)",
    )
    parser.add_argument(
        "--model-copies",
        type=int,
        default=0,
        help="sessions per machine shared by its worker processes (1: one model per machine, "
        "for big models); default 0: one per process",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
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


def run_score(args: argparse.Namespace, pipeline_args: Sequence[str] = ()) -> int:
    """Run the scoring job; print its summary. Raises BeamV1Error on a user error."""
    from beam_v1.scoring.job import format_summary, score  # deferred: Beam and TF start-up

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
        model_copies=args.model_copies,
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
    print(f"summary      {args.output}-summary.json")
    return 0
