"""The `beam-v1` command line (also `python -m beam_v1`): the parser of every command, and
how a run ends (exit status, signals). Each command lives in its own module below."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from beam_v1 import __version__
from beam_v1.cli import demo, dump, inspect, process_end, score, startup_lines
from beam_v1.cli.flags import (
    EXIT_USER_ERROR,
    close_flags,
    quiet_worker_flags,
    runner_alias,
    unknown_to_beam,
)
from beam_v1.errors import BeamV1Error

# progress lines (scoring and dump workers) are logged here at INFO, shown unless --quiet
PROGRESS_LOGGER = "beam_v1.progress"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-v1",
        description="Run TensorFlow 1.x SavedModels at scale in Apache Beam, over Parquet.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"beam-v1 {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log at INFO level and show TensorFlow's start-up lines",
    )
    parser.set_defaults(beam_flags=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (inspect, score, dump, demo):
        command.add_parser(sub)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    hard_stop: bool | None = None,
    filter_stderr: bool | None = None,
    end_process: bool | None = None,
) -> int:
    """Run the CLI; returns the exit status (2: a usage or user error).

    `hard_stop` (default: when `argv` is None, i.e. a real command line): after SIGTERM or
    Ctrl-C, end the runner's worker processes and exit at once, instead of waiting for
    threads the runner leaves behind. `filter_stderr` (default: `hard_stop`): drop
    TensorFlow's and Beam's start-up lines from fd 2 (see startup_lines) unless --verbose.
    `end_process` (default: when `argv` is None): the caller exits with the returned status
    at once, so the process ends with it right after the atexit handlers, skipping the
    interpreter's teardown (see process_end). Never set it where the process goes on (a test
    runner): its own exit status would be replaced by this one.
    """
    if hard_stop is None:
        hard_stop = argv is None
    if filter_stderr is None:
        filter_stderr = hard_stop
    if end_process is None:
        end_process = argv is None
    ending = process_end.ExitAfterHandlers() if end_process else None
    status = _run_command(argv, hard_stop, filter_stderr)
    return ending.finished(status) if ending else status


def _run_command(argv: Sequence[str] | None, hard_stop: bool, filter_stderr: bool) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _configure_logging(args.verbose)
    quiet = filter_stderr and not args.verbose
    if quiet:
        # TensorFlow's C++ INFO/WARNING lines after start-up; errors still show
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _stop_on_signals(hard_stop)
    with startup_lines.filtered_stderr() if quiet else contextlib.nullcontext():
        if extra:
            _refuse_unknown(parser, args, extra)
        if quiet and args.beam_flags:
            extra = [*extra, *quiet_worker_flags(extra)]
        if args.beam_flags:
            extra = runner_alias(extra)
        try:
            return args.run(args, extra) if args.beam_flags else args.run(args)
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


def _refuse_unknown(
    parser: argparse.ArgumentParser, args: argparse.Namespace, extra: Sequence[str]
) -> None:
    """Exit 2 naming the flags neither the command nor (score, dump-variables) Beam knows."""
    unknown = unknown_to_beam(extra) if args.beam_flags else list(extra)
    if unknown:
        hints = []
        for flag in unknown:
            close = close_flags(args.command_parser, flag)
            hints.append(f"{flag} (did you mean {' or '.join(close)}?)" if close else flag)
        parser.error(f"unrecognized arguments: {' '.join(hints)}")


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(h, _StderrNow) for h in progress.handlers):
        progress.addHandler(_StderrNow())
    progress.setLevel(logging.INFO)
    progress.propagate = False


class _StderrNow(logging.Handler):
    """The bare message to whatever `sys.stderr` is at the time (main may run many times)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's contract: never raise from emit
            self.handleError(record)


def _end_now(code: int) -> None:
    """Stop our child processes (the runner's workers) and exit without joining threads."""
    sys.stdout.flush()
    sys.stderr.flush()
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    startup_lines.stop_filtering(timeout=1.0)
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


if __name__ == "__main__":
    sys.exit(main())
