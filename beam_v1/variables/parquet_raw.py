"""A small Parquet writer for row groups whose binary values are big (a variable dump).

pyarrow's writer copies a binary value twice in memory (into the encoder, then into the page)
before the file write, from freshly allocated buffers: for 64 MiB weight slices that is most
of a dump's time. This writer encodes the small columns itself and hands every big binary value
to `write_bytes` straight from its source, so a slice mapped from a checkpoint shard is copied
by the kernel (`copy_file_range`) and any other array is written from its own memory.

Supported Arrow types: string, binary, large_binary, bool, int32, int64, float64, and lists
of int64 / float64 (3-level LIST), all nullable. Data pages v1, PLAIN values, RLE/bit-packed
levels, no compression, no statistics; the Arrow schema is stored as pyarrow stores it
(`ARROW:schema`), so pyarrow reads the file back with exactly `schema`. No Beam here.
"""

from __future__ import annotations

import base64
import dataclasses
import struct
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa

from beam_v1.io import varint

MAGIC = b"PAR1"
BIG_VALUE = 1 << 20  # binary values above this are written from their own buffer, not copied

# parquet.thrift enums
_BOOLEAN, _INT32, _INT64, _DOUBLE, _BYTE_ARRAY = 0, 1, 2, 5, 6
_OPTIONAL, _REPEATED = 1, 2
_UTF8, _LIST = 0, 3
_PLAIN, _RLE = 0, 3
_DATA_PAGE = 0

# thrift compact protocol types
_T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 5, 6, 8, 9, 12


# ---------------------------------------------------------------- thrift compact


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


class _Struct:
    """A thrift struct in the compact protocol: fields added in increasing id order."""

    def __init__(self):
        self._out = bytearray()
        self._last = 0

    def _header(self, fid: int, ttype: int) -> None:
        delta = fid - self._last
        if 0 < delta <= 15:
            self._out.append((delta << 4) | ttype)
        else:
            self._out.append(ttype)
            self._out += varint.encode(_zigzag(fid))
        self._last = fid

    def i32(self, fid: int, value: int) -> _Struct:
        self._header(fid, _T_I32)
        self._out += varint.encode(_zigzag(value))
        return self

    def int64(self, fid: int, value: int) -> _Struct:
        self._header(fid, _T_I64)
        self._out += varint.encode(_zigzag(value))
        return self

    def binary(self, fid: int, value: bytes | str) -> _Struct:
        data = value.encode("utf-8") if isinstance(value, str) else value
        self._header(fid, _T_BINARY)
        self._out += varint.encode(len(data)) + data
        return self

    def struct(self, fid: int, value: _Struct) -> _Struct:
        self._header(fid, _T_STRUCT)
        self._out += value.bytes()
        return self

    def list(self, fid: int, etype: int, items: Sequence) -> _Struct:
        self._header(fid, _T_LIST)
        n = len(items)
        self._out.append((n << 4) | etype if n < 15 else 0xF0 | etype)
        if n >= 15:
            self._out += varint.encode(n)
        for item in items:
            if etype == _T_STRUCT:
                self._out += item.bytes()
            elif etype == _T_BINARY:
                data = item.encode("utf-8") if isinstance(item, str) else item
                self._out += varint.encode(len(data)) + data
            else:  # i32
                self._out += varint.encode(_zigzag(item))
        return self

    def bytes(self) -> bytes:
        return bytes(self._out) + b"\x00"


# ----------------------------------------------------------------------- schema


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One column of the file: an Arrow field and how it maps to Parquet."""

    name: str
    physical: int
    is_list: bool
    string: bool
    numpy: str | None  # little-endian numpy dtype of fixed-width values


def _leaf(field) -> _Leaf:

    t = field.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    if is_list:
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _Leaf(field.name, _BYTE_ARRAY, is_list, True, None)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _Leaf(field.name, _BYTE_ARRAY, is_list, False, None)
    for check, physical, dtype in (
        (pa.types.is_boolean, _BOOLEAN, None),
        (pa.types.is_int32, _INT32, "<i4"),
        (pa.types.is_int64, _INT64, "<i8"),
        (pa.types.is_float64, _DOUBLE, "<f8"),
    ):
        if check(t) and not (is_list and physical == _BOOLEAN):
            return _Leaf(field.name, physical, is_list, False, dtype)
    raise TypeError(f"parquet_raw cannot write column {field.name!r} of type {field.type}")


def _primitive(leaf: _Leaf, name: str) -> _Struct:
    s = _Struct().i32(1, leaf.physical).i32(3, _OPTIONAL).binary(4, name)
    if leaf.string:
        s.i32(6, _UTF8).struct(10, _Struct().struct(1, _Struct()))
    return s


def _schema_elements(leaves: Sequence[_Leaf]) -> list[_Struct]:
    elements = [_Struct().binary(4, "schema").i32(5, len(leaves))]
    for leaf in leaves:
        if leaf.is_list:
            elements.append(
                _Struct()
                .i32(3, _OPTIONAL)
                .binary(4, leaf.name)
                .i32(5, 1)
                .i32(6, _LIST)
                .struct(10, _Struct().struct(3, _Struct()))
            )
            elements.append(_Struct().i32(3, _REPEATED).binary(4, "list").i32(5, 1))
            elements.append(_primitive(leaf, "element"))
        else:
            elements.append(_primitive(leaf, leaf.name))
    return elements


# ------------------------------------------------------------------------ pages


def _levels(levels: np.ndarray, max_level: int) -> bytes:
    """RLE/bit-packed hybrid levels as one bit-packed run, with their 4-byte length."""
    width = max_level.bit_length()
    groups = -(-len(levels) // 8)
    padded = np.zeros(groups * 8, np.uint8)
    padded[: len(levels)] = levels
    bits = ((padded[:, None] >> np.arange(width, dtype=np.uint8)) & 1).astype(np.uint8)
    packed = np.packbits(bits.reshape(-1), bitorder="little").tobytes()
    body = varint.encode((groups << 1) | 1) + packed
    return struct.pack("<i", len(body)) + body


def _plain(leaf: _Leaf, values) -> bytes:
    """PLAIN values of a fixed-width or boolean column."""
    if leaf.physical == _BOOLEAN:
        return np.packbits(np.asarray(values, bool), bitorder="little").tobytes()
    return np.asarray(values, dtype=leaf.numpy).tobytes()


def as_bytes(value) -> memoryview | bytes:
    """A str, bytes-like or array as bytes, without copying an array or a buffer."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray):
        # as uint8 first: dtypes without a buffer format (bfloat16) cannot be memoryviews
        return memoryview(np.ascontiguousarray(value).reshape(-1).view(np.uint8))
    return memoryview(value).cast("B")


def _byte_array_pieces(values: list) -> list:
    """The PLAIN byte arrays as a list alternating small `bytes` and big values (as given)."""
    pieces: list = []
    buf = bytearray()
    for value in values:
        data = as_bytes(value)
        buf += struct.pack("<I", len(data))
        if len(data) > BIG_VALUE:
            pieces.append(bytes(buf))
            pieces.append(value)
            buf = bytearray()
        else:
            buf += data
    pieces.append(bytes(buf))
    return pieces


def _list_levels(leaf: _Leaf, column: Sequence) -> tuple[int, bytes, Sequence]:
    """(level entries, repetition + definition levels, non-null items) of a list column: one
    entry per item, or one for a null or empty list; per row, not per item, in Python."""
    rows = list(column)
    lengths = np.fromiter((0 if r is None else len(r) for r in rows), np.int64, len(rows))
    slots = np.maximum(lengths, 1)
    starts = np.cumsum(slots) - slots
    reps = np.ones(int(slots.sum()), np.uint8)
    reps[starts] = 0
    defs = np.full(len(reps), 3, np.uint8)
    defs[starts[lengths == 0]] = 1
    defs[starts[np.fromiter((r is None for r in rows), bool, len(rows))]] = 0
    chunks = []
    for start, row in zip(starts, rows):
        if row is None or len(row) == 0:
            continue
        row = list(row)
        if None in row:
            nulls = np.fromiter((x is None for x in row), bool, len(row))
            defs[start : start + len(row)][nulls] = 2
            row = [x for x in row if x is not None]
        chunks.append(row)
    if leaf.numpy is not None:
        leaves = np.concatenate([np.asarray(r, leaf.numpy) for r in chunks] or [[]])
    else:
        leaves = [x for r in chunks for x in r]
    return len(defs), _levels(reps, 1) + _levels(defs, 3), leaves


def _column_page(leaf: _Leaf, column: Sequence) -> tuple[int, list]:
    """(number of level entries, page body pieces) of one column chunk."""
    pieces: list
    if leaf.is_list:
        count, head, leaves = _list_levels(leaf, column)
    else:
        defs = np.fromiter((v is not None for v in column), np.uint8, len(column))
        leaves = [v for v in column if v is not None]
        head = _levels(defs, 1)
        count = len(column)
    if leaf.physical == _BYTE_ARRAY:
        pieces = _byte_array_pieces(leaves)
    else:
        pieces = [_plain(leaf, leaves)]
    pieces[0] = head + pieces[0]
    return count, pieces


def _size(piece) -> int:
    return len(piece) if isinstance(piece, bytes) else len(as_bytes(piece))


# ----------------------------------------------------------------------- writer


class ParquetRawWriter:
    """Writes `schema` row groups to `file` (a binary file object; only `write` is used).

    `write_bytes(file, value)` writes a big binary value; the default writes `as_bytes(value)`.
    Give `beam_v1.variables.files.write_bytes` to have mapped checkpoint ranges kernel-copied."""

    def __init__(self, file, schema, write_bytes: Callable | None = None, created_by: str = ""):
        self._file = file
        self._schema = schema
        self._leaves = [_leaf(f) for f in schema]
        self._write_bytes = write_bytes or (lambda f, v: f.write(as_bytes(v)))
        self._created_by = created_by or "beam-v1 parquet_raw"
        self._row_groups: list[_Struct] = []
        self._rows = 0
        self._closed = False
        self._file.write(MAGIC)
        self._pos = len(MAGIC)

    def write_rows(self, columns: dict[str, Sequence]) -> None:
        """One row group: a list of Python values (or big byte buffers) per column."""
        counts = {len(columns[leaf.name]) for leaf in self._leaves}
        if len(counts) != 1:
            raise ValueError(f"columns of unequal lengths: {sorted(counts)}")
        num_rows = counts.pop()
        if not num_rows:
            return
        chunks = []
        start = self._pos
        for leaf in self._leaves:
            count, pieces = _column_page(leaf, columns[leaf.name])
            body = sum(_size(p) for p in pieces)
            if body > 2**31 - 1:
                raise ValueError(
                    f"column {leaf.name!r}: {body} bytes in one row group, above Parquet's "
                    "2 GiB page limit; use smaller slices"
                )
            header = (
                _Struct()
                .i32(1, _DATA_PAGE)
                .i32(2, body)
                .i32(3, body)
                .struct(5, _Struct().i32(1, count).i32(2, _PLAIN).i32(3, _RLE).i32(4, _RLE))
                .bytes()
            )
            offset = self._pos
            self._write(header)
            for piece in pieces:
                if isinstance(piece, bytes):
                    self._write(piece)
                else:
                    n = _size(piece)
                    self._write_bytes(self._file, piece)
                    self._pos += n
            size = len(header) + body
            meta = (
                _Struct()
                .i32(1, leaf.physical)
                .list(2, _T_I32, [_PLAIN, _RLE])
                .list(3, _T_BINARY, [leaf.name, "list", "element"] if leaf.is_list else [leaf.name])
                .i32(4, 0)
                .int64(5, count)
                .int64(6, size)
                .int64(7, size)
                .int64(9, offset)
            )
            chunks.append((_Struct().int64(2, offset).struct(3, meta), size))
        total = sum(size for _, size in chunks)
        self._row_groups.append(
            _Struct()
            .list(1, _T_STRUCT, [c for c, _ in chunks])
            .int64(2, total)
            .int64(3, num_rows)
            .int64(5, start)
            .int64(6, total)
            .i32(7, len(self._row_groups))
        )
        self._rows += num_rows

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._pos += len(data)

    def close(self) -> None:
        """Write the footer (the file object is the caller's to close)."""
        if self._closed:
            return
        self._closed = True
        arrow_schema = base64.b64encode(self._schema.serialize().to_pybytes())
        footer = (
            _Struct()
            .i32(1, 2)
            .list(2, _T_STRUCT, _schema_elements(self._leaves))
            .int64(3, self._rows)
            .list(4, _T_STRUCT, self._row_groups)
            .list(5, _T_STRUCT, [_Struct().binary(1, "ARROW:schema").binary(2, arrow_schema)])
            .binary(6, self._created_by)
            .bytes()
        )
        self._write(footer + struct.pack("<i", len(footer)) + MAGIC)

    def __enter__(self) -> ParquetRawWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
