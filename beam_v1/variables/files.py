"""The dump's files: per-bundle part files written as records arrive, and the final file.

A part holds some records of ONE model, appended as they arrive (a Parquet row group per big
record, small ones batched; in an npz, each run of consecutive slices of a variable streamed
into one member). Closing a part gives a small descriptor (what it holds, never the data).
`finalize` then makes the model's file from all its parts' descriptors: when one part holds
the whole model (the usual case: reading and writing fused in one bundle) it is renamed into
place, else the parts are concatenated (Parquet: row groups copied; npz: a variable's slices
joined). The final name only ever appears by a rename of a complete file, so a model's output
is all or nothing. No Beam here (`beam_v1.variables.dump` holds the DoFns).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from beam_v1 import dtypes
from beam_v1.errors import ModelFileError
from beam_v1.io import checksums
from beam_v1.io.files import create_output, is_remote, open_input
from beam_v1.variables import checkpoint, encoding, parquet_raw

SMALL_VALUES_BYTES = 64 << 10  # float variables up to this size also get a `values` list column
PARQUET_GROUP_BYTES = 8 << 20  # small records are batched into row groups of about this size
PARQUET_BIG_ROW = parquet_raw.BIG_VALUE  # a record bigger than this is its own row group
_COPY_CHUNK = 16 << 20
_CREATED_BY = "beam-v1 dump-variables (parquet_raw)"
_SLICE_MEMBER = "~slices~/"  # npz members of partial runs ("~" is never in a TF variable name)


@dataclasses.dataclass(frozen=True)
class RecordMeta:
    """A record without its value: what a part holds."""

    name: str
    dtype: str
    shape: tuple[int, ...]  # the whole variable's shape
    kind: str
    trainable: bool | None
    order: int
    slice_index: int
    num_slices: int
    row_start: int
    row_stop: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class NpzRun:
    """Consecutive slices [first, last] of one variable, stored as one member of an npz part."""

    name: str
    member: str
    header_bytes: int  # npy header before the data (0 for a raw member)
    first: int
    last: int
    complete: bool  # the member is the variable's final `.npy`: all its slices, with header


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """What one closed part file holds."""

    model: str
    fmt: str
    path: str
    records: tuple[RecordMeta, ...]
    runs: tuple[NpzRun, ...] = ()


# ------------------------------------------------------------------------ files


def _rename(src: str, dst: str) -> None:
    if is_remote(src) or is_remote(dst):
        from apache_beam.io.filesystems import FileSystems  # deferred: Beam, only for remote paths

        FileSystems.rename([src], [dst])
    else:
        os.replace(src, dst)


def delete_files(paths: Iterable[str]) -> None:
    """Delete files, ignoring those already gone."""
    for path in paths:
        try:
            if is_remote(path):
                # deferred: Beam, only for remote paths
                from apache_beam.io.filesystems import FileSystems

                if FileSystems.exists(path):
                    FileSystems.delete([path])
            else:
                os.remove(path)
        except FileNotFoundError:
            pass


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    """One JSON object per line, written to a temporary file then renamed into place."""

    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with create_output(temp) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    _rename(temp, path)


def value_array(value: np.ndarray, dtype: str):
    """A record's value as lossless bytes without a copy where possible: a little-endian,
    C-order array (the value itself when it already is one), or bytes for strings
    ((u64 length, bytes)*)."""
    if dtype == "string":
        return encoding.to_bytes(value, "string")
    arr = np.ascontiguousarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _fileno(file) -> int | None:
    """The file descriptor of a seekable local file, else None (writes go through `write`)."""
    try:
        return file.fileno() if file.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def write_bytes(file, value, background: BackgroundCopies | None = None) -> None:
    """Write `value`'s bytes at `file`'s position. A range mapped from a checkpoint shard
    (`checkpoint.mapped_range`) going to a local file is copied by the kernel
    (`os.copy_file_range`, cheaper than writing it from the map: benchmarks/RESULTS.md), on
    `background`'s thread if given (the file's position moves past the range at once);
    anything else is written from memory."""
    source = checkpoint.mapped_range(value) if isinstance(value, np.ndarray) else None
    fileno = _fileno(file) if source is not None else None
    shard = _open_shard(source) if fileno is not None else None
    if shard is None:
        file.write(parquet_raw.as_bytes(value))
        return
    file.flush()
    pos = file.tell()
    file.seek(pos + source.nbytes)
    if background is None:
        _copy_range(shard, source.offset, source.nbytes, fileno, pos)
    else:
        background.submit(shard, source.offset, source.nbytes, fileno, pos)


def _open_shard(source: checkpoint.MappedRange):
    """The shard `source` was mapped from, opened, or None if the file at that path is no
    longer the one mapped (or cannot be opened), or the kernel cannot copy."""
    if not hasattr(os, "copy_file_range"):
        return None
    try:
        shard = open(source.path, "rb")
    except OSError:
        return None
    stat = os.fstat(shard.fileno())
    if (stat.st_dev, stat.st_ino) != (source.device, source.inode):
        shard.close()
        return None
    return shard


def _copy_range(shard, offset: int, nbytes: int, fileno: int, pos: int) -> None:
    """Bytes [offset, offset + nbytes) of the open `shard` into `fileno` at `pos`, by the
    kernel; what it refuses to copy (file systems without copy_file_range) read and written
    in chunks. Closes `shard`."""
    with shard:
        done = 0
        try:
            while done < nbytes:
                n = os.copy_file_range(
                    shard.fileno(), fileno, nbytes - done, offset + done, pos + done
                )
                if n <= 0:
                    break
                done += n
        except OSError:
            pass
        while done < nbytes:
            chunk = os.pread(shard.fileno(), min(_COPY_CHUNK, nbytes - done), offset + done)
            if not chunk:
                raise ModelFileError(
                    f"{shard.name} ended while copying bytes {offset}:{offset + nbytes}"
                )
            view = memoryview(chunk)
            while view:
                k = os.pwrite(fileno, view, pos + done)
                view = view[k:]
                done += k


class BackgroundCopies:
    """Copies of mapped ranges into one part file, one at a time on a thread of their own,
    while the part's writer goes on after them; `wait()` before the file is closed. A pending
    copy holds the shard's file open, not the mapped array, so running ahead costs no memory,
    only a file descriptor each (at most `ahead`)."""

    def __init__(self, ahead: int = 64):
        self._pending: list = []
        self._ahead = ahead

    def submit(self, shard, offset: int, nbytes: int, fileno: int, pos: int) -> None:
        while len(self._pending) >= self._ahead:
            self._pending.pop(0).result()
        copy = _thread("copy").submit(_copy_range, shard, offset, nbytes, fileno, pos)
        self._pending.append(copy)

    def wait(self) -> None:
        """Block until every copy is done; raise the first one's error."""
        pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        for e in errors:
            if e is not None:
                raise e


_threads: dict = {}


def _thread(name: str):
    """This process's single-thread executor for `name` (`copy`, `crc`), made on first use."""
    if name not in _threads:

        _threads[name] = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"beam_v1-{name}"
        )
    return _threads[name]


# ------------------------------------------------------------------------ parts

_PARALLEL_CRC_BYTES = 1 << 20


def write_stored(member, value: np.ndarray, background: BackgroundCopies | None = None) -> None:
    """Write an array into a stored (uncompressed) zip member: its bytes through `write_bytes`
    (a kernel copy for a mapped checkpoint range), with their CRC-32 (`checksums.crc32`)
    computed in a second thread meanwhile; a zip member's CRC otherwise costs a pass over the
    data before the write. Falls back to `member.write` if zipfile's writer is not the one
    expected."""
    data = parquet_raw.as_bytes(value)
    n = len(data)
    if (
        n < _PARALLEL_CRC_BYTES
        or getattr(member, "_compressor", True) is not None
        or not all(hasattr(member, a) for a in ("_crc", "_file_size", "_fileobj"))
    ):
        member.write(data)
        return
    crc = _thread("crc").submit(checksums.crc32, data, member._crc)
    try:
        write_bytes(member._fileobj, value, background)
    finally:
        member._crc = crc.result()
        checkpoint.drop_pages(value)  # the CRC read them; Beam may keep the record a while
    member._file_size += n


class PartWriter:
    """Appends one model's records to a new part file in `folder`; `close()` -> PartInfo."""

    def __init__(self, folder: str, model: str, fmt: str):
        self.model = model
        self.fmt = fmt
        self.path = f"{folder.rstrip('/')}/part-{uuid.uuid4().hex}.{fmt}"
        self.records: list[RecordMeta] = []
        self._copies = BackgroundCopies()

    def append(self, meta: RecordMeta, value: np.ndarray) -> None:
        raise NotImplementedError

    def close(self) -> PartInfo:
        raise NotImplementedError

    def abort(self) -> None:
        """Close without a descriptor and delete the part (a failed bundle)."""
        try:
            self._close_file()
        except Exception:  # the file is deleted anyway
            pass
        delete_files([self.path])

    def _close_file(self) -> None:
        raise NotImplementedError


class ParquetPartWriter(PartWriter):
    """Rows as in `parquet_schema`, written by `parquet_raw`: a big record is its own row
    group, its bytes written by `write_bytes` (never copied in memory); small ones batched."""

    def __init__(self, folder: str, model: str):
        super().__init__(folder, model, "parquet")
        self._file = create_output(self.path)
        self._schema = parquet_schema()
        self._writer = parquet_raw.ParquetRawWriter(
            self._file,
            self._schema,
            write_bytes=lambda file, value: write_bytes(file, value, self._copies),
            created_by=_CREATED_BY,
        )
        self._rows: list[dict] = []
        self._size = 0

    def append(self, meta: RecordMeta, value: np.ndarray) -> None:
        data = value_array(value, meta.dtype)
        nbytes = len(data) if meta.dtype == "string" else data.nbytes
        meta = dataclasses.replace(meta, nbytes=nbytes)
        self.records.append(meta)
        if nbytes > PARQUET_BIG_ROW:
            self._flush()
            self._write([parquet_row(self.model, meta, data)])
            return
        if self._size + nbytes > PARQUET_GROUP_BYTES:
            self._flush()
        self._rows.append(parquet_row(self.model, meta, bytes(parquet_raw.as_bytes(data))))
        self._size += nbytes

    def _write(self, rows: list[dict]) -> None:
        self._writer.write_rows({name: [r[name] for r in rows] for name in self._schema.names})

    def _flush(self) -> None:
        if self._rows:
            self._write(self._rows)
            self._rows, self._size = [], 0

    def _close_file(self) -> None:
        try:
            self._writer.close()
            self._copies.wait()
        finally:
            self._file.close()

    def close(self) -> PartInfo:
        self._flush()
        self._close_file()
        return PartInfo(self.model, self.fmt, self.path, tuple(self.records))


class NpzPartWriter(PartWriter):
    """Each run of consecutive slices of a variable streamed into one zip member: the
    variable's `NAME.npy` when the run starts at its first slice, else a raw member."""

    def __init__(self, folder: str, model: str):
        super().__init__(folder, model, "npz")
        self._file = create_output(self.path)
        self._zip = zipfile.ZipFile(self._file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self._runs: list[NpzRun] = []
        self._open = None  # (member file, NpzRun so far, the variable's number of slices)
        self._names: set[str] = set()

    def append(self, meta: RecordMeta, value: np.ndarray) -> None:
        if meta.dtype == "string":
            self._end_run()
            self.records.append(dataclasses.replace(meta, nbytes=0))
            self._write_string(meta, value)
            return
        data = value_array(value, meta.dtype)
        meta = dataclasses.replace(meta, nbytes=data.nbytes)
        self.records.append(meta)
        run = self._open[1] if self._open else None
        if run is None or run.name != meta.name or run.last + 1 != meta.slice_index:
            self._end_run()
            self._start_run(meta)
        member, run, count = self._open
        write_stored(member, data, self._copies)
        self._open = (member, dataclasses.replace(run, last=meta.slice_index), count)
        if meta.slice_index == meta.num_slices - 1:
            self._end_run()

    def _start_run(self, meta: RecordMeta) -> None:
        final = meta.name + ".npy"
        if meta.slice_index == 0 and final not in self._names:
            member = self._zip.open(final, "w", force_zip64=True)
            header = npy_header(meta)
            member.write(header)
            self._names.add(final)
            run = NpzRun(meta.name, final, len(header), 0, -1, False)
        else:
            name = f"{_SLICE_MEMBER}{meta.name}/{meta.slice_index}-{uuid.uuid4().hex[:8]}"
            member = self._zip.open(name, "w", force_zip64=True)
            run = NpzRun(meta.name, name, 0, meta.slice_index, meta.slice_index - 1, False)
        self._open = (member, run, meta.num_slices)

    def _end_run(self) -> None:
        if self._open is None:
            return
        member, run, num_slices = self._open
        self._open = None
        member.close()
        complete = run.header_bytes > 0 and run.first == 0 and run.last == num_slices - 1
        self._runs.append(dataclasses.replace(run, complete=complete))

    def _write_string(self, meta: RecordMeta, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=object).reshape(tuple(meta.shape))
        items = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in value.reshape(-1)]
        if any(v.endswith(b"\x00") for v in items):
            raise ModelFileError(
                f"String variable {meta.name!r} has values ending in NUL bytes, which .npz "
                "cannot keep exactly; dump it with --format parquet."
            )
        array = np.array(items, dtype=bytes).reshape(value.shape) if items else value.astype(bytes)
        name = meta.name + ".npy"
        with self._zip.open(name, "w", force_zip64=True) as f:
            np.lib.format.write_array(f, array, allow_pickle=False)
        self._names.add(name)
        self._runs.append(NpzRun(meta.name, name, 0, 0, 0, True))

    def _close_file(self) -> None:
        try:
            if self._open is not None:
                self._open[0].close()
                self._open = None
            write_npz_dtypes(self._zip, self.records)
            self._zip.close()
            self._copies.wait()
        finally:
            self._file.close()

    def close(self) -> PartInfo:
        self._end_run()
        self._close_file()
        return PartInfo(self.model, self.fmt, self.path, tuple(self.records), tuple(self._runs))


def part_writer(folder: str, model: str, fmt: str) -> PartWriter:
    """A new part of `model` in `folder`, for format `parquet` or `npz`."""
    return (ParquetPartWriter if fmt == "parquet" else NpzPartWriter)(folder, model)


# --------------------------------------------------------------------- parquet


def parquet_schema():

    return pa.schema(
        [
            ("model", pa.string()),
            ("name", pa.string()),
            ("dtype", pa.string()),
            ("shape", pa.list_(pa.int64())),
            ("kind", pa.string()),
            ("trainable", pa.bool_()),
            ("slice_index", pa.int32()),
            ("num_slices", pa.int32()),
            ("row_start", pa.int64()),
            ("row_stop", pa.int64()),
            ("nbytes", pa.int64()),
            ("data", pa.large_binary()),  # lossless: little-endian C-order bytes
            ("values", pa.list_(pa.float64())),  # small float variables only, else null
        ]
    )


def parquet_writer(sink):
    """No compression (weights barely compress), no dictionary nor statistics for the weights'
    bytes (pyarrow's defaults hash them and copy them into min/max statistics)."""

    schema = parquet_schema()
    small = [f.name for f in schema if f.name not in ("data", "values")]
    return pq.ParquetWriter(
        sink,
        schema,
        compression="none",
        use_dictionary=["model", "name", "dtype", "kind"],
        write_statistics=small,
    )


def parquet_row(model: str, meta: RecordMeta, data) -> dict:
    """One row; `data` is the value's bytes, or its array (`value_array`) for a big record."""
    values = None
    if (
        dtypes.is_floating(meta.dtype)
        and dtypes.arrow_type(meta.dtype) is not None  # float16/32/64, not bfloat16 or float8
        and meta.num_slices == 1
        and meta.nbytes <= SMALL_VALUES_BYTES
    ):
        values = encoding.from_bytes(data, meta.dtype, (-1,)).astype(np.float64).tolist()
    return {
        "model": model,
        "name": meta.name,
        "dtype": meta.dtype,
        "shape": list(meta.shape),
        "kind": meta.kind,
        "trainable": meta.trainable,
        "slice_index": meta.slice_index,
        "num_slices": meta.num_slices,
        "row_start": meta.row_start,
        "row_stop": meta.row_stop,
        "nbytes": meta.nbytes,
        "data": data,
        "values": values,
    }


def _concat_parquet(out, parts: Sequence[PartInfo]) -> None:
    """Copy every row group of every part, one row group in memory at a time."""

    with parquet_writer(out) as writer:
        for part in parts:
            with open_input(part.path) as f:
                pf = pq.ParquetFile(f)
                for group in range(pf.num_row_groups):
                    writer.write_table(pf.read_row_group(group))
                pf.close()


# ------------------------------------------------------------------------- npz


def npy_header(meta: RecordMeta) -> bytes:
    """The .npy header of the whole variable (little-endian, C order)."""

    buf = io.BytesIO()
    dtype = dtypes.numpy_dtype(meta.dtype).newbyteorder("<")
    np.lib.format.write_array_header_1_0(
        buf,
        {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": tuple(meta.shape),
        },
    )
    return buf.getvalue()


def write_npz_dtypes(zf: zipfile.ZipFile, records: Sequence[RecordMeta]) -> None:
    """Record the dtypes the .npy headers cannot (bfloat16 is written as '<V2'), as JSON for
    `beam_v1.variables.read.read_variables`: in the zip comment, or in a member of its own if
    too long."""
    lost = {m.name: m.dtype for m in records if encoding.npy_loses_dtype(m.dtype)}
    if not lost:
        return
    note = json.dumps({encoding.NPZ_DTYPES_KEY: lost}, sort_keys=True).encode("utf-8")
    if len(note) <= 0xFFFF:
        zf.comment = note
    else:
        zf.writestr(encoding.NPZ_DTYPES_MEMBER, note)


def _concat_npz(out, parts: Sequence[PartInfo]) -> None:
    """Each variable's member copied from the part holding it whole, or its slices joined
    from the runs holding them, in slice order; one copy chunk in memory at a time."""
    runs = [(part, run) for part in parts for run in part.runs]
    metas = {}
    for part in parts:
        for meta in part.records:
            metas.setdefault(meta.name, meta)
    order = sorted(metas.values(), key=lambda m: (m.order, m.name))
    zips, files = {}, []
    try:
        for part in parts:
            files.append(open_input(part.path))
            zips[part.path] = zipfile.ZipFile(files[-1])
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            write_npz_dtypes(zf, order)
            for meta in order:
                mine = sorted(
                    ((p, r) for p, r in runs if r.name == meta.name), key=lambda x: x[1].first
                )
                whole = [(p, r) for p, r in mine if r.complete]
                with zf.open(meta.name + ".npy", "w", force_zip64=True) as dst:
                    if whole:
                        part, run = whole[0]
                        with zips[part.path].open(run.member) as src:
                            _copy(src, dst)
                        continue
                    dst.write(npy_header(meta))
                    for part, run in mine:
                        with zips[part.path].open(run.member) as src:
                            src.read(run.header_bytes)
                            _copy(src, dst)
    finally:
        for z in zips.values():
            z.close()
        for f in files:
            f.close()


def _copy(src, dst) -> None:
    while chunk := src.read(_COPY_CHUNK):
        dst.write(chunk)


# -------------------------------------------------------------------- finalize


def check_complete(model: str, parts: Sequence[PartInfo]) -> None:
    """Every slice of every variable is in exactly one part, once."""
    seen: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for part in parts:
        for meta in part.records:
            seen.setdefault(meta.name, []).append(meta.slice_index)
            counts[meta.name] = meta.num_slices
    for name, indexes in seen.items():
        if sorted(indexes) != list(range(counts[name])):
            raise ModelFileError(
                f"Model {model}: variable {name!r} has slices {sorted(indexes)} of {counts[name]}."
            )


def _self_contained(part: PartInfo) -> bool:
    if part.fmt == "parquet":
        return True
    return all(run.complete for run in part.runs)


def finalize(final: str, parts: Sequence[PartInfo]) -> str:
    """Make the model's file `final` from its parts, then delete the parts.

    One part holding the whole model (checked) is renamed into place; several are joined into
    a temporary file next to `final`, renamed when complete. Returns how: `renamed` or
    `joined`."""
    if not parts:
        raise ValueError("no parts")
    model = parts[0].model
    parts = sorted(parts, key=lambda p: min((m.order, m.slice_index) for m in p.records))
    try:
        check_complete(model, parts)
        if len(parts) == 1 and _self_contained(parts[0]):
            _rename(parts[0].path, final)
            return "renamed"
        temp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with create_output(temp, arrow=parts[0].fmt == "parquet") as out:
                if parts[0].fmt == "parquet":
                    _concat_parquet(out, parts)
                else:
                    _concat_npz(out, parts)
            _rename(temp, final)
        except BaseException:
            delete_files([temp])
            raise
        return "joined"
    finally:
        delete_files([p.path for p in parts])
