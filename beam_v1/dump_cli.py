"""`beam-v1 dump-variables` (being built: see the DumpVariables issue)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from beam_v1.errors import BeamV1Error


def add_dump_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL")
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--format", choices=["parquet", "npz"], default="parquet")
    parser.add_argument(
        "--parts", action="store_true", help="keep partitioned variables as their parts"
    )


def run_dump(args: argparse.Namespace, pipeline_args: Sequence[str]) -> int:
    raise BeamV1Error("dump-variables is not built yet.")
