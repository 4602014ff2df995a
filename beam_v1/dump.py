"""DumpVariables: TF1 models' weights out of their checkpoints, at scale, on Apache Beam.

    paths --DumpVariables--> VariableRecord (one per variable, or per slice of a big one)
                         \\-> failed: {"model", "error"}
    records --WriteVariables(prefix, "parquet"|"npz", failed=...)--> PREFIX-<model>.parquet|.npz

The sink stages each record's bytes to a temporary file, groups the small metadata by model,
then writes each model's file in one go, joining slices again. So a model that failed part
way (a corrupt shard found on its 3rd variable) leaves no output file, and neither a Beam
element nor a worker holds more than one slice. Checkpoint reading lives in
`beam_v1.variables` (no Beam there).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
import uuid
import zipfile
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_v1 import savedmodel, staging, variables
from beam_v1.errors import BeamV1Error, ModelFileError

_log = logging.getLogger(__name__)

NAMESPACE = "beam_v1"
VARIABLES = "variables"
FAILED = "failed"
FORMATS = ("parquet", "npz")
_PARQUET_GROUP_BYTES = 8 << 20
_PARQUET_BIG_ROW = 1 << 20


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
            model_dir = savedmodel.resolve_model_dir(staging.local_model_dir(path))
            specs = variables.list_variables(model_dir, self.tags, parts=self.parts)
            if not specs:
                _log.warning("Model %s has no variables (no checkpoint): nothing to dump.", path)
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
        for order, spec in enumerate(specs):
            try:
                for piece in reader.slices(spec, self.slice_bytes):
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
                    done_bytes += record.nbytes
                    self.slices.inc()
                    self.bytes.inc(record.nbytes)
                    yield record
            except Exception as e:
                self.failed.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED,
                    {"model": path, "error": _reason(e), "variables_read": order},
                )
                return
            self.variables.inc()
            if self.progress_seconds and time.monotonic() - last > self.progress_seconds:
                last = time.monotonic()
                print(
                    f"beam-v1 dump-variables: {path}: {order + 1}/{len(specs)} variables, "
                    f"{done_bytes / 1e6:,.1f} MB",
                    file=sys.stderr,
                    flush=True,
                )
        self.models.inc()


class DumpVariables(beam.PTransform):
    """PCollection of model paths (local or any Beam filesystem) -> one `VariableRecord` per
    variable, or per slice of a variable bigger than `slice_bytes`.

    Returns a DoOutputsTuple: `result.variables` (records) and `result.failed` (dicts with
    `model` and `error`: a model that cannot be read; the others are still dumped). Reads the
    checkpoint only, never the graph. Partitioned variables come whole unless `parts=True`.
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
        return (
            paths
            | "SpreadModels" >> beam.Reshuffle()
            | "ReadCheckpoints"
            >> beam.ParDo(
                _DumpModelDoFn(self.tags, self.parts, self.slice_bytes, self.progress_seconds)
            ).with_outputs(FAILED, main=VARIABLES)
        )


# ----------------------------------------------------------------------- sinks


def model_slug(model: str) -> str:
    """A file-name-safe, collision-free name for a model path."""
    parts = [p for p in re.split(r"[/\\]+", model.rstrip("/\\")) if p and not p.endswith(":")]
    tail = parts[-2:] if len(parts) >= 2 and parts[-1].isdigit() else parts[-1:]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(tail))[:80] or "model"
    return f"{readable}-{hashlib.sha1(model.encode('utf-8')).hexdigest()[:8]}"


def output_path(prefix: str, model: str, fmt: str) -> str:
    return f"{prefix}-{model_slug(model)}.{fmt}"


class _StageRecordDoFn(beam.DoFn):
    """Write a record's bytes to a temporary file; pass on its metadata, keyed by model."""

    def __init__(self, tmp_dir: str):
        self.tmp_dir = tmp_dir

    def process(self, record: VariableRecord):
        path = FileSystems.join(
            self.tmp_dir,
            model_slug(record.model),
            f"{record.order:06d}-{record.slice_index:06d}.bin",
        )
        with _create(path) as out:
            if record.dtype == "string":
                out.write(variables.to_bytes(record.value, "string"))
            else:
                value = np.ascontiguousarray(record.value)
                if value.dtype.byteorder == ">":
                    value = value.astype(value.dtype.newbyteorder("<"))
                out.write(memoryview(value.reshape(-1)).cast("B"))
        meta = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        meta.pop("value")
        meta["staged"] = path
        yield record.model, meta


def _create(path: str, arrow: bool = False):
    """A binary file to write: a plain local file where possible (faster than Beam's, and
    Arrow's own for Parquet: no extra buffer through Python)."""
    if staging.is_remote(path):
        return FileSystems.create(path, compression_type="uncompressed")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if arrow:
        import pyarrow as pa

        return pa.OSFile(path, "wb")
    return open(path, "wb")


def _read_staged(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def _copy_staged(path: str, out) -> None:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        while chunk := f.read(16 << 20):
            out.write(chunk)


class _WriteModelDoFn(beam.DoFn):
    """All staged records of one model -> its .parquet or .npz file (slices joined)."""

    def __init__(self, prefix: str, fmt: str):
        self.prefix = prefix
        self.fmt = fmt
        self.files = Metrics.counter(NAMESPACE, "dump_files_written")

    def process(self, element, failed_models):
        model, metas = element
        metas = sorted(metas, key=lambda m: (m["order"], m["slice_index"]))
        staged = [m["staged"] for m in metas]
        try:
            if model in set(failed_models):
                return  # the model failed part way: no output file for it
            _check_complete(model, metas)
            final = output_path(self.prefix, model, self.fmt)
            temp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
            with _create(temp, arrow=self.fmt == "parquet") as out:
                if self.fmt == "npz":
                    _write_npz(out, metas)
                else:
                    _write_parquet(out, model, metas)
            FileSystems.rename([temp], [final])
        finally:
            FileSystems.delete(staged)
        self.files.inc()
        names = {m["name"] for m in metas}
        yield {
            "model": model,
            "file": final,
            "variables": len(names),
            "records": len(metas),
            "bytes": sum(_record_bytes(m) for m in metas),
        }


def _record_bytes(meta) -> int:
    rows = meta["row_stop"] - meta["row_start"]
    if meta["dtype"] == "string":
        return 0
    per_row = int(np.prod(meta["shape"][1:], dtype=np.int64)) if meta["shape"] else 1
    count = rows * per_row if meta["shape"] else 1
    return count * variables.numpy_dtype(meta["dtype"]).itemsize


def _check_complete(model: str, metas) -> None:
    seen: dict[str, list[int]] = {}
    for m in metas:
        seen.setdefault(m["name"], []).append(m["slice_index"])
    for m in metas:
        if sorted(seen[m["name"]]) != list(range(m["num_slices"])):
            raise ModelFileError(
                f"Model {model}: variable {m['name']!r} has slices {sorted(seen[m['name']])} of "
                f"{m['num_slices']}."
            )


def _write_npz(out, metas) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        by_name: dict[str, list] = {}
        for m in metas:
            by_name.setdefault(m["name"], []).append(m)
        for name, pieces in by_name.items():
            first = pieces[0]
            shape = tuple(first["shape"])
            if first["dtype"] == "string":
                value = variables.from_bytes(_read_staged(first["staged"]), "string", shape)
                if any(v.endswith(b"\x00") for v in value.reshape(-1)):
                    raise ModelFileError(
                        f"String variable {name!r} has values ending in NUL bytes, which .npz "
                        "cannot keep exactly; dump it with --format parquet."
                    )
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, value.astype(bytes), allow_pickle=False)
                continue
            dtype = variables.numpy_dtype(first["dtype"]).newbyteorder("<")
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": shape,
            }
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for piece in pieces:
                    _copy_staged(piece["staged"], f)


def parquet_schema():
    import pyarrow as pa

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


def _parquet_row(model: str, m: dict, data: bytes) -> dict:
    values = None
    if (
        m["dtype"] in variables._FLOAT_DTYPES
        and m["num_slices"] == 1
        and len(data) <= variables.SMALL_VALUES_BYTES
    ):
        values = variables.from_bytes(data, m["dtype"], (-1,)).astype(np.float64).tolist()
    return {
        "model": model,
        "name": m["name"],
        "dtype": m["dtype"],
        "shape": list(m["shape"]),
        "kind": m["kind"],
        "trainable": m["trainable"],
        "slice_index": m["slice_index"],
        "num_slices": m["num_slices"],
        "row_start": m["row_start"],
        "row_stop": m["row_stop"],
        "nbytes": len(data),
        "data": data,
        "values": values,
    }


def _write_parquet(out, model: str, metas) -> None:
    """Small records batched into row groups of up to 8 MiB; a bigger one is its own row group,
    its bytes handed to Arrow without a copy. No compression: weights barely compress."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = parquet_schema()
    rows: list[dict] = []
    size = 0
    small_columns = [f.name for f in schema if f.name not in ("data", "values")]
    with pq.ParquetWriter(
        out,
        schema,
        compression="none",
        use_dictionary=["model", "name", "dtype", "kind"],  # never hash the weights' bytes
        write_statistics=small_columns,  # nor copy them into min/max statistics
    ) as writer:

        def flush():
            nonlocal rows, size
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows, size = [], 0

        for m in metas:
            data = _read_staged(m["staged"])
            if len(data) > _PARQUET_BIG_ROW:
                flush()
                row = _parquet_row(model, m, b"")
                columns = [pa.array([row[f.name]], f.type) for f in schema]
                offsets = pa.py_buffer(np.array([0, len(data)], np.int64))
                columns[schema.get_field_index("data")] = pa.LargeBinaryArray.from_buffers(
                    pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)]
                )
                columns[schema.get_field_index("nbytes")] = pa.array([len(data)], pa.int64())
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                del columns, data
                continue
            if size + len(data) > _PARQUET_GROUP_BYTES:
                flush()
            rows.append(_parquet_row(model, m, data))
            size += len(data)
        flush()


def _delete_dir(_, tmp_dir: str) -> None:
    try:
        if FileSystems.exists(tmp_dir):
            FileSystems.delete([tmp_dir])
    except Exception as e:  # leftovers in a temp folder must not fail a finished dump
        _log.warning("Could not delete the temporary folder %s: %s", tmp_dir, e)


class WriteVariables(beam.PTransform):
    """VariableRecords -> one `PREFIX-<model>.parquet` or `.npz` per model, slices joined.

    `failed`: DumpVariables' failed output; those models get no file, and are listed in
    `PREFIX-failed.jsonl`. Every written file is listed in `PREFIX-manifest.jsonl` (model,
    file, variables, bytes). Returns the PCollection of those manifest rows.
    """

    def __init__(self, prefix: str, format: str = "parquet", failed=None):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        self.prefix = str(prefix)
        self.format = format
        self.failed = failed

    def expand(self, records):
        tmp_dir = f"{self.prefix}-tmp-{uuid.uuid4().hex[:12]}"
        failed = self.failed
        if failed is None:
            failed = records.pipeline | "NoFailures" >> beam.Create([])
        failed_models = failed | "FailedModels" >> beam.Map(lambda f: f["model"])
        written = (
            records
            | "Stage" >> beam.ParDo(_StageRecordDoFn(tmp_dir))
            | "ByModel" >> beam.GroupByKey()
            | "WriteModels"
            >> beam.ParDo(
                _WriteModelDoFn(self.prefix, self.format), beam.pvalue.AsList(failed_models)
            )
        )
        _ = (
            written
            | "ManifestJson" >> beam.Map(json.dumps)
            | "Manifest"
            >> beam.io.WriteToText(
                self.prefix + "-manifest", file_name_suffix=".jsonl", shard_name_template=""
            )
        )
        _ = (
            failed
            | "FailedJson" >> beam.Map(json.dumps)
            | "FailedList"
            >> beam.io.WriteToText(
                self.prefix + "-failed", file_name_suffix=".jsonl", shard_name_template=""
            )
        )
        _ = (
            written
            | "CountWritten" >> beam.combiners.Count.Globally()
            | "Cleanup" >> beam.Map(_delete_dir, tmp_dir)
        )
        return written


def local_dir_for(prefix: str) -> None:
    """Create the local folder of an output prefix (remote filesystems need none)."""
    if not staging.is_remote(prefix):
        folder = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(folder, exist_ok=True)
