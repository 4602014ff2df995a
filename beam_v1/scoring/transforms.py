"""Beam PTransforms: RunV1Inference (Arrow tables in, scored/failed tables out), and Score
(an Arrow source in, Parquet files out) with its wrappers ScoreParquet and ScoreTFRecord."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils import shared

from beam_v1.errors import SchemaError
from beam_v1.io.parquet_write import WriteParquetTables
from beam_v1.model import threads
from beam_v1.model.options import LoadOptions
from beam_v1.runs import display_items
from beam_v1.scoring import dofn, preflight, sources
from beam_v1.scoring.dofn import FAILED, SCORED, ScoringConfig
from beam_v1.scoring.options import (
    OutputOptions,
    ScoringOptions,
    freeze_list,
    sort_options,
)
from beam_v1.scoring.plan import Checked, build_plan
from beam_v1.text import first_line


class ArrowTableCoder(beam.coders.Coder):
    """Arrow IPC for tables that cross a stage, and a cheap size estimate (`nbytes`)."""

    def encode(self, value):
        if isinstance(value, pa.RecordBatch):
            value = pa.Table.from_batches([value])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded):
        return pa.ipc.open_stream(encoded).read_all()

    def estimate_size(self, value):
        return value.nbytes

    def is_deterministic(self):
        return False

    def to_type_hint(self):
        return pa.Table


beam.coders.registry.register_coder(pa.Table, ArrowTableCoder)


class RunV1Inference(beam.PTransform):
    """Score a PCollection of `pyarrow.Table`/`RecordBatch` with a TF1 SavedModel.

    Returns a DoOutputsTuple: `result.scored` (tables of kept columns + one column per
    output) and `result.failed` (tables of every input column + `error`). Rows in =
    rows scored + rows failed. The model loads once per worker process, in `setup()`.

    Args:
      model: the SavedModel's folder (any filesystem Beam knows).
      signature, tags: which signature of which meta graph (None: the defaults).
      load: how the model is loaded (`LoadOptions`).
      scoring: how batches are cut, fed and written back (`ScoringOptions`: batch size and
        bytes, outputs, keep columns, column map, tf.Example feed).
      schema: the input's Arrow schema, if known: the plan is then checked now, at
        construction, instead of on the first batch a worker sees.
      checked: what `preflight.check_scoring` already found for this model and input, so
        the model is not checked twice.
      **options: the fields of LoadOptions and ScoringOptions as flat keywords
        (`batch_size=65536`, `intra_op_threads=2`, `model_copies=1`); they override
        `load` / `scoring`.

    Raises:
      TypeError: an unknown option, naming the known ones; ValueError: a bad value;
      BeamV1Error: the model, signature or (with `schema`) the plan does not check.
    """

    def __init__(
        self,
        model: str,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        *,
        load: LoadOptions | None = None,
        scoring: ScoringOptions | None = None,
        schema: pa.Schema | None = None,
        checked: Checked | None = None,
        **options: Any,
    ):
        super().__init__()
        load, scoring, _ = sort_options(options, load=load, scoring=scoring)
        self.config = ScoringConfig(
            model=str(model), tags=freeze_list(tags), signature=signature,
            load=load, scoring=scoring,
            share_tag=uuid.uuid4().hex if scoring.model_copies else "",
        )
        self._shared = shared.Shared()
        if checked is not None:
            self.config = dataclasses.replace(self.config, signature=checked.signature.key)
            return
        prepared = preflight.check_model(self.config.model, self.config.tags, signature, load)
        sig = prepared.signature()
        self.config = dataclasses.replace(self.config, signature=sig.key)
        if schema is not None:
            build_plan(prepared, sig, schema, scoring)  # raises what a worker would

    def expand(self, tables):

        config = dataclasses.replace(  # the launcher's options know the processes per machine
            self.config,
            processes_per_machine=threads.processes_from_options(tables.pipeline.options),
        )
        return tables | "Score" >> beam.ParDo(
            dofn.RunV1InferenceDoFn(config, self._shared)
        ).with_output_types(pa.Table).with_outputs(FAILED, main=SCORED)

    def display_data(self) -> dict[str, Any]:
        c, o = self.config, self.config.scoring
        return display_items(
            model=c.model, signature=c.signature, tags=c.tags, outputs=o.outputs,
            keep_columns=o.keep_columns, column_map=o.column_map, batch_size=o.batch_size,
            max_batch_bytes=o.max_batch_bytes, example_feed=o.example_feed,
        )


class Score(beam.PTransform):
    """Read an Arrow source -> RunV1Inference -> write Parquet and a dead-letter Parquet.

    Output files are `PREFIX-SSSSS-of-NNNNN.parquet`; failed rows (and the source's drifted
    rows) go to `DEAD_LETTER_PREFIX-SSSSS-of-NNNNN.parquet` (default `PREFIX-failed`). All
    checks that need no worker (model, tags, signature, outputs, the source's schema) run at
    construction (`preflight.check_source`), so a bad argument fails before the pipeline
    starts; the step names say the source ("ReadParquet", "ReadTFRecord").

    Args:
      source: a `sources.ParquetSource` or `sources.TFRecordSource` (any `ArrowSource`).
      model: the SavedModel's folder (any filesystem Beam knows).
      output: the output prefix, or an `OutputOptions`.
      signature, tags: which signature of which meta graph (None: the defaults).
      **options: the fields of LoadOptions, ScoringOptions and OutputOptions as flat
        keywords, or typed as `load=` and `scoring=`.

    Attributes (after construction): `checked` (what the checks found), `output`,
    `output_prefix`, `dead_letter_prefix`, `model`, `input_pattern`.
    """

    def __init__(
        self,
        source: sources.ArrowSource,
        model: str,
        output: str | OutputOptions,
        *,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        **options: Any,
    ):
        super().__init__()
        self.source = source
        self.model = str(model)
        self.input_pattern = source.pattern
        self.load, scoring, self.output = sort_options(options, output=output)
        self.output_prefix = self.output.prefix
        self.dead_letter_prefix = self.output.dead_letter_prefix
        self.tags = freeze_list(tags)
        self.checked = preflight.check_source(
            self.model, source, tags=self.tags, signature=signature, scoring=scoring,
            load=self.load,
        )
        self.scoring = self.checked.scoring

    def display_data(self) -> dict[str, Any]:
        o = self.scoring
        return display_items(
            model=self.model, source=self.source.label, input=self.input_pattern,
            **self.source.display(), output_prefix=self.output_prefix,
            dead_letter_prefix=self.dead_letter_prefix, signature=self.checked.signature.key,
            batch_size=o.batch_size, max_batch_bytes=o.max_batch_bytes,
            num_shards=self.output.num_shards or None, codec=self.output.codec,
        )

    def expand(self, pbegin):
        checked = self.checked
        read = pbegin | f"Read{self.source.label}" >> self.source.read(checked, self.scoring)
        scored = read["tables"] | "Infer" >> RunV1Inference(
            self.model, checked.signature.key, self.tags, load=self.load,
            scoring=self.scoring, checked=checked,
        )
        return write_outputs(scored, checked, self.output, drifted=read.get("drifted"))


class ScoreParquet(Score):
    """`Score` over Parquet files matching `input_pattern` (`sources.ParquetSource`).

    The first file's schema is the run's: a later file's columns are cast to it where that
    is safe, and the rows of a file that cannot be (a column that cannot feed its input, a
    fed column missing) go to the dead letter with the reason (`schema_drift`). With
    `strict_schema=True` every file's footer is checked now instead, and such a file
    fails the transform before the pipeline starts.

    `output_prefix` is a prefix or an `OutputOptions`; `**options` are the fields of
    LoadOptions, ScoringOptions and OutputOptions as flat keywords (`dead_letter_prefix`,
    `num_shards`, `codec`, `batch_size`, ...), or typed as `load=` and `scoring=`.
    """

    def __init__(
        self,
        model: str,
        input_pattern: str,
        output_prefix: str | OutputOptions,
        *,
        strict_schema: bool = False,
        **options: Any,
    ):
        source = sources.ParquetSource(input_pattern, strict_schema=strict_schema)
        super().__init__(source, model, output_prefix, **options)


class ScoreTFRecord(Score):
    """`Score` over TFRecord files of serialized tf.Example (`sources.TFRecordSource`).

    The serialized examples feed the signature's string input as they are (the graph parses
    them); with `decode_features=True` the examples' features are also written, decoded, as
    kept columns (one list column per feature of the signature's spec). `compression`: 'auto'
    (default: each file's first bytes tell uncompressed, GZIP or ZLIB, whatever its name), or
    'none' | 'gzip' | 'zlib' (TensorFlow's '', 'GZIP', 'ZLIB') as `tf.data.TFRecordDataset`'s
    `compression_type`; see `beam_v1.io.tfrecord.read_records`. Other keywords as `Score`.
    """

    def __init__(
        self,
        model: str,
        input_pattern: str,
        output_prefix: str | OutputOptions,
        *,
        decode_features: bool = False,
        compression: str | None = "auto",
        **options: Any,
    ):
        source = sources.TFRecordSource(
            input_pattern, compression=compression, decode_features=decode_features
        )
        super().__init__(source, model, output_prefix, **options)


def write_outputs(scored, checked: Checked, output: OutputOptions, drifted=None) -> dict:
    """RunV1Inference's outputs -> scored and dead-letter Parquet files, with the schemas
    the checks before the run found. `drifted`: more dead-letter tables (rows of input files
    whose schema drifted), written with the failed rows."""
    output_schema, failed_schema = checked.output_schema, checked.failed_schema
    # every table must match the one schema each sink writes (the first file's); ScoreParquet's
    # reader has cast each file's tables to it already (schema_drift), other inputs may not
    written = scored[SCORED] | "WriteScored" >> WriteParquetTables(
        output.prefix, output_schema, codec=output.codec, num_shards=output.num_shards,
        conform=functools.partial(conform, schema=output_schema, what="scored"),
    )
    failed_tables = scored[FAILED]
    if drifted is not None:
        failed_tables = (failed_tables, drifted) | "AllFailed" >> beam.Flatten()
    failed = failed_tables | "WriteFailed" >> WriteParquetTables(
        output.dead_letter_prefix, failed_schema, codec=output.codec,
        conform=functools.partial(conform, schema=failed_schema, what="dead-letter"),
    )
    return {"scored": written, "failed": failed}


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """`table` with the columns of `schema`, in its order and types (safe casts only)."""
    if table.schema.equals(schema):
        return table

    if sorted(table.column_names) != sorted(schema.names):
        raise SchemaError(
            f"An input file's {what} rows have columns {table.column_names} where the first "
            f"input file's have {schema.names}: every input file needs the same columns."
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:

        def describe(s: pa.Schema) -> str:
            return ", ".join(f"{f.name} ({f.type})" for f in s)

        raise SchemaError(
            f"An input file's {what} rows ({describe(table.schema)}) do not cast safely to the "
            f"first input file's ({describe(schema)}): {first_line(e)}"
        ) from e
