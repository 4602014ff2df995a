"""TFRecord files of serialized tf.Example: reading records, decoding them to Arrow tables.

No scoring here: `beam_v1.scoring.sources.TFRecordSource` reads through these functions.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressedFile, CompressionTypes

from beam_v1 import dtypes
from beam_v1.errors import BeamV1Error
from beam_v1.io import files
from beam_v1.io.checksums import masked_crc32c

COMPRESSIONS = ("auto", "none", "gzip", "zlib")
_ALIASES = {"": "none", "uncompressed": "none", "gz": "gzip"}
_BEAM_TYPES = {"gzip": CompressionTypes.GZIP, "zlib": CompressionTypes.DEFLATE}
_READ_SIZE = 1 << 16  # compressed bytes per inflate step: bounds what one step can expand to


def compression_name(compression: str | None) -> str:
    """'auto' | 'none' | 'gzip' | 'zlib' from a flag: TensorFlow's names ('', 'GZIP', 'ZLIB')
    and None (= 'auto') are accepted, in any case."""
    name = "auto" if compression is None else compression.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in COMPRESSIONS:
        raise BeamV1Error(f"TFRecord compression {compression!r}: use one of {list(COMPRESSIONS)} "
                          "(or TensorFlow's '', 'GZIP', 'ZLIB').")
    return name


def sniff_compression(head: bytes) -> str | None:
    """The compression a TFRecord file's first bytes show: 'none' when they are a record
    header whose length checksum holds (or the file is empty), 'gzip' for gzip's magic number,
    'zlib' for a zlib stream header (RFC 1950: deflate, header checksum a multiple of 31);
    None when they are none of these."""
    if not head or (
        len(head) >= 12 and masked_crc32c(head[:8]) == struct.unpack("<I", head[8:12])[0]
    ):
        return "none"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (
        (head[0] << 8 | head[1]) % 31 == 0
    ):
        return "zlib"
    return None


def _open_records(path: str, compression: str):
    """(the file's decompressed byte stream, the compression read)."""
    raw = files.open_input(path)
    try:
        head = raw.read(12)
        if raw.seekable():
            raw.seek(0)
        else:
            raw.close()
            raw = files.open_input(path)
        found = sniff_compression(head)
        if compression == "auto":
            if found is None:
                raise BeamV1Error(
                    f"{path}: not a TFRecord file, or its first record is damaged: its first "
                    "bytes are neither a record header whose length checksum holds nor the "
                    "start of a GZIP or ZLIB stream (compression='auto' detects those three)")
            compression = found
        elif found is not None and found != compression:
            raise BeamV1Error(f"{path}: compression {compression!r} was asked for, but the file "
                              f"starts like a {found!r} TFRecord file")
        if compression == "none":
            return raw, compression
        return CompressedFile(raw, _BEAM_TYPES[compression], read_size=_READ_SIZE), compression
    except BaseException:
        raw.close()
        raise


def _read(stream, size: int, path: str, compression: str) -> bytes:
    try:
        return stream.read(size)
    except (zlib.error, EOFError) as e:
        raise BeamV1Error(f"{path}: corrupt {compression.upper()} stream: {e}") from e


def read_records(path: str, compression: str | None = "auto") -> Iterator[bytes]:
    """The records of one TFRecord file (length, masked crc, data, masked crc framing). Both
    checksums are verified, as TensorFlow's reader does; a truncated or corrupt file is an
    error naming the record and its offset (in the decompressed stream).

    `compression`: 'none', 'gzip' or 'zlib' as TensorFlow's `compression_type` ('', 'GZIP',
    'ZLIB') or 'auto' (default): told from the file's first bytes, whatever its name (a
    record header, gzip's magic number, or a zlib header). A file whose first bytes
    contradict an explicit compression is an error naming both."""
    stream, compression = _open_records(path, compression_name(compression))
    with stream:
        offset = 0
        index = 0
        while True:
            header = _read(stream, 12, path, compression)
            if not header:
                return
            where = f"{path}: record {index} at byte {offset}"
            if compression != "none":
                where += f" of its {compression.upper()}-decompressed stream"
            if len(header) < 12:
                raise BeamV1Error(f"{where}: truncated TFRecord header")
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise BeamV1Error(f"{where}: corrupt TFRecord: the length's checksum does "
                                  "not match, so the file cannot be read on from here")
            (length,) = struct.unpack("<Q", header[:8])
            data = _read(stream, length + 4, path, compression)
            if len(data) < length + 4:
                raise BeamV1Error(f"{where}: truncated TFRecord ({length} bytes announced)")
            record = data[:length]
            (data_crc,) = struct.unpack("<I", data[length:])
            if masked_crc32c(record) != data_crc:
                raise BeamV1Error(f"{where}: corrupt TFRecord: the data's checksum does not "
                                  f"match its {length} bytes")
            yield record
            offset += 16 + length
            index += 1


def decode_examples(
    records: Iterable[bytes], features: dict[str, str] | None = None, as_lists: bool = False
) -> pa.Table:
    """Arrow table of tf.Example records: one column per feature. A feature whose every present
    value list has one item becomes a scalar column, else a list column; absent or empty-kind
    features are null. `features` ({key: 'float32'|'int64'|'string'}) fixes keys and types;
    by default every key seen, typed by its list kind."""
    from tensorflow.core.example import example_pb2  # deferred: TensorFlow start-up

    rows = []
    kinds: dict[str, str] = {}
    for record in records:
        example = example_pb2.Example.FromString(record)
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            if kind is None:
                continue
            kinds.setdefault(key, kind)
            row[key] = list(getattr(feature, kind).value)
        rows.append(row)
    want = features or {
        k: {"float_list": "float32", "int64_list": "int64", "bytes_list": "string"}[v]
        for k, v in sorted(kinds.items())
    }
    columns = {}
    for key, dtype in want.items():
        values = [row.get(key) for row in rows]
        scalar = not as_lists and all(v is None or len(v) == 1 for v in values)
        leaf = dtypes.arrow_type(dtype)
        if dtype == "float32":
            values = [None if v is None else [float(np.float32(x)) for x in v] for v in values]
        if scalar:
            columns[key] = pa.array([None if v is None else v[0] for v in values], leaf)
        else:
            columns[key] = pa.array(values, pa.list_(leaf))
    return pa.table(columns) if columns else pa.table({"_": pa.nulls(len(rows))}).drop(["_"])



# ---------------------------------------------------------------------- Arrow tables

SERIALIZED_COLUMN = "serialized"


def records_table(records: list[bytes], features: Mapping[str, str] | None = None) -> pa.Table:
    """Arrow table of one batch of records: `serialized` (binary), plus, given `features`
    ({key: 'float32'|'int64'|'string'}), one list column per feature decoded from them."""
    table = pa.table({SERIALIZED_COLUMN: pa.array(records, pa.binary())})
    if features:
        decoded = decode_examples(records, dict(features), as_lists=True)
        for name in decoded.column_names:
            table = table.append_column(name, decoded.column(name))
    return table


def records_schema(features: Mapping[str, str] | None = None) -> pa.Schema:
    """The schema of `records_table(..., features)`."""
    fields = [pa.field(SERIALIZED_COLUMN, pa.binary())]
    fields += [
        pa.field(k, pa.list_(dtypes.arrow_type(dtype))) for k, dtype in (features or {}).items()
    ]
    return pa.schema(fields)
