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

A `fixed_size_list` column with null rows, which pyarrow's reader refuses, is read as lists
and rebuilt (`SliceReader`, `parquet_lists`). Rows that pyarrow cannot decode at all (a file
whose list levels are invalid, such as DuckDB's NULL fixed-size ARRAYs, duckdb/duckdb#24731)
go with a `FileJudge` to `DRIFTED` as dead-letter rows naming the file, row group and column,
keeping the columns that do decode; without one they raise `UnreadableRowGroupError`.
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
from apache_beam.metrics import Metrics

from beam_v1.errors import BeamV1Error
from beam_v1.io import files, parquet_lists
from beam_v1.runs import display_items
from beam_v1.text import first_line

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


class UnreadableRowGroupError(BeamV1Error):
    """pyarrow cannot decode the rows of a row group from `rows_done` on (bad data in the
    file, e.g. invalid list levels); the message names the file, the row group and why."""

    def __init__(self, message: str, path: str, index: int, rows_done: int):
        super().__init__(message)
        self.path, self.index, self.rows_done = path, index, rows_done


class SliceReader:
    """One open Parquet file whose row groups are read in slices (tables), each with the
    types of the file's Arrow schema.

    A `fixed_size_list` column holding null rows, which pyarrow's reader refuses
    (`parquet_lists`), is read through a second handle that sees it as a variable list and
    rebuilt as the fixed-size list, nulls kept; files without such rows take pyarrow's
    reader alone (the second handle is opened at the first refusal and kept for the
    file's later row groups). Close it with `close()`.
    """

    def __init__(self, path: str):
        self.path = path
        self.parquet = open_for_slices(path)
        self._lists: pq.ParquetFile | None = None

    def close(self) -> None:
        for parquet in (self.parquet, self._lists):
            if parquet is not None:
                parquet.close(force=True)

    def slices(self, index: int, rows: int, columns: list[str] | None = None
               ) -> Iterator[pa.Table]:
        """Row group `index` in tables of `rows` rows (the last may be shorter), of the
        `columns` selected (all: None). Raises UnreadableRowGroupError when the rows from
        some point on cannot be decoded."""
        done = 0
        if self._lists is None:
            try:
                for table in self._tables(index, rows, columns):
                    done += table.num_rows
                    yield table
                return
            except pa.ArrowInvalid as e:
                self._open_lists(index, done, e)
        skip = done
        try:
            for table in self._tables(index, rows, columns):
                if skip:  # rows given before pyarrow's reader refused the rest
                    given = min(skip, table.num_rows)
                    skip -= given
                    table = table.slice(given)
                    if not table.num_rows:
                        continue
                yield table
                done += table.num_rows
        except pa.ArrowInvalid as e:
            raise self._unreadable(index, done, e) from e

    def _tables(self, index: int, rows: int, columns: list[str] | None) -> Iterator[pa.Table]:
        """Row group `index` in tables of `rows` rows, through the handle that reads this
        file now (the lists one, rebuilt as the file's types, once opened)."""
        parquet = self._lists or self.parquet
        for batch in parquet.iter_batches(batch_size=rows, row_groups=[index], columns=columns):
            table = pa.Table.from_batches([batch])
            if self._lists is not None:
                table = parquet_lists.restore_fixed(table, self.parquet.schema_arrow)
            yield table

    def _open_lists(self, index: int, done: int, refused: pa.ArrowInvalid) -> None:
        if not parquet_lists.has_fixed_lists(self.parquet.schema_arrow):
            raise self._unreadable(index, done, refused) from refused
        try:
            metadata = parquet_lists.lists_metadata(self.parquet)
        except ValueError as e:
            raise self._unreadable(index, done, refused, f" (nor as lists: {e})") from refused
        self._lists = pq.ParquetFile(
            files.open_input(self.path, arrow=True), metadata=metadata, pre_buffer=False,
            buffer_size=READ_BUFFER_BYTES,
        )
        _log.info("input file %s holds null rows in a fixed_size_list column: read as lists",
                  self.path)

    def _unreadable(self, index: int, done: int, error: Exception, more: str = ""
                    ) -> UnreadableRowGroupError:
        total = self.parquet.metadata.row_group(index).num_rows
        return UnreadableRowGroupError(
            f"input file {self.path}, row group {index}: pyarrow cannot decode rows {done} to "
            f"{total - 1} of its {total}: {first_line(error)}{more}",
            self.path, index, done,
        )

    def salvage(self, index: int, rows: int, columns: list[str] | None, skip: int
                ) -> Iterator[tuple[pa.Table, dict[str, str]]]:
        """Rows `skip` on of row group `index` in tables of at most `rows` rows, with each
        selected column that decodes, and {column: why} for those that do not (absent
        from the tables): what a dead letter can keep of rows that `slices` cannot give."""
        names = columns if columns is not None else self.parquet.schema_arrow.names
        total = self.parquet.metadata.row_group(index).num_rows
        failed: dict[str, str] = {}
        readers = {name: self._column_slices(index, rows, name, failed) for name in names}
        for start in range(0, total, rows):
            arrays = {name: next(it, None) for name, it in readers.items()}
            readable = {n: a for n, a in arrays.items() if a is not None and n not in failed}
            size = min(rows, total - start)
            lo, hi = max(skip - start, 0), size
            if lo >= hi:
                continue
            table = pa.table({n: a.slice(lo, hi - lo) for n, a in readable.items()})
            if not readable:
                table = pa.table({"_": pa.nulls(hi - lo)}).drop_columns(["_"])
            yield table, dict(failed)

    def _column_slices(self, index: int, rows: int, name: str, failed: dict[str, str]):
        """`name`'s slices of row group `index`; after a failure, recorded in `failed`,
        it gives nothing more."""
        try:
            for table in self._tables(index, rows, [name]):
                yield table.column(0)
        except pa.ArrowInvalid as e:
            failed[name] = first_line(e)


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
        self._open: collections.OrderedDict[str, SliceReader] = collections.OrderedDict()
        self._drift: dict[str, str | None] = {}  # path -> why its rows cannot be scored

    def process(self, element: tuple[str, int]):
        path, index = element
        reader = self._open.pop(path, None) or SliceReader(path)
        self._open[path] = reader
        while len(self._open) > _OPEN_FILES:
            self._open.popitem(last=False)[1].close()
        meta = reader.parquet.metadata.row_group(index)
        self._bytes_read.inc(stored_bytes(meta, self._columns))
        rows = slice_rows(meta, self._columns, self._slice_bytes)
        try:
            for table in reader.slices(index, rows, self._columns):
                if self._schemas is None:
                    yield table
                else:
                    yield from self._conformed(path, reader.parquet, index, table)
                del table  # downstream may release the slice while this generator waits
        except UnreadableRowGroupError as e:
            if self._schemas is None:
                raise
            _log.warning("%s; those rows go to the dead letter", e)
            yield from self._unreadable(reader, index, rows, e)

    def _unreadable(self, reader: SliceReader, index: int, rows: int,
                    error: UnreadableRowGroupError):
        """The rows of `error` as dead-letter rows (DRIFTED): the columns that decode keep
        their values, the others are null and named in the reason."""
        for table, failed in reader.salvage(index, rows, self._columns, error.rows_done):
            reason = str(error)
            if failed:
                reason += "; column(s) that cannot be decoded, null here: " + ", ".join(
                    repr(name) if why in reason else f"{name!r} ({why})"
                    for name, why in failed.items()
                )
            self._rows_in.inc(table.num_rows)
            self._rows_failed.inc(table.num_rows)
            yield beam.pvalue.TaggedOutput(DRIFTED, self._schemas.dead_letter(table, reason))

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
        for reader in self._open.values():
            reader.close()
        self._open.clear()


class ReadParquetRowGroups(beam.PTransform):
    """Parquet files matching `file_pattern` -> a PCollection of `pa.Table`: row groups are
    spread across workers, and each is read in slices of about `slice_bytes` decoded bytes
    (one table each; an empty row group gives none). Files are matched as
    `files.MatchDataFiles` does (relative to the launcher's folder; hidden files skipped; no
    match fails the run).

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
            | "Match" >> files.MatchDataFiles(self._pattern)
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
