"""Arrow sources for `Score`: each knows its input schema before the run and reads Arrow tables.

In the manner of tfx-bsl's TFXIO, a source answers two questions: what is the schema of the
tables it yields (asked by the checks before any worker starts, `preflight.check_source`),
and how are they read (`read`, a PTransform from the pipeline's start to
`{"tables": PCollection[pa.Table], "drifted": PCollection[pa.Table] | absent}`; drifted
tables are dead-letter rows of input that cannot be scored as read). A source may also
adapt the ScoringOptions to its tables (TFRecord: the serialized examples feed the
signature's example input) and give the first rows for learning unknown output ranks.

- `ParquetSource(pattern, strict_schema=False)`: the first file's schema is the run's; later
  files are judged by `schema_drift.FileSchemas` where their row groups are read.
- `TFRecordSource(pattern, compression="auto", decode_features=False)`: records of
  serialized tf.Example, batched by count and bytes into tables of `serialized` (+ the
  decoded features).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Protocol

import apache_beam as beam
import pyarrow as pa

from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.io import tfrecord
from beam_v1.io.files import HIDDEN_PREFIXES, MatchDataFiles, match_data_files
from beam_v1.io.parquet_read import (
    DRIFTED,
    ReadParquetRowGroups,
    SliceReader,
    UnreadableRowGroupError,
    reading_parquet,
)
from beam_v1.model.metadata import SignatureInfo
from beam_v1.model.prepared import PreparedModel
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.plan import Checked
from beam_v1.scoring.schema_drift import FileSchemas

PROBE_ROWS = 8  # first rows read to learn the rank of outputs the signature leaves unknown


class ArrowSource(Protocol):
    """What `Score` and `preflight.check_source` ask of a source."""

    label: str  # names the steps: "Read<label>", "Score<label>"
    pattern: str

    def files(self) -> list[str]:
        """The input files, sorted; BeamV1Error when none matches."""

    def input_schema(
        self, prepared: PreparedModel, signature: SignatureInfo, files: Sequence[str],
        scoring: ScoringOptions,
    ) -> tuple[pa.Schema, ScoringOptions]:
        """The schema of the tables `read` yields, and `scoring` adapted to them."""

    def sample(self, files: Sequence[str]) -> pa.Table | None:
        """The first rows, to learn unknown output ranks before the run (None: workers
        learn them from their first batch)."""

    def check(self, checked: Checked) -> None:
        """Checks of the whole input before the run (beyond the first file's schema)."""

    def read(self, checked: Checked, scoring: ScoringOptions) -> beam.PTransform:
        """pipeline start -> {"tables": ..., "drifted": ...} (see the module docstring)."""

    def display(self) -> dict[str, object]:
        """The source's settings for Beam's display data (None values are not shown)."""


def match_files(pattern: str) -> list[str]:
    """The data files matching `pattern`, sorted (`beam_v1.io.files.match_data_files`: hidden files
    skipped); BeamV1Error naming the pattern, and any hidden files skipped, when none does."""
    try:
        matched, hidden = match_data_files(pattern)
    except Exception as e:  # BeamIOError for a bad pattern or an unreachable filesystem
        raise BeamV1Error(f"Cannot list input files {pattern!r}: {e}") from e
    if not matched:
        skipped = (
            f" (skipped {len(hidden)} hidden file(s), whose names start with "
            f"{' or '.join(HIDDEN_PREFIXES)}: {hidden[:3]})" if hidden else ""
        )
        raise BeamV1Error(f"No input file matches {pattern!r}{skipped}.")
    return matched


def read_schema(path: str) -> pa.Schema:
    """The Arrow schema of a Parquet file's footer."""
    try:
        with reading_parquet(path) as parquet:
            return parquet.schema_arrow
    except Exception as e:
        raise BeamV1Error(f"Cannot read the Parquet footer of {path}: {e}") from e


def check_every_file(files: Sequence[str], file_schemas: FileSchemas, threads: int = 16) -> None:
    """Read the footer of each of `files` (the first is the run's schema); raise a SchemaError
    naming every file whose schema does not cast to the first file's, and why."""
    with concurrent.futures.ThreadPoolExecutor(min(threads, max(len(files) - 1, 1))) as pool:
        schemas = list(pool.map(read_schema, files[1:]))
    offending = [
        (path, found)
        for path, found in ((p, file_schemas.problems(s)) for p, s in zip(files[1:], schemas))
        if found
    ]
    if offending:
        described = "; ".join(f"{path}: {', '.join(found)}" for path, found in offending)
        raise SchemaError(
            f"--strict-schema: {len(offending)} of {len(files)} input files do not fit the "
            f"first input file's schema ({files[0]}: {_describe(file_schemas.schema)}). "
            f"{described}. Without --strict-schema (API: strict_schema=False) the rows of "
            "such files go to the dead letter with this reason and the other files are scored."
        )


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


class ParquetSource:
    """Parquet files matching `pattern`, read one row group per table.

    The first file's schema is the run's: a later file's columns are cast to it where that
    is safe, and the rows of a file that cannot be (a column that cannot feed its input, a
    fed column missing) are drifted rows with the reason. With `strict_schema=True` every
    file's footer is checked before the run instead, and such a file fails the checks.
    """

    label = "Parquet"

    def __init__(self, pattern: str, *, strict_schema: bool = False):
        self.pattern = pattern
        self.strict_schema = bool(strict_schema)

    def files(self) -> list[str]:
        return match_files(self.pattern)

    def input_schema(self, prepared, signature, files, scoring):
        return read_schema(files[0]), scoring

    def sample(self, files: Sequence[str]) -> pa.Table | None:
        reader = SliceReader(files[0])
        try:
            groups = range(reader.parquet.metadata.num_row_groups)
            first = next((t for i in groups for t in reader.slices(i, PROBE_ROWS)), None)
        except UnreadableRowGroupError:
            return None  # workers learn the ranks from a batch they can read
        finally:
            reader.close()
        return pa.table({}) if first is None else first

    def check(self, checked: Checked) -> None:
        if self.strict_schema:
            check_every_file(checked.input_files, checked.file_schemas)

    def read(self, checked: Checked, scoring: ScoringOptions) -> beam.PTransform:
        return _ReadParquet(self.pattern, checked.file_schemas)

    def display(self) -> dict[str, object]:
        return {"strict_schema": self.strict_schema or None}


class _ReadParquet(beam.PTransform):
    def __init__(self, pattern: str, file_schemas: FileSchemas):
        super().__init__()
        self._pattern = pattern
        self._file_schemas = file_schemas

    def expand(self, pbegin):
        read = pbegin | "RowGroups" >> ReadParquetRowGroups(
            self._pattern, schemas=self._file_schemas
        )
        return {"tables": read.tables, "drifted": read[DRIFTED]}


class TFRecordSource:
    """TFRecord files of serialized tf.Example matching `pattern`.

    The serialized examples feed the signature's one example input as they are (the graph
    parses them); with `decode_features=True` the examples' features are also decoded, one
    list column per feature of the signature's spec, and kept in the output by default.
    `compression`: 'auto' (each file's first bytes tell uncompressed, GZIP or ZLIB, whatever
    its name), or 'none' | 'gzip' | 'zlib'; see `beam_v1.io.tfrecord.read_records`. Records
    are read into tables of at most `max_batch_bytes` record bytes.
    """

    label = "TFRecord"

    def __init__(self, pattern: str, *, compression: str | None = "auto",
                 decode_features: bool = False):
        self.pattern = pattern
        self.compression = tfrecord.compression_name(compression)
        self.decode_features = bool(decode_features)

    def files(self) -> list[str]:
        return match_files(self.pattern)

    def input_schema(self, prepared, signature, files, scoring):
        if scoring.column_map:
            raise BeamV1Error("--map does not apply to TFRecord input: the records feed the "
                              "signature's serialized-example input.")
        specs = prepared.example_specs(signature.key)
        if len(specs) != 1:
            raise BeamV1Error(
                f"Signature {signature.key!r} has {len(specs)} serialized tf.Example inputs; "
                "TFRecord input needs exactly one."
            )
        ((input_key, spec),) = specs.items()
        features = {k: f.dtype for k, f in spec.features.items()} if self.decode_features else {}
        schema = tfrecord.records_schema(features)
        keep = [n for n in schema.names if n != tfrecord.SERIALIZED_COLUMN]
        if scoring.keep_columns is not None:
            unknown = sorted(set(scoring.keep_columns) - set(keep))
            if unknown:
                raise BeamV1Error(f"--keep-columns {unknown}: TFRecord input has the columns "
                                  f"{keep} (features of the spec, with decode_features).")
            keep = list(scoring.keep_columns)
        adapted = scoring.replace(
            keep_columns=tuple(keep), column_map={tfrecord.SERIALIZED_COLUMN: input_key}
        )
        return schema, adapted

    def sample(self, files: Sequence[str]) -> None:
        return None  # workers learn unknown output ranks from their first batch

    def check(self, checked: Checked) -> None:
        return None  # every record is a serialized example: nothing to hold to a schema

    def read(self, checked: Checked, scoring: ScoringOptions) -> beam.PTransform:
        features = {
            f.name: _DTYPE_OF_LEAF[f.type.value_type]
            for f in checked.input_schema
            if f.name != tfrecord.SERIALIZED_COLUMN
        }
        return _ReadTFRecord(self.pattern, self.compression, features, scoring)

    def display(self) -> dict[str, object]:
        return {"compression": self.compression, "decode_features": self.decode_features or None}


_DTYPE_OF_LEAF = {pa.float32(): "float32", pa.int64(): "int64", pa.binary(): "string"}


class _ReadTFRecord(beam.PTransform):
    def __init__(self, pattern: str, compression: str, features: dict[str, str],
                 scoring: ScoringOptions):
        super().__init__()
        self._pattern = pattern
        self._compression = compression
        self._features = features
        self._max_batch_bytes = scoring.max_batch_bytes

    def expand(self, pbegin):

        compression, features = self._compression, self._features
        # one file per element; `read_records` verifies both checksums of every record and
        # names the file, record and offset of a corrupt one
        tables = (
            pbegin
            | "Match" >> MatchDataFiles(self._pattern)
            | "Spread" >> beam.Reshuffle()
            | "Records" >> beam.FlatMap(lambda m: tfrecord.read_records(m.path, compression))
            # batches weighed in record bytes (Beam's BatchElements has one bound: with
            # element_size_fn its max_batch_size is a weight); RunV1Inference's DoFn then
            # cuts batches of at most batch_size rows and max_batch_bytes Arrow bytes
            | "Batch" >> beam.BatchElements(
                min_batch_size=1, max_batch_size=self._max_batch_bytes, element_size_fn=len
            )
            | "ToArrow" >> beam.Map(
                lambda records: tfrecord.records_table(list(records), features)
            )
        )
        return {"tables": tables}
