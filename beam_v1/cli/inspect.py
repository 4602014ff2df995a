"""`beam-v1 inspect MODEL`: describe a SavedModel without running it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from beam_v1.cli.flags import EXIT_USER_ERROR, add_load_flags, command_parser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = command_parser(sub, "inspect", help="describe a SavedModel without running it")
    parser.add_argument("model", help="SavedModel directory")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_load_flags(parser)
    parser.set_defaults(run=run_inspect)
    return parser


def run_inspect(args: argparse.Namespace) -> int:
    """Print the model's description; exit status 2 if files the model needs are missing."""
    from beam_v1.model.inspect import inspect  # deferred: TensorFlow start-up

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
        print(
            f"beam-v1: error: the model at {info.path} is incomplete: {' '.join(info.warnings)}",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    return 0
