"""Write a PCollection of Arrow tables as `PREFIX-SSSSS-of-NNNNN.parquet`, temp-then-rename.

Each bundle writes one temporary file in `beam-temp-<name>-<uuid>/` beside the prefix
(pyarrow's own writer for local paths, Beam's `FileSystems` for any other scheme); once
every bundle is done, one finalize step renames the committed files to their final names
and deletes the temp folder, with any file a retried bundle left there. A failed run
therefore leaves no final file. This is what Beam's `WriteToParquetBatched` does, with
a native writer and 3 leaf transforms instead of 12 (each costs Beam time when the
pipeline is built and started). With `num_shards > 0` tables are spread over that
many shards round-robin and grouped (a shuffle) before they are written.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_v1.io import files
from beam_v1.runs import display_items

_log = logging.getLogger(__name__)
ROW_GROUP_BYTES = 64 << 20  # tables are buffered to about this size per row group


class ParquetFileWriter:
    """A ParquetWriter for `path` on any filesystem Beam knows; local paths use native I/O."""

    def __init__(self, path: str, schema: pa.Schema, codec: str):
        self._handle = files.create_output(path, arrow=True)
        self._writer = pq.ParquetWriter(self._handle, schema, compression=codec)

    def write_table(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def close(self) -> None:
        self._writer.close()  # writes the footer; a file object passed in stays open
        self._handle.close()


def shard_names(prefix: str, count: int, suffix: str = ".parquet") -> list[str]:
    return [f"{prefix}-{i:05d}-of-{count:05d}{suffix}" for i in range(count)]


class _TableFile:
    """A temporary Parquet file, opened on the first table; tables buffered into row groups."""

    def __init__(self, temp_dir: str, schema: pa.Schema, codec: str):
        self._temp_dir = temp_dir
        self._schema = schema
        self._codec = codec
        self.path: str | None = None
        self._writer = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def add(self, table: pa.Table) -> None:
        self._buffer.append(table)
        self._buffered += table.nbytes
        if self._buffered >= ROW_GROUP_BYTES:
            self._write_buffer()

    def close(self) -> str | None:
        """The file's path, or None if no table came."""
        if self._buffer:
            self._write_buffer()
        if self._writer is not None:
            self._writer.close()
        return self.path

    def _write_buffer(self) -> None:
        if self._writer is None:
            try:
                FileSystems.mkdirs(self._temp_dir)
            except OSError:  # another bundle made it first (Beam's BeamIOError is an OSError)
                pass
            self.path = FileSystems.join(self._temp_dir, f"{uuid.uuid4().hex}.parquet")
            self._writer = ParquetFileWriter(self.path, self._schema, self._codec)
        table = self._buffer[0] if len(self._buffer) == 1 else pa.concat_tables(self._buffer)
        self._writer.write_table(table)
        self._buffer, self._buffered = [], 0


class _WriteBundleDoFn(beam.DoFn):
    """One temporary file per bundle; emits its path when the bundle finishes."""

    def __init__(self, temp_dir: str, schema: pa.Schema, codec: str, conform):
        self._args = (temp_dir, schema, codec)
        self._conform = conform

    def start_bundle(self) -> None:
        self._file = _TableFile(*self._args)

    def process(self, table: pa.Table):
        if table.num_rows:
            self._file.add(self._conform(table))

    def finish_bundle(self):
        path = self._file.close()
        if path is not None:
            yield WindowedValue(path, MIN_TIMESTAMP, [GlobalWindow()])


class _AssignShardDoFn(beam.DoFn):
    """(shard, table), shards taken in turn from a random start."""

    def __init__(self, num_shards: int, conform):
        self._num_shards = num_shards
        self._conform = conform

    def setup(self) -> None:
        self._next = random.randrange(self._num_shards)

    def process(self, table: pa.Table):
        if table.num_rows:
            self._next = (self._next + 1) % self._num_shards
            yield self._next, self._conform(table)


class _WriteShardDoFn(beam.DoFn):
    def __init__(self, temp_dir: str, schema: pa.Schema, codec: str):
        self._args = (temp_dir, schema, codec)

    def process(self, element: tuple[int, Iterable[pa.Table]]):
        shard, tables = element
        file = _TableFile(*self._args)
        for table in tables:
            file.add(table)
        yield shard, file.close()


def finalize(
    written: list, prefix: str, temp_dir: str, schema: pa.Schema, codec: str, num_shards: int = 0
) -> list[str]:
    """Rename the committed temp files to `PREFIX-SSSSS-of-NNNNN.parquet`; drop the temp dir.

    `written` holds temp paths, or (shard, path) pairs when `num_shards` is fixed. A shard
    without a file (and a run without rows) gets an empty file with the schema, as in Beam.
    """
    if num_shards:
        by_shard = dict(written)
        final = shard_names(prefix, num_shards)
    else:
        by_shard = dict(enumerate(sorted(written)))
        final = shard_names(prefix, max(len(by_shard), 1))
    _rename([by_shard[i] for i in sorted(by_shard)], [final[i] for i in sorted(by_shard)])
    for i, name in enumerate(final):
        if i not in by_shard:
            ParquetFileWriter(name, schema, codec).close()
    try:  # the folder holds only files of retried bundles now (or nothing, on object stores)
        if FileSystems.exists(temp_dir):
            FileSystems.delete([temp_dir])
    except OSError as e:  # as Beam's own sink does: cleaning up is not worth failing the run
        _log.info("could not delete %s: %s", temp_dir, e)
    _log.info("wrote %d file(s) %s-*", len(final), prefix)
    return final


def _rename(sources: list[str], destinations: list[str]) -> None:
    """Rename; a file a retried finalize finds already renamed (no source, the destination
    there) is not an error."""
    if not sources:
        return
    try:
        FileSystems.rename(sources, destinations)
    except BeamIOError as e:
        pairs = e.exception_details or {}
        if not pairs or any(
            FileSystems.exists(src) or not FileSystems.exists(dst) for src, dst in pairs
        ):
            raise


class WriteParquetTables(beam.PTransform):
    """Tables -> `PREFIX-SSSSS-of-NNNNN.parquet` with `schema`; no final file if the run fails.

    `conform(table) -> table` may reorder or cast each table to `schema` before it is written.
    `num_shards=0` writes one file per bundle; a positive number writes exactly that many.
    """

    def __init__(
        self,
        prefix: str,
        schema: pa.Schema,
        codec: str = "snappy",
        num_shards: int = 0,
        conform=None,
    ):
        super().__init__()
        self._prefix = prefix
        self._schema = schema
        self._codec = codec
        self._num_shards = num_shards
        self._conform = conform or (lambda table: table)

    def expand(self, tables):
        base, name = FileSystems.split(self._prefix)
        temp_dir = FileSystems.join(base, f"beam-temp-{name}-{uuid.uuid4().hex}")
        prefix, schema, codec, shards = self._prefix, self._schema, self._codec, self._num_shards
        if shards:
            written = (
                tables
                | "Shard" >> beam.ParDo(_AssignShardDoFn(shards, self._conform))
                .with_output_types(tuple[int, pa.Table])
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShardDoFn(temp_dir, schema, codec))
            )
        else:
            written = tables | "WriteBundles" >> beam.ParDo(
                _WriteBundleDoFn(temp_dir, schema, codec, self._conform)
            )
        return (
            tables.pipeline
            | "Once" >> beam.Impulse()
            | "Finalize" >> beam.FlatMap(
                lambda _, paths: finalize(paths, prefix, temp_dir, schema, codec, shards),
                paths=beam.pvalue.AsList(written),
            )
        )

    def display_data(self) -> dict:
        return display_items(
            prefix=self._prefix, codec=self._codec, num_shards=self._num_shards or None,
            columns=self._schema.names if self._schema is not None else None,
        )
