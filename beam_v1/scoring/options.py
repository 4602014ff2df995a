"""`ScoringOptions` and `OutputOptions`: how batches are scored and where results go.

Both are keyword-only frozen dataclasses validated in their constructors (the one home of
each check and default), cheap to build and picklable, so a transform validates them before
the pipeline starts and a worker receives them as they are. `sort_options` sorts the flat
keywords of the documented call forms (`RunV1Inference(model, batch_size=...)`,
`ScoreParquet(..., codec=..., intra_op_threads=...)`) into LoadOptions, ScoringOptions and
OutputOptions, and names a keyword none of them knows. No Beam or TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from beam_v1.model.options import LoadOptions
from beam_v1.text import split_list

DEFAULT_BATCH_SIZE = 65536
# a batch's Arrow bytes when no budget is given: wide rows (images, documents) merge into
# batches of this size, not of batch_size rows; numeric rows of a few KB still fill batch_size
DEFAULT_MAX_BATCH_BYTES = 64 * 2**20
EXAMPLE_FEEDS = ("auto", "serialize")  # tf.Example signatures fed from feature columns
CODECS = ("snappy", "gzip", "brotli", "zstd", "lz4", "none")  # pyarrow's Parquet codecs


def freeze_list(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """Names as a tuple (`text.split_list`: "a, b" is a list); None stays None."""
    names = split_list(values)
    return None if names is None else tuple(names)


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """How Arrow batches are cut, fed and written back.

    Attributes:
      batch_size: most rows in one session run.
      max_batch_bytes: most Arrow bytes in one batch (None: 64 MiB); a larger row runs alone.
      outputs: output keys to fetch (None: all of the signature's); "a,b" is a list.
      keep_columns: input columns copied to the scored rows (None: all not fed).
      column_map: {column: input key} where a column's name is not its input's key.
      example_feed: for tf.Example signatures fed from feature columns: "auto" feeds the
        parse op's outputs directly where that is exact, "serialize" builds examples.
      output_shapes: {output key: shape} for outputs whose rank the signature leaves unknown
        (None: learnt from the first rows).
      progress_seconds: log each worker's rows and rate this often (None: never).
      model_copies: N >= 1 loads N sessions per machine, shared by all its worker processes
        through a proxy (`beam_v1.scoring.model_server`), instead of one per process (0,
        the default): for models too big to hold once per process. Each session's thread
        pools are sized to its share of the machine's cores (`beam_v1.model.threads`).

    Raises:
      ValueError / TypeError: a field out of range or of the wrong type, naming it.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_bytes: int | None = None
    outputs: tuple[str, ...] | None = None
    keep_columns: tuple[str, ...] | None = None
    column_map: Mapping[str, str] | None = None
    example_feed: str = "auto"
    output_shapes: Mapping[str, tuple[int, ...]] | None = None
    progress_seconds: float | None = None
    model_copies: int = 0

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        if self.max_batch_bytes is None:
            object.__setattr__(self, "max_batch_bytes", DEFAULT_MAX_BATCH_BYTES)
        _positive("max_batch_bytes", self.max_batch_bytes)
        if self.example_feed not in EXAMPLE_FEEDS:
            raise ValueError(
                f"example_feed must be one of {EXAMPLE_FEEDS}, got {self.example_feed!r}"
            )
        # frozen: normalise through object.__setattr__ (copies, so callers' objects may change)
        object.__setattr__(self, "outputs", freeze_list(self.outputs))
        object.__setattr__(self, "keep_columns", freeze_list(self.keep_columns))
        object.__setattr__(self, "column_map", dict(self.column_map or {}))
        shapes = {k: tuple(v) for k, v in (self.output_shapes or {}).items()}
        object.__setattr__(self, "output_shapes", shapes)
        if self.model_copies is None:
            object.__setattr__(self, "model_copies", 0)
        if isinstance(self.model_copies, bool) or not isinstance(self.model_copies, int):
            raise TypeError(f"model_copies must be an int, not {self.model_copies!r}")
        if self.model_copies < 0:
            raise ValueError(f"model_copies must be 0 or more, got {self.model_copies}")
        if self.progress_seconds is not None and self.progress_seconds <= 0:
            raise ValueError(f"progress_seconds must be positive, got {self.progress_seconds}")

    def replace(self, **changes: Any) -> ScoringOptions:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """Where scored and failed rows are written (Parquet shards).

    Attributes:
      prefix: scored rows go to `PREFIX-SSSSS-of-NNNNN.parquet`.
      dead_letter_prefix: failed rows' prefix (None: `PREFIX-failed`).
      num_shards: files of scored rows (0: one per writing worker bundle, Beam's choice).
      codec: Parquet compression, one of `CODECS`.
    """

    prefix: str
    dead_letter_prefix: str | None = None
    num_shards: int = 0
    codec: str = "snappy"

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not self.prefix:
            raise ValueError(f"the output prefix must be a non-empty string, not {self.prefix!r}")
        if self.dead_letter_prefix is None:
            object.__setattr__(self, "dead_letter_prefix", f"{self.prefix}-failed")
        if isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int):
            raise TypeError(f"num_shards must be an int, not {self.num_shards!r}")
        if self.num_shards < 0:
            raise ValueError(f"num_shards must be 0 (any) or more, got {self.num_shards}")
        if str(self.codec).lower() not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")

    @classmethod
    def of(cls, output: OutputOptions | str, **changes: Any) -> OutputOptions:
        """An OutputOptions from an instance or a prefix, with `changes` applied."""
        if isinstance(output, OutputOptions):
            return dataclasses.replace(output, **changes) if changes else output
        return cls(prefix=output, **changes)


def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_OUTPUT_KEYWORDS = ("dead_letter_prefix", "num_shards", "codec")


def sort_options(
    options: Mapping[str, Any],
    *,
    load: LoadOptions | None = None,
    scoring: ScoringOptions | None = None,
    output: OutputOptions | str | None = None,
) -> tuple[LoadOptions, ScoringOptions, OutputOptions | None]:
    """Sort flat keywords into (LoadOptions, ScoringOptions, OutputOptions).

    Each keyword goes to the options that know its name and overrides the same field of
    `load` / `scoring` / `output` (typed options given as they are; `options` may also hold
    them under the keys "load" and "scoring"). Output keywords need
    an `output` (a prefix or OutputOptions): a transform that writes no files refuses them.

    Raises:
      TypeError: a keyword no options know (naming the known ones), or an output keyword
        where nothing is written.
    """
    options = dict(options)
    load = options.pop("load", None) or load
    scoring = options.pop("scoring", None) or scoring
    if not isinstance(load, (LoadOptions, type(None))):
        raise TypeError(f"load must be a LoadOptions, not {load!r}")
    if not isinstance(scoring, (ScoringOptions, type(None))):
        raise TypeError(f"scoring must be a ScoringOptions, not {scoring!r}")
    by_kind: dict[str, dict[str, Any]] = {"load": {}, "scoring": {}, "output": {}}
    kinds = (
        ("load", LoadOptions.known()),
        ("scoring", _names(ScoringOptions)),
        ("output", _OUTPUT_KEYWORDS),
    )
    unknown = []
    for name, value in options.items():
        kind = next((k for k, names in kinds if name in names), None)
        if kind is None:
            unknown.append(name)
        else:
            by_kind[kind][name] = value
    if unknown or (by_kind["output"] and output is None):
        known = sorted(n for k, names in kinds if k != "output" or output is not None
                       for n in names)
        bad = sorted(unknown or by_kind["output"])
        raise TypeError(f"Unknown option(s) {bad}; the options are {known}.")
    load = LoadOptions.of(load, **by_kind["load"])
    scoring = (scoring or ScoringOptions()).replace(**by_kind["scoring"])
    written = OutputOptions.of(output, **by_kind["output"]) if output is not None else None
    return load, scoring, written
