"""TFRecord files of serialized tf.Example: reading records, decoding them to Arrow columns."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beam_v1.errors import BeamV1Error
from beam_v1.io import files
from beam_v1.io.checksums import masked_crc32c


def is_gzip(path: str, compression: str | None = None) -> bool:
    """Compression from the flag ('gzip' | 'none' | None = detect from the extension)."""
    if compression is not None:
        return compression.lower() in ("gzip", "gz")
    return path.endswith((".gz", ".gzip"))


def read_records(path: str, compression: str | None = None) -> Iterator[bytes]:
    """The records of one TFRecord file (length, masked crc, data, masked crc framing). Both
    checksums are verified, as TensorFlow's reader does; a truncated or corrupt file is an
    error naming the record and its offset."""
    with files.open_input(path) as raw:
        stream = gzip.GzipFile(fileobj=raw) if is_gzip(path, compression) else raw
        offset = 0
        index = 0
        while True:
            header = stream.read(12)
            if not header:
                return
            where = f"{path}: record {index} at byte {offset}"
            if len(header) < 12:
                raise BeamV1Error(f"{where}: truncated TFRecord header")
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise BeamV1Error(f"{where}: corrupt TFRecord: the length's checksum does "
                                  "not match, so the file cannot be read on from here")
            (length,) = struct.unpack("<Q", header[:8])
            data = stream.read(length + 4)
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
    kept columns (one list column per feature of the signature's spec). Compression: from the
    file extension (.gz -> gzip), or `compression='gzip'|'none'`.
    """

    def __init__(
        self,
        model: str,
        input_pattern: str,
        output_prefix: str,
        dead_letter_prefix: str | None = None,
        *,
        signature: str | None = None,
        tags=None,
        outputs=None,
        decode_features: bool = False,
        compression: str | None = None,
        batch_size: int = 65536,
        max_batch_bytes: int | None = None,
        num_shards: int = 0,
        keep_columns=None,
        column_map=None,
        progress_seconds: float | None = None,
        codec: str = "snappy",
        model_copies: int | None = None,
        **load_options,
    ):
        super().__init__()
        from beam_v1.model import examples
        from beam_v1.model import metadata as savedmodel
        from beam_v1.scoring import columns, dofn, preflight

        self.model = str(model)
        self.input_pattern = input_pattern
        self.output_prefix = output_prefix
        self.dead_letter_prefix = dead_letter_prefix or f"{output_prefix}-failed"
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.num_shards = num_shards
        self.compression = compression
        self.load_options = load_options
        self.model_copies = model_copies
        self.progress_seconds = progress_seconds
        self.codec = codec
        if column_map:
            raise BeamV1Error("--map does not apply to TFRecord input: the records feed the "
                              "signature's serialized-example input.")
        self.tags = dofn.freeze_list(tags)
        local, sig, required = preflight.check_model(self.model, self.tags, signature, load_options)
        self.signature = sig.key
        meta_graph = savedmodel.select_meta_graph(savedmodel.read_saved_model(local), self.tags)
        specs = examples.specs_of_signature(meta_graph, sig.key)
        if len(specs) != 1:
            raise BeamV1Error(
                f"Signature {sig.key!r} has {len(specs)} serialized tf.Example inputs; TFRecord "
                "input needs exactly one."
            )
        (self.input_key, spec), = specs.items()
        self.spec = spec if decode_features else None
        self.input_schema = _records_schema(self.spec)
        self.outputs = dofn.freeze_list(outputs)
        keep = [n for n in self.input_schema.names if n != SERIALIZED_COLUMN]
        if keep_columns is not None:
            unknown = sorted(set(dofn.freeze_list(keep_columns)) - set(keep))
            if unknown:
                raise BeamV1Error(f"--keep-columns {unknown}: TFRecord input has the columns "
                                  f"{keep} (features of the spec, with decode_features).")
            keep = list(dofn.freeze_list(keep_columns))
        self.keep_columns = tuple(keep)
        self.plan = columns.make_plan(
            sig, self.input_schema, required_inputs=required,
            column_map={SERIALIZED_COLUMN: self.input_key}, outputs=self.outputs,
            keep_columns=self.keep_columns,
            output_shapes={k: (-1,) for k in columns.unknown_rank_outputs(sig, self.outputs)},
        )
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
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "ToArrow" >> beam.Map(lambda records: records_table(list(records), spec))
            | "Infer" >> RunV1Inference(
                self.model,
                signature=self.signature,
                tags=self.tags,
                outputs=self.outputs,
                keep_columns=self.keep_columns,
                column_map={SERIALIZED_COLUMN: self.input_key},
                batch_size=self.batch_size,
                max_batch_bytes=self.max_batch_bytes,
                progress_seconds=self.progress_seconds,
                checked=self.checked,
                model_copies=self.model_copies,
                **self.load_options,
            )
        )
        return write_outputs(
            scored,
            self.checked,
            output_prefix=self.output_prefix,
            dead_letter_prefix=self.dead_letter_prefix,
            codec=self.codec,
            num_shards=self.num_shards,
        )
