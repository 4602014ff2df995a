"""TFRecord files of serialized tf.Example: reading records, decoding them to Arrow columns."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressedFile, CompressionTypes

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
    from tensorflow.core.example import example_pb2

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
        leaf = {"float32": pa.float32(), "int64": pa.int64(), "string": pa.binary()}[dtype]
        if dtype == "float32":
            values = [None if v is None else [float(np.float32(x)) for x in v] for v in values]
        if scalar:
            columns[key] = pa.array([None if v is None else v[0] for v in values], leaf)
        else:
            columns[key] = pa.array(values, pa.list_(leaf))
    return pa.table(columns) if columns else pa.table({"_": pa.nulls(len(rows))}).drop(["_"])



# ---------------------------------------------------------------------- Beam route

SERIALIZED_COLUMN = "serialized"


def records_table(records: list[bytes], spec=None) -> pa.Table:
    """Arrow table of one batch of records: `serialized` (binary), plus, with an ExampleSpec,
    one list column per feature decoded from the examples (kept columns in the output)."""
    table = pa.table({SERIALIZED_COLUMN: pa.array(records, pa.binary())})
    if spec is not None:
        decoded = decode_examples(
            records, {k: f.dtype for k, f in spec.features.items()}, as_lists=True
        )
        for name in decoded.column_names:
            table = table.append_column(name, decoded.column(name))
    return table


def _records_schema(spec) -> pa.Schema:
    fields = [pa.field(SERIALIZED_COLUMN, pa.binary())]
    if spec is not None:
        leaf = {"float32": pa.float32(), "int64": pa.int64(), "string": pa.binary()}
        fields += [pa.field(k, pa.list_(leaf[f.dtype])) for k, f in spec.features.items()]
    return pa.schema(fields)


class ScoreTFRecord(beam.PTransform):
    """Read TFRecord files of serialized tf.Example -> score -> write Parquet (+ dead letter).

    The serialized examples feed the signature's string input as they are (the graph parses
    them); with `decode_features=True` the examples' features are also written, decoded, as
    kept columns (one list column per feature of the signature's spec). `compression`: 'auto'
    (default: each file's first bytes tell uncompressed, GZIP or ZLIB, whatever its name), or
    'none' | 'gzip' | 'zlib' (TensorFlow's '', 'GZIP', 'ZLIB') as `tf.data.TFRecordDataset`'s
    `compression_type`; see `read_records`.
    """

    def __init__(
        self,
        model: str,
        input_pattern: str,
        output_prefix,
        *,
        signature: str | None = None,
        tags=None,
        decode_features: bool = False,
        compression: str | None = "auto",
        **options,
    ):
        super().__init__()
        from beam_v1.scoring import columns, preflight
        from beam_v1.scoring.options import freeze_list, sort_options
        from beam_v1.scoring.plan import build_plan

        self.model = str(model)
        self.input_pattern = input_pattern
        self.load, scoring, self.output = sort_options(options, output=output_prefix)
        self.output_prefix = self.output.prefix
        self.dead_letter_prefix = self.output.dead_letter_prefix
        self.compression = compression_name(compression)
        if scoring.column_map:
            raise BeamV1Error("--map does not apply to TFRecord input: the records feed the "
                              "signature's serialized-example input.")
        self.tags = freeze_list(tags)
        prepared = preflight.check_model(self.model, self.tags, signature, self.load)
        local, sig = prepared.local_dir, prepared.signature()
        self.signature = sig.key
        specs = prepared.example_specs(sig.key)
        if len(specs) != 1:
            raise BeamV1Error(
                f"Signature {sig.key!r} has {len(specs)} serialized tf.Example inputs; TFRecord "
                "input needs exactly one."
            )
        (self.input_key, spec), = specs.items()
        self.spec = spec if decode_features else None
        self.input_schema = _records_schema(self.spec)
        self.outputs = scoring.outputs
        keep = [n for n in self.input_schema.names if n != SERIALIZED_COLUMN]
        if scoring.keep_columns is not None:
            unknown = sorted(set(scoring.keep_columns) - set(keep))
            if unknown:
                raise BeamV1Error(f"--keep-columns {unknown}: TFRecord input has the columns "
                                  f"{keep} (features of the spec, with decode_features).")
            keep = list(scoring.keep_columns)
        self.keep_columns = tuple(keep)
        self.scoring = scoring.replace(
            keep_columns=self.keep_columns, column_map={SERIALIZED_COLUMN: self.input_key}
        )
        self.plan = build_plan(prepared, sig, self.input_schema, self.scoring)
        self.output_schema = self.plan.output_schema(self.input_schema)
        self.failed_schema = columns.failed_schema(self.input_schema)
        self.checked = preflight.Checked(  # what `beam-v1 score`'s summary reads
            model_dir=local, signature=sig, plan=self.plan, input_schema=self.input_schema,
            output_schema=self.output_schema, failed_schema=self.failed_schema,
            input_files=preflight.match_files(input_pattern), output_shapes={},
        )

    def expand(self, pbegin):
        from apache_beam.io import fileio

        from beam_v1.scoring.transforms import RunV1Inference, write_outputs

        spec, compression = self.spec, self.compression
        # one file per element; `read_records` verifies both checksums of every record and
        # names the file, record and offset of a corrupt one
        scored = (
            pbegin
            | "Match" >> fileio.MatchFiles(self.input_pattern)
            | "Spread" >> beam.Reshuffle()
            | "ReadTFRecord" >> beam.FlatMap(lambda m: read_records(m.path, compression))
            | "Batch" >> beam.BatchElements(
                min_batch_size=1, max_batch_size=self.scoring.batch_size
            )
            | "ToArrow" >> beam.Map(lambda records: records_table(list(records), spec))
            | "Infer" >> RunV1Inference(
                self.model, self.signature, self.tags, load=self.load, scoring=self.scoring,
                checked=self.checked,
            )
        )
        return write_outputs(scored, self.checked, self.output)
