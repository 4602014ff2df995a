"""Beam PTransforms: RunV1Inference (Arrow tables in, scored/failed tables out) and ScoreParquet."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils import shared

from beam_v1.io.parquet_read import DRIFTED, ReadParquetRowGroups
from beam_v1.io.parquet_write import WriteParquetTables
from beam_v1.model.options import LoadOptions
from beam_v1.runs import display_items
from beam_v1.scoring import dofn, preflight
from beam_v1.scoring.dofn import DEFAULT_MAX_BATCH_BYTES, FAILED, SCORED, ScoringConfig

DEFAULT_BATCH_SIZE = 65536
EXAMPLE_FEEDS = ("auto", "serialize")  # tf.Example signatures fed from feature columns


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

    If `schema` (the input's Arrow schema) is given, the plan is checked now, at
    construction, instead of on the first batch a worker sees. `checked` passes on what
    `preflight.check_scoring` already found for this model and input, so the model is not
    checked twice. `example_feed` applies to tf.Example signatures fed from feature columns:
    "auto" feeds the parse op's outputs directly where that is exact, "serialize" always
    builds serialized examples. Batches hold at most `batch_size` rows and `max_batch_bytes`
    Arrow bytes (None: `DEFAULT_MAX_BATCH_BYTES`, 64 MiB); a single larger row runs alone.

    `model_copies=N` (N >= 1) loads N sessions per machine, shared by all its worker
    processes through a proxy (beam_v1.scoring.model_server), instead of one per process
    (the default, 0 or None): for models too big to hold once per process. Each session's
    thread pools are sized to its share of the machine's cores (beam_v1.model.threads);
    the process count comes from the pipeline's options when they state it.
    """

    def __init__(
        self,
        model: str,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        keep_columns: Sequence[str] | str | None = None,
        column_map: Mapping[str, str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        schema: pa.Schema | None = None,
        progress_seconds: float | None = None,
        output_shapes: Mapping[str, tuple[int, ...]] | None = None,
        max_batch_bytes: int | None = None,
        example_feed: str = "auto",
        checked: preflight.Checked | None = None,
        model_copies: int | None = None,
        **load_options: Any,
    ):
        super().__init__()
        if model_copies is not None and model_copies < 0:
            raise ValueError(f"model_copies must be 0 or more, got {model_copies}")
        if max_batch_bytes is not None and max_batch_bytes < 1:
            raise ValueError(f"max_batch_bytes must be positive, got {max_batch_bytes}")
        if example_feed not in EXAMPLE_FEEDS:
            raise ValueError(f"example_feed must be one of {EXAMPLE_FEEDS}, got {example_feed!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        options = LoadOptions.of(**load_options)  # unknown options fail now, not on a worker
        self.config = ScoringConfig(
            model=str(model),
            tags=dofn.freeze_list(tags),
            signature=signature,
            outputs=dofn.freeze_list(outputs),
            keep_columns=dofn.freeze_list(keep_columns),
            column_map=dofn.freeze_mapping(column_map),
            batch_size=batch_size,
            load_options=dofn.freeze_mapping(options.as_kwargs()),
            output_shapes=dofn.freeze_mapping(output_shapes),
            max_batch_bytes=max_batch_bytes or DEFAULT_MAX_BATCH_BYTES,
            example_feed=example_feed,
            model_copies=model_copies or 0,
            share_tag=uuid.uuid4().hex if model_copies else "",
        )
        self._progress_seconds = progress_seconds
        self._shared = shared.Shared()
        if checked is not None:
            self.config = _replace(self.config, signature=checked.signature.key)
            return
        prepared = preflight.check_model(self.config.model, self.config.tags, signature, options)
        sig = prepared.signature()
        self.config = _replace(self.config, signature=sig.key)
        if schema is not None:
            from beam_v1.scoring import columns

            shapes = dict(output_shapes or {})
            for key in columns.unknown_rank_outputs(sig, self.config.outputs):
                shapes.setdefault(key, (-1,))  # workers learn the rank from their first batch
            from beam_v1.model import examples

            spec = examples.example_input_without_column(  # tf.Example fed from feature columns
                prepared.meta_graph, sig.key, schema, column_map
            )
            columns.make_plan(
                sig,
                examples.plan_schema(schema, spec.input_key) if spec else schema,
                required_inputs=list(sig.inputs),
                column_map=column_map,
                outputs=self.config.outputs,
                keep_columns=self.config.keep_columns,
                output_shapes=shapes,
            )

    def expand(self, tables):
        from beam_v1.model import threads

        config = _replace(  # the launcher's options know how many processes share a machine
            self.config,
            processes_per_machine=threads.processes_from_options(tables.pipeline.options),
        )
        return tables | "Score" >> beam.ParDo(
            dofn.RunV1InferenceDoFn(config, self._shared, self._progress_seconds)
        ).with_output_types(pa.Table).with_outputs(FAILED, main=SCORED)

    def display_data(self) -> dict[str, Any]:
        c = self.config
        return display_items(
            model=c.model, signature=c.signature, tags=c.tags, outputs=c.outputs,
            keep_columns=c.keep_columns, column_map=dict(c.column_map),
            batch_size=c.batch_size, max_batch_bytes=c.max_batch_bytes,
            example_feed=c.example_feed,
        )


def _replace(config: ScoringConfig, **changes) -> ScoringConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


class ScoreParquet(beam.PTransform):
    """Read Parquet -> RunV1Inference -> write Parquet and a dead-letter Parquet.

    Output files are `PREFIX-SSSSS-of-NNNNN.parquet`; failed rows go to
    `DEAD_LETTER_PREFIX-SSSSS-of-NNNNN.parquet` (default `PREFIX-failed`). All checks
    that need no worker (model, tags, signature, outputs, the first file's schema) run
    when the transform is applied, so a bad argument fails before the pipeline starts.

    The first file's schema is the run's: a later file's columns are cast to it where that
    is safe, and the rows of a file that cannot be (a column that cannot feed its input, a
    fed column missing) go to the dead letter with the reason (`schema_drift`). With
    `strict_schema=True` every file's footer is checked now instead, and such a file
    fails the transform before the pipeline starts.

    `model_copies`: as for RunV1Inference.
    """

    def __init__(
        self,
        model: str,
        input_pattern: str,
        output_prefix: str,
        dead_letter_prefix: str | None = None,
        *,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        keep_columns: Sequence[str] | str | None = None,
        column_map: Mapping[str, str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_bytes: int | None = None,
        num_shards: int = 0,
        codec: str = "snappy",
        progress_seconds: float | None = None,
        example_feed: str = "auto",
        strict_schema: bool = False,
        model_copies: int | None = None,
        **load_options: Any,
    ):
        super().__init__()
        self.model = str(model)
        self.model_copies = model_copies
        self.input_pattern = input_pattern
        self.output_prefix = output_prefix
        self.dead_letter_prefix = dead_letter_prefix or f"{output_prefix}-failed"
        self.options = dict(
            signature=signature,
            tags=dofn.freeze_list(tags),
            outputs=dofn.freeze_list(outputs),
            keep_columns=dofn.freeze_list(keep_columns),
            column_map=dict(column_map or {}),
        )
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.example_feed = example_feed
        self.num_shards = num_shards
        self.codec = codec
        self.progress_seconds = progress_seconds
        self.load_options = load_options
        self.checked = preflight.check_scoring(
            self.model, input_pattern, load_options=load_options, **self.options
        )
        if strict_schema:
            preflight.check_every_file(self.checked.input_files, self.checked.file_schemas)

    def expand(self, pbegin):
        checked = self.checked
        read = pbegin | "Read" >> ReadParquetRowGroups(
            self.input_pattern, schemas=checked.file_schemas
        )
        scored = (
            read.tables
            | "Infer"
            >> RunV1Inference(
                self.model,
                batch_size=self.batch_size,
                max_batch_bytes=self.max_batch_bytes,
                progress_seconds=self.progress_seconds,
                output_shapes=checked.output_shapes,
                example_feed=self.example_feed,
                checked=checked,
                model_copies=self.model_copies,
                **self.options,
                **self.load_options,
            )
        )
        return write_outputs(
            scored,
            checked,
            output_prefix=self.output_prefix,
            dead_letter_prefix=self.dead_letter_prefix,
            codec=self.codec,
            num_shards=self.num_shards,
            drifted=read[DRIFTED],
        )

    def display_data(self) -> dict[str, Any]:
        return display_items(
            model=self.model, input=self.input_pattern, output_prefix=self.output_prefix,
            dead_letter_prefix=self.dead_letter_prefix, signature=self.checked.signature.key,
            batch_size=self.batch_size, max_batch_bytes=self.max_batch_bytes,
            num_shards=self.num_shards or None, codec=self.codec,
        )


def write_outputs(
    scored,
    checked: preflight.Checked,
    *,
    output_prefix: str,
    dead_letter_prefix: str,
    codec: str,
    num_shards: int,
    drifted=None,
) -> dict:
    """RunV1Inference's outputs -> scored and dead-letter Parquet files, with the schemas
    the checks before the run found. `drifted`: more dead-letter tables (rows of input files
    whose schema drifted), written with the failed rows."""
    output_schema, failed_schema = checked.output_schema, checked.failed_schema
    # every table must match the one schema each sink writes (the first file's); ScoreParquet's
    # reader has cast each file's tables to it already (schema_drift), other inputs may not
    written = scored[SCORED] | "WriteScored" >> WriteParquetTables(
        output_prefix, output_schema, codec=codec, num_shards=num_shards,
        conform=functools.partial(conform, schema=output_schema, what="scored"),
    )
    failed_tables = scored[FAILED]
    if drifted is not None:
        failed_tables = (failed_tables, drifted) | "AllFailed" >> beam.Flatten()
    failed = failed_tables | "WriteFailed" >> WriteParquetTables(
        dead_letter_prefix, failed_schema, codec=codec,
        conform=functools.partial(conform, schema=failed_schema, what="dead-letter"),
    )
    return {"scored": written, "failed": failed}


def conform(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """`table` with the columns of `schema`, in its order and types (safe casts only)."""
    if table.schema.equals(schema):
        return table
    from beam_v1.errors import SchemaError
    from beam_v1.text import first_line

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
