"""What the commands share: exit codes, flag types, the load flags, Beam's flags.

A leaf of the cli package: the command modules import it, it imports none of them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
from collections.abc import Sequence
from typing import Any

from beam_v1.text import split_list

EXIT_MODEL_FAILED = 1  # dump-variables: a model could not be dumped
EXIT_USER_ERROR = 2  # argparse's own status for a usage error


def csv_list(value: str) -> list[str]:
    """An argparse type: 'a, b,c' -> ['a', 'b', 'c'] (beam_v1.text.split_list)."""
    return split_list(value) or []


def command_parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command's parser (`sub`: what add_subparsers returned): no abbreviated flags,
    `-v` accepted after the command too, and itself as `args.command_parser`."""
    parser = sub.add_parser(name, allow_abbrev=False, **kwargs)
    parser.set_defaults(command_parser=parser)
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="log at INFO level and show TensorFlow's start-up lines",
    )
    return parser


def add_tags_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tags",
        type=csv_list,
        default=None,
        help="tag set of the MetaGraph (default: the only one, else 'serve')",
    )


def add_load_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of loading a model, shared by `inspect` and `score`."""
    add_tags_flag(parser)
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


# runners named without their module whose options Beam 2.77 does not register up front
RUNNER_MODULES = {"DaskRunner": "apache_beam.runners.dask.dask_runner"}


class _BeamFlagError(Exception):
    pass


def unknown_to_beam(args: Sequence[str]) -> list[str]:
    """The flags among `args` (left over by a command's parser) that Beam's PipelineOptions
    does not know either, as given (`--name` or `--name=value`); values are not listed.

    Known means defined by a registered PipelineOptions subclass, exactly (no abbreviations,
    as Beam parses them); the module of a `--runner` given as a dotted path (or DaskRunner) is
    imported first, so that the runner's own options count. A value Beam's parser rejects
    (`--direct_num_workers x`) is reported as that flag too.
    """
    # deferred: Beam start-up, only when a command got flags it does not define
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(args)).view_as(StandardOptions).runner
    if isinstance(runner, str):
        module = RUNNER_MODULES.get(runner) or (runner.rsplit(".", 1)[0] if "." in runner else "")
        try:  # registers the runner's PipelineOptions subclasses, as Beam does at run time
            if module:
                importlib.import_module(module)
        except ImportError:
            pass  # Beam reports an unknown runner itself
    captured: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    parser = captured[0]

    def error(message: str):
        raise _BeamFlagError(message)

    parser.error = error  # type: ignore[method-assign]  # report, do not exit
    try:
        _, left = parser.parse_known_args(list(args))
    except _BeamFlagError as e:
        bad = re.search(r"argument (\S+?)(?:/\S+)?:", str(e))
        return [bad.group(1)] if bad else [str(e)]
    flags = [a for a in left if a.startswith("-") and a != "--"]
    return flags or list(left)


def close_flags(parser: argparse.ArgumentParser, flag: str) -> list[str]:
    """The parser's own flags that look like a mistyped `flag` (for a 'did you mean')."""
    known = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", parser.format_help()))
    name = flag.split("=", 1)[0]
    return difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.75)


def quiet_worker_flags(args: Sequence[str]) -> list[str]:
    """Beam flags that keep the DirectRunner's worker processes at WARNING on the terminal
    (the progress logger stays at INFO), unless `args` set a worker log level already.

    Only for the DirectRunner (the default): its workers share our terminal; other runners'
    logs go to their own log service, where INFO is wanted.
    """
    # deferred: Beam start-up
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(list(args))
    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "DirectRunner", "direct", "BundleBasedDirectRunner"):
        return []
    if any(a.split("=", 1)[0] in WORKER_LOG_FLAGS for a in args):
        return []
    return [
        "--default_sdk_harness_log_level=WARNING",
        '--sdk_harness_log_level_overrides={"beam_v1.progress": "INFO"}',
    ]


WORKER_LOG_FLAGS = ("--default_sdk_harness_log_level", "--sdk_harness_log_level_overrides")


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
