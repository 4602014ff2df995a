"""DumpVariables: TF1 models' weights out of their checkpoints, at scale, on Apache Beam.

    paths --DumpVariables--> VariableRecord (one per variable, or per slice of a big one)
                         \\-> failed: {"model", "error"}
    records --WriteVariables(prefix, "parquet"|"npz", failed=...)--> PREFIX-<model>.parquet|.npz

The sink appends each record to a per-(model, bundle) part file in a temporary folder as it
arrives, closes the parts at the end of the bundle, groups their small descriptors (never the
data) by model, then makes each model's file: the part is renamed into place when it holds the
whole model (the usual case: reading and writing run fused in one bundle), else the parts are
joined. So the data is written once in the usual case, a model that failed part way (a
corrupt shard found on its 3rd variable) leaves no output file, and neither a Beam element nor
a worker holds more than a slice or two. Checkpoint reading lives in
`beam_v1.variables.checkpoint`, the part and final files in `beam_v1.variables.files` (no Beam
in either).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import re
import time
import uuid
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.coders import coder_impl
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from beam_v1.errors import BeamV1Error
from beam_v1.io import files, staging
from beam_v1.model import metadata as savedmodel
from beam_v1.runs import display_items
from beam_v1.variables import checkpoint as variables
from beam_v1.variables import files as dump_files

_log = logging.getLogger(__name__)
_progress_log = logging.getLogger("beam_v1.progress")  # INFO: shown by the CLI unless --quiet

NAMESPACE = "beam_v1"
VARIABLES = "variables"
FAILED = "failed"
FORMATS = ("parquet", "npz")


@dataclasses.dataclass(frozen=True)
class VariableRecord:
    """One variable, or one slice (rows [row_start, row_stop) along axis 0) of a big one."""

    model: str  # the model path as given
    name: str
    dtype: str
    shape: tuple[int, ...]  # the whole variable's shape
    kind: str  # ref | resource | checkpoint
    trainable: bool | None
    order: int  # position of the variable in the model's (name-sorted) list
    slice_index: int
    num_slices: int
    row_start: int
    row_stop: int
    value: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.value.nbytes) if self.dtype != "string" else 0

    def meta(self) -> dump_files.RecordMeta:
        """The record without its value."""
        return dump_files.RecordMeta(
            name=self.name,
            dtype=self.dtype,
            shape=tuple(self.shape),
            kind=self.kind,
            trainable=self.trainable,
            order=self.order,
            slice_index=self.slice_index,
            num_slices=self.num_slices,
            row_start=self.row_start,
            row_stop=self.row_stop,
            nbytes=self.nbytes,
        )


def _record_size(record) -> int:
    value = getattr(record, "value", None)
    return 256 + (int(value.nbytes) if isinstance(value, np.ndarray) else 0)


class VariableRecordCoder(beam.coders.Coder):
    """Pickle (protocol 5) to encode, as the default coder would; but the size Beam samples
    on every output is estimated from the array instead of pickling a 64 MiB slice."""

    def _create_impl(self):
        return coder_impl.CallbackCoderImpl(
            lambda r: pickle.dumps(r, protocol=5), pickle.loads, _record_size
        )

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return VariableRecord


beam.coders.registry.register_coder(VariableRecord, VariableRecordCoder)


# --------------------------------------------------------------------- reading


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, BeamV1Error) else f"{type(e).__name__}: {e}"


class _DumpModelDoFn(beam.DoFn):
    def __init__(self, tags, parts: bool, slice_bytes: int, progress_seconds: float):
        self.tags = tags
        self.parts = parts
        self.slice_bytes = slice_bytes
        self.progress_seconds = progress_seconds
        self.models = Metrics.counter(NAMESPACE, "models_dumped")
        self.failed = Metrics.counter(NAMESPACE, "models_failed")
        self.empty = Metrics.counter(NAMESPACE, "models_without_variables")
        self.variables = Metrics.counter(NAMESPACE, "variables_dumped")
        self.slices = Metrics.counter(NAMESPACE, "variable_records")
        self.bytes = Metrics.counter(NAMESPACE, "bytes_dumped")

    def process(self, path: str):
        path = str(path)
        try:
            staged = staging.acquire(path)  # a remote model's copy is removed once it is read
        except Exception as e:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, {"model": path, "error": _reason(e)})
            return
        try:
            yield from self._dump(path, staged)
        finally:
            staging.release(path)

    def _dump(self, path: str, staged: str):
        try:
            model_dir = savedmodel.resolve_model_dir(staged)
            specs = variables.list_variables(model_dir, self.tags, parts=self.parts)
            if not specs:
                _log.warning("Model %s declares no variables: nothing to dump.", path)
                self.empty.inc()
                return
            reader = variables.CheckpointReader(model_dir)
            reader.check()
        except Exception as e:  # every failure of one model is that model's, not the run's
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, {"model": path, "error": _reason(e)})
            return
        last = time.monotonic()
        done_bytes = 0
        for order, spec, piece in variables.iter_slices(reader, specs, self.slice_bytes):
            if isinstance(piece, Exception):
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED,
                    {"model": path, "error": _reason(piece), "variables_read": order},
                )
                return
            record = VariableRecord(
                model=path,
                name=spec.name,
                dtype=spec.dtype,
                shape=tuple(spec.shape),
                kind=spec.kind,
                trainable=spec.trainable,
                order=order,
                slice_index=piece.index,
                num_slices=piece.count,
                row_start=piece.row_start,
                row_stop=piece.row_stop,
                value=piece.value,
            )
            last_slice = piece.index == piece.count - 1
            del piece
            done_bytes += record.nbytes
            self.slices.inc()
            self.bytes.inc(record.nbytes)
            yield record
            del record
            if not last_slice:
                continue
            self.variables.inc()
            if self.progress_seconds and time.monotonic() - last > self.progress_seconds:
                last = time.monotonic()
                _progress_log.info(
                    "beam-v1 dump-variables: %s: %d/%d variables, %s MB",
                    path, order + 1, len(specs), f"{done_bytes / 1e6:,.1f}",
                )
        self.models.inc()


class DumpVariables(beam.PTransform):
    """PCollection of model paths (local or any Beam filesystem) -> one `VariableRecord` per
    variable, or per slice of a variable bigger than `slice_bytes`.

    Returns a DoOutputsTuple: `result.variables` (records) and `result.failed` (dicts with
    `model` and `error`: a model that cannot be read; the others are still dumped). Reads the
    checkpoint only, never the graph. Partitioned variables come whole unless `parts=True`.
    A slice's value is a read-only array mapped from the checkpoint's data shard.
    """

    def __init__(
        self,
        tags: Sequence[str] | str | None = None,
        *,
        parts: bool = False,
        slice_bytes: int = variables.DEFAULT_SLICE_BYTES,
        progress_seconds: float = 10.0,
    ):
        super().__init__()
        if slice_bytes < 1:
            raise ValueError(f"slice_bytes must be positive, got {slice_bytes}")
        self.tags = tuple(savedmodel.parse_tags(tags)) if tags is not None else None
        self.parts = parts
        self.slice_bytes = int(slice_bytes)
        self.progress_seconds = progress_seconds

    def expand(self, paths):
        # Distinct, keyed by path, also spreads the models over workers as a Reshuffle would;
        # a model given twice would otherwise be dumped twice into one file
        return (
            paths
            | "NormalizePaths" >> beam.Map(normal_model_path)
            | "SpreadModels" >> beam.Distinct()
            | "ReadCheckpoints"
            >> beam.ParDo(
                _DumpModelDoFn(self.tags, self.parts, self.slice_bytes, self.progress_seconds)
            )
            .with_output_types(VariableRecord)
            .with_outputs(FAILED, main=VARIABLES)
        )

    def display_data(self) -> dict:
        return display_items(tags=self.tags, parts=self.parts, slice_bytes=self.slice_bytes)


def normal_model_path(path) -> str:
    """The path without trailing slashes (`a/` is `a`), except a root such as `/` or `gs://`."""
    path = str(path)
    stripped = path.rstrip("/")
    return stripped if stripped and not stripped.endswith(":") else path


# ----------------------------------------------------------------------- sinks


def model_slug(model: str) -> str:
    """A file-name-safe, collision-free name for a model path."""
    parts = [p for p in re.split(r"[/\\]+", model.rstrip("/\\")) if p and not p.endswith(":")]
    tail = parts[-2:] if len(parts) >= 2 and parts[-1].isdigit() else parts[-1:]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(tail))[:80] or "model"
    return f"{readable}-{hashlib.sha1(model.encode('utf-8')).hexdigest()[:8]}"


def output_path(prefix: str, model: str, fmt: str) -> str:
    return f"{prefix}-{model_slug(model)}.{fmt}"


class _WritePartsDoFn(beam.DoFn):
    """Append each record to its model's part file for this bundle, as it arrives (no record
    is kept); at the end of the bundle close the parts and pass on their descriptors."""

    def __init__(self, tmp_dir: str, fmt: str):
        self.tmp_dir = tmp_dir
        self.fmt = fmt
        self._writers: dict[str, dump_files.PartWriter] = {}

    def start_bundle(self):
        self._writers = {}

    def process(self, record: VariableRecord):
        writer = self._writers.get(record.model)
        try:
            if writer is None:
                folder = FileSystems.join(self.tmp_dir, model_slug(record.model))
                writer = dump_files.part_writer(folder, record.model, self.fmt)
                self._writers[record.model] = writer
            writer.append(record.meta(), record.value)
        except Exception:
            self._abort()
            raise

    def finish_bundle(self):
        writers, self._writers = self._writers, {}
        try:
            infos = [w.close() for w in writers.values()]
        except Exception:
            for w in writers.values():
                w.abort()
            raise
        for info in infos:
            yield GlobalWindows.windowed_value((info.model, info))

    def _abort(self):
        writers, self._writers = self._writers, {}
        for w in writers.values():
            w.abort()

    def teardown(self):
        self._abort()


class _FinalizeModelDoFn(beam.DoFn):
    """All part descriptors of one model -> its final file: the part renamed into place when
    it holds the whole model, else the parts joined. A failed model's parts are deleted."""

    def __init__(self, prefix: str, fmt: str):
        self.prefix = prefix
        self.fmt = fmt
        self.files = Metrics.counter(NAMESPACE, "dump_files_written")
        self.joined = Metrics.counter(NAMESPACE, "dump_files_joined")

    def process(self, element, failed):
        model, parts = element
        parts = list(parts)
        if model in {f["model"] for f in failed}:
            # the model failed part way: no output file for it
            dump_files.delete_files([p.path for p in parts])
        else:
            yield self._finalize(model, parts)

    def _finalize(self, model: str, parts: list) -> dict:
        final = output_path(self.prefix, model, self.fmt)
        how = dump_files.finalize(final, parts)
        self.files.inc()
        if how == "joined":
            self.joined.inc()
        records = [m for p in parts for m in p.records]
        return {
            "model": model,
            "file": final,
            "variables": len({m.name for m in records}),
            "records": len(records),
            "bytes": sum(m.nbytes for m in records if m.dtype != "string"),
            "parts": len(parts),
        }


def _delete_dir(tmp_dir: str) -> None:
    try:
        if FileSystems.exists(tmp_dir):
            FileSystems.delete([tmp_dir])
    except Exception as e:  # leftovers in a temp folder must not fail a finished dump
        _log.warning("Could not delete the temporary folder %s: %s", tmp_dir, e)


class _ReportDoFn(beam.DoFn):
    """Once every model is finalized: `PREFIX-manifest.jsonl` (the files written) and
    `PREFIX-failed.jsonl` (the models that failed), then the temporary folder goes."""

    def __init__(self, prefix: str, tmp_dir: str):
        self.prefix = prefix
        self.tmp_dir = tmp_dir

    def process(self, element, failed):
        _, rows = element
        written = sorted((r for r in rows if r is not None), key=lambda r: r["file"])
        failed = sorted(failed, key=lambda f: f["model"])
        dump_files.write_jsonl(self.prefix + "-manifest.jsonl", written)
        dump_files.write_jsonl(self.prefix + "-failed.jsonl", failed)
        _delete_dir(self.tmp_dir)
        return []


class WriteVariables(beam.PTransform):
    """VariableRecords -> one `PREFIX-<model>.parquet` or `.npz` per model, slices joined.

    `failed`: DumpVariables' failed output; those models get no file, and are listed in
    `PREFIX-failed.jsonl`. Every written file is listed in `PREFIX-manifest.jsonl` (model,
    file, variables, records, bytes, parts). Returns the PCollection of those manifest rows.

    Each model's file appears (by a rename) only once all its records are in it: a model
    that failed part way, or a pipeline that failed, leaves no file for that model. The
    records are appended to part files as they arrive and written once in the usual case
    (see the module docstring).
    """

    def __init__(self, prefix: str, format: str = "parquet", failed=None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.prefix = str(prefix)
        self.format = format
        self.failed = failed

    def expand(self, records):
        pipeline = records.pipeline
        tmp_dir = f"{self.prefix}-tmp-{uuid.uuid4().hex[:12]}"
        failed = self.failed
        if failed is None:
            failed = pipeline | "NoFailures" >> beam.Create([])
        failed_list = beam.pvalue.AsList(failed)
        written = (
            records
            | "WriteParts" >> beam.ParDo(_WritePartsDoFn(tmp_dir, self.format))
            | "ByModel" >> beam.GroupByKey()
            | "Finalize" >> beam.ParDo(_FinalizeModelDoFn(self.prefix, self.format), failed_list)
        )
        # one element even when nothing was written, so the report and clean-up always run
        _ = (
            (
                written | "KeyRows" >> beam.Map(lambda row: (None, row)),
                pipeline | "Always" >> beam.Create([(None, None)]),
            )
            | "Rows" >> beam.Flatten()
            | "AllRows" >> beam.GroupByKey()
            | "Report" >> beam.ParDo(_ReportDoFn(self.prefix, tmp_dir), failed_list)
        )
        return written

    def display_data(self) -> dict:
        return display_items(prefix=self.prefix, format=self.format)


def local_dir_for(prefix: str) -> None:
    """Create the local folder of an output prefix (remote filesystems need none)."""
    if not files.is_remote(prefix):
        folder = os.path.dirname(os.path.abspath(files.local_path(prefix)))
        os.makedirs(folder, exist_ok=True)
