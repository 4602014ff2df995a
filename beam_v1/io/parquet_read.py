"""Read Parquet files as Arrow tables, row group by row group in slices, with native I/O for
local files.

Beam's `ReadFromParquetBatched` reads every file through a Python file object from
`FileSystems.open`; for local files pyarrow's own reader is faster
(benchmarks/RESULTS.md). Here a local path is opened by pyarrow directly and any other
scheme (gs://, s3://, a registered plugin) through Beam's `FileSystems`, so credentials
and options stay Beam's. Work is split by row group: each (file, row group) is one
element, spread across workers by a `Reshuffle` (and the files before it, so that their
footers are read in parallel). Each row group is decoded in slices of about
`READ_BATCH_BYTES` (`iter_batches` over that row group alone, through a small read buffer),
each slice a table of its own, so the reader holds about one slice of Arrow memory where
pyarrow can decode in slices (`read_row_group` decodes several times a row group's size at
once, and an open file kept about one row group allocated after it).

Given a `FileJudge` (the scoring side's drift rule, `beam_v1.scoring.schema_drift`), each
file's footer is judged where its row groups are read: tables of a file whose schema casts
to the first file's are cast to it; rows of a file that does not go, with the reason, to the
`DRIFTED` output as dead-letter rows (SPEC §8: schema drift is row data).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator
from typing import Protocol

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from beam_v1.io import files
from beam_v1.runs import display_items

_log = logging.getLogger(__name__)
DRIFTED = "drifted"  # tagged output: dead-letter rows of files whose schema drifted
_OPEN_FILES = 4  # row groups arrive shuffled: keep a few files' footers open
READ_BATCH_BYTES = 8 << 20  # decoded bytes per slice of a row group (at least one row)
READ_BUFFER_BYTES = 1 << 20  # column data is read through a buffer of this size


class FileJudge(Protocol):
    """How a file's tables are held to the run's schema (picklable; the reader only calls)."""

    def extra_columns(self, schema: pa.Schema) -> list[str]:
        """Columns of a file with `schema` that the run's schema has not (dropped)."""

    def problems(self, schema: pa.Schema) -> list[str]:
        """Why tables of a file with `schema` cannot be cast to the run's schema (none: [])."""

    def conform(self, table: pa.Table) -> pa.Table:
        """`table` cast to the run's schema; pa.ArrowInvalid for a value that does not fit."""

    def dead_letter(self, table: pa.Table, reason: str) -> pa.Table:
        """`table`'s rows as dead-letter rows with `reason`."""


def open_parquet(path: str) -> pq.ParquetFile:
    """A ParquetFile for `path` on any filesystem Beam knows; local files use native I/O.
    Close it with `close(force=True)`: the file object is ours to close, not pyarrow's."""
    return pq.ParquetFile(files.open_input(path, arrow=True))


@contextlib.contextmanager
def reading_parquet(path: str) -> Iterator[pq.ParquetFile]:
    """`open_parquet` for a `with` block: the file is closed at its end."""
    parquet = open_parquet(path)
    try:
        yield parquet
    finally:
        parquet.close(force=True)


def open_for_slices(path: str) -> pq.ParquetFile:
    """`open_parquet` for reading row groups in slices: buffered column reads, no pre-buffering
    of a whole row group's column chunks."""
    return pq.ParquetFile(
        files.open_input(path, arrow=True), pre_buffer=False, buffer_size=READ_BUFFER_BYTES
    )


def slice_rows(
    row_group: pq.RowGroupMetaData,
    columns: list[str] | None = None,
    slice_bytes: int = READ_BATCH_BYTES,
) -> int:
    """Rows per slice of `row_group` so that a slice decodes to about `slice_bytes` (as the
    footer counts uncompressed bytes; at least one row)."""
    chunks = (row_group.column(i) for i in range(row_group.num_columns))
    decoded = sum(
        c.total_uncompressed_size
        for c in chunks
        if columns is None or c.path_in_schema.split(".")[0] in columns
    )
    per_row = decoded / max(row_group.num_rows, 1)
    return max(1, min(row_group.num_rows, int(slice_bytes / per_row) if per_row else 1 << 20))


def row_groups(path: str) -> list[tuple[str, int]]:
    """(path, index) of every row group of the Parquet file at `path`."""
    with reading_parquet(path) as parquet:
        return [(path, i) for i in range(parquet.metadata.num_row_groups)]


def stored_bytes(row_group: pq.RowGroupMetaData, columns: list[str] | None = None) -> int:
    """The bytes a row group's (selected) column chunks take in the file, compressed."""
    chunks = (row_group.column(i) for i in range(row_group.num_columns))
    return sum(
        c.total_compressed_size
        for c in chunks
        if columns is None or c.path_in_schema.split(".")[0] in columns
    )


class _ReadRowGroupDoFn(beam.DoFn):
    def __init__(
        self,
        columns: list[str] | None,
        schemas: FileJudge | None = None,
        slice_bytes: int = READ_BATCH_BYTES,
    ):
        self._columns = columns
        self._schemas = schemas
        self._slice_bytes = slice_bytes
        self._bytes_read = Metrics.counter("beam_v1", "input_bytes_read")
        self._rows_in = Metrics.counter("beam_v1", "rows_in")
        self._rows_failed = Metrics.counter("beam_v1", "rows_failed")

    def start_bundle(self) -> None:
        self._open: collections.OrderedDict[str, pq.ParquetFile] = collections.OrderedDict()
        self._drift: dict[str, str | None] = {}  # path -> why its rows cannot be scored

    def process(self, element: tuple[str, int]):
        path, index = element
        parquet = self._open.pop(path, None) or open_for_slices(path)
        self._open[path] = parquet
        while len(self._open) > _OPEN_FILES:
            self._open.popitem(last=False)[1].close(force=True)
        meta = parquet.metadata.row_group(index)
        self._bytes_read.inc(stored_bytes(meta, self._columns))
        slices = parquet.iter_batches(
            batch_size=slice_rows(meta, self._columns, self._slice_bytes),
            row_groups=[index],
            columns=self._columns,
        )
        for batch in slices:
            table = pa.Table.from_batches([batch])
            del batch  # downstream may release the slice while this generator waits
            if self._schemas is None:
                yield table
            else:
                yield from self._conformed(path, parquet, index, table)
            del table

    def _conformed(self, path: str, parquet: pq.ParquetFile, index: int, table: pa.Table):
        """`table` cast to the run's schema, or its rows as dead-letter rows (DRIFTED)."""
        if path not in self._drift:
            self._drift[path] = self._judge(path, parquet.schema_arrow)
        reason = self._drift[path]
        if reason is None:
            try:
                yield self._schemas.conform(table)
                return
            except pa.ArrowInvalid as e:
                reason = f"input file {path}, row group {index}: {e}"
        self._rows_in.inc(table.num_rows)
        self._rows_failed.inc(table.num_rows)
        yield beam.pvalue.TaggedOutput(DRIFTED, self._schemas.dead_letter(table, reason))

    def _judge(self, path: str, schema: pa.Schema) -> str | None:
        extra = self._schemas.extra_columns(schema)
        if extra:
            _log.warning("input file %s has column(s) %s that the first file has not: dropped",
                         path, extra)
        problems = self._schemas.problems(schema)
        if not problems:
            return None
        reason = f"input file {path} does not fit the first input file's schema: " + "; ".join(
            problems
        )
        _log.warning("%s; its rows go to the dead letter", reason)
        return reason

    def finish_bundle(self) -> None:
        for parquet in self._open.values():
            parquet.close(force=True)
        self._open.clear()


class ReadParquetRowGroups(beam.PTransform):
    """Parquet files matching `file_pattern` -> a PCollection of `pa.Table`: row groups are
    spread across workers, and each is read in slices of about `slice_bytes` decoded bytes
    (one table each; an empty row group gives none).

    With `schemas` (the run's schema and what its columns feed) every table is cast to the
    first file's schema and the result is a DoOutputsTuple: `result.tables`, and
    `result.drifted` (dead-letter rows of files, or row groups, that cannot be cast).
    """

    def __init__(
        self,
        file_pattern: str,
        columns: list[str] | None = None,
        *,
        schemas: FileJudge | None = None,
        slice_bytes: int = READ_BATCH_BYTES,
    ):
        super().__init__()
        if slice_bytes < 1:
            raise ValueError(f"slice_bytes must be positive, got {slice_bytes}")
        self._pattern = file_pattern
        self._columns = columns
        self._schemas = schemas
        self._slice_bytes = slice_bytes

    def expand(self, pbegin):
        spread = (
            pbegin
            | "Match" >> fileio.MatchFiles(self._pattern)
            | "SpreadFiles" >> beam.Reshuffle()  # footers of many files read in parallel
            | "RowGroups" >> beam.FlatMap(lambda meta: row_groups(meta.path))
            | "SpreadRowGroups" >> beam.Reshuffle()
        )
        read = beam.ParDo(_ReadRowGroupDoFn(self._columns, self._schemas, self._slice_bytes))
        if self._schemas is None:
            return spread | "ReadRowGroup" >> read.with_output_types(pa.Table)
        return spread | "ReadRowGroup" >> read.with_output_types(pa.Table).with_outputs(
            DRIFTED, main="tables"
        )

    def display_data(self) -> dict:
        return display_items(file_pattern=self._pattern, columns=self._columns)
