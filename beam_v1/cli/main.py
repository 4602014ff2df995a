"""The `beam-v1` command line (also `python -m beam_v1`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

# TensorFlow's C++ start-up chatter (CUDA probing, placement notes) hides our own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR = 2


def csv_list(value: str) -> list[str]:
    """An argparse type: 'a, b,c' -> ['a', 'b', 'c']."""
    return [v.strip() for v in value.split(",") if v.strip()]


DASK_RUNNERS = ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner")


def runner_alias(args: Sequence[str]) -> list[str]:
    """Pipeline args with `--runner DaskRunner` (or Beam's DaskRunner class path) naming
    `beam_v1.dask_compat.DaskRunner`: Beam's runner with its translation faults fixed."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--runner" and i + 1 < len(out) and out[i + 1] in DASK_RUNNERS:
            out[i + 1] = "beam_v1.dask_compat.DaskRunner"
        elif arg.startswith("--runner=") and arg.split("=", 1)[1] in DASK_RUNNERS:
            out[i] = "--runner=beam_v1.dask_compat.DaskRunner"
    return out


def _add_load_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tags",
        type=csv_list,
        default=None,
        help="tag set of the MetaGraph (default: the only one, else 'serve')",
    )
    parser.add_argument(
        "--op-library",
        dest="op_libraries",
        action="append",
        default=[],
        metavar="PATH",
        help="load a custom op library (.so) first; repeatable",
    )
    parser.add_argument(
        "--import",
        dest="import_modules",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers ops (e.g. tensorflow_text) first",
    )
    parser.add_argument(
        "--allow-unsafe-ops",
        action="store_true",
        help="run models whose graph reads/writes files, runs Python or has assets outside "
        "the model (refused by default; see `inspect`)",
    )
    parser.add_argument(
        "--no-rewrites",
        dest="rewrites",
        action="store_false",
        help="do not replace ops this TensorFlow lost (BoostedTreesBucketize, "
        "BucketizeWithInputBoundaries) with equivalent subgraphs; such models then fail",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-v1",
        description="Run TensorFlow 1.x SavedModels at scale in Apache Beam, over Parquet.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="describe a SavedModel without running it")
    inspect.add_argument("model", help="SavedModel directory")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_load_flags(inspect)

    score = sub.add_parser(
        "score",
        help="score Parquet files with a SavedModel on a Beam runner",
        description="Unknown flags are passed to Beam's PipelineOptions "
        "(--runner, --direct_running_mode, --direct_num_workers, --setup_file, ...).",
    )
    from beam_v1.cli.score import add_score_flags

    add_score_flags(score)
    _add_load_flags(score)

    dump = sub.add_parser(
        "dump-variables",
        help="write models' variables to Parquet or .npz, read from their checkpoints",
        description="Unknown flags are passed to Beam's PipelineOptions.",
    )
    from beam_v1.cli.dump import add_dump_flags

    add_dump_flags(dump)

    demo = sub.add_parser("demo", help="score a generated model's Parquet data on the DirectRunner")
    demo.add_argument("--rows", type=int, default=200_000, help="rows of generated data")
    demo.add_argument("--workdir", default=None, help="folder to use instead of a temp dir")
    return parser


def main(argv: Sequence[str] | None = None, *, hard_stop: bool | None = None) -> int:
    """Run the CLI; returns the exit status.

    `hard_stop` (default: when `argv` is None, i.e. a real command line): after SIGTERM or
    Ctrl-C, end the runner's worker processes and exit at once, instead of waiting for
    threads the runner leaves behind.
    """
    if hard_stop is None:
        hard_stop = argv is None
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("score", "dump-variables"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from beam_v1.errors import BeamV1Error

    _stop_on_signals(hard_stop)
    extra = runner_alias(extra)
    try:
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "score":
            from beam_v1.cli.score import run_score

            return run_score(args, extra)
        if args.command == "dump-variables":
            from beam_v1.cli.dump import run_dump

            return run_dump(args, extra)
        if args.command == "demo":
            from beam_v1.cli.demo import run_demo

            return run_demo(rows=args.rows, workdir=args.workdir)
    except BeamV1Error as e:
        print(f"beam-v1: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as e:
        how = "SIGTERM" if e.args == ("SIGTERM",) else "Ctrl-C"
        _stopped_message(how)
        code = 143 if how == "SIGTERM" else 130
        if hard_stop:
            _end_now(code)
        return code
    parser.error(f"unknown command {args.command}")
    return EXIT_USER_ERROR


def _end_now(code: int) -> None:
    """Stop our child processes (the runner's workers) and exit without joining threads."""
    import signal

    sys.stdout.flush()
    sys.stderr.flush()
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(code)


def _descendants(root: int) -> list[int]:
    """Child processes of `root`, children first, read from /proc (Linux; else none)."""
    parents: dict[int, list[int]] = {}
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                parents.setdefault(ppid, []).append(int(entry))
    except OSError:
        return []
    found, todo = [], [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_on_signals(hard_stop: bool) -> None:
    """SIGTERM stops like Ctrl-C, with a one-line message.

    With `hard_stop`, SIGTERM and Ctrl-C end the runner's workers and exit at once from the
    signal handler: a KeyboardInterrupt raised inside a runner can leave it waiting for
    workers forever. Otherwise SIGTERM raises KeyboardInterrupt("SIGTERM").
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        how = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        if not hard_stop:
            raise KeyboardInterrupt(how)
        _stopped_message(how)
        _end_now(143 if how == "SIGTERM" else 130)

    signal.signal(signal.SIGTERM, handler)
    if hard_stop:
        signal.signal(signal.SIGINT, handler)


def _stopped_message(how: str) -> None:
    print(
        f"beam-v1: stopped by {how}; no summary was written (re-run the same command "
        "to redo the run)",
        file=sys.stderr,
    )


def _inspect(args: argparse.Namespace) -> int:
    from beam_v1.model.inspect import inspect

    info = inspect(
        args.model,
        tags=args.tags,
        op_libraries=args.op_libraries,
        import_modules=args.import_modules,
        rewrites=args.rewrites,
    )
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
    else:
        print(info.to_text())
    if info.warnings:  # files the model needs are missing or damaged
        print(f"beam-v1: error: the model at {info.path} is incomplete: "
              f"{' '.join(info.warnings)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
