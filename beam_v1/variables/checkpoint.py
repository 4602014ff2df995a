"""Read a TF1 SavedModel's variables straight from its checkpoint.

Never imports or runs the graph: names, dtypes, shapes, ref/resource and trainable come from
the MetaGraph's protos (`beam_v1.model.metadata`), values from `variables/variables.index` and
its data shards through TensorFlow's checkpoint reader, so it works on models whose ops this
TensorFlow lacks. Where each tensor's bytes lie comes from our own reading of the index
(`beam_v1.io.tensor_bundle`, held to TensorFlow's table reader). No Beam here
(`beam_v1.variables.dump` holds the transform and the sinks; `beam_v1.variables.read` reads
dumps back).

Partitioned variables: a TF1 Saver stores a partitioned variable ONCE, under its full name,
as several slices (one per part). By default it is read back whole (`w`); with
`parts=True` each part (`w/part_0`, ...) is read on its own, by slice.

Big variables (more bytes than `slice_bytes`) are read as row ranges along their first axis:
- stored whole (the usual case) and numeric: the range comes straight from the data shard, at
  the offset the index gives, as a read-only array over a memory map of those bytes (no copy;
  the mapping goes with the array), so memory holds one range, never the whole tensor.
  TensorFlow's CRC-32C covers the whole tensor: `slices()` checks it over the ranges as it
  gives them, and fails after the last one if it differs; a lone `read_rows` is unverified.
- stored as slices (partitioned): `RestoreV2` with a `shape_and_slices` spec. TensorFlow's
  BundleReader then reads each intersecting stored slice whole into a temporary, then copies
  the range out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import mmap
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import variable_pb2
from tensorflow.python.ops import io_ops
from tensorflow.python.training import py_checkpoint_reader

from beam_v1 import dtypes
from beam_v1.errors import ModelFileError
from beam_v1.io import checksums, tensor_bundle
from beam_v1.model import metadata as savedmodel
from beam_v1.text import first_line

_log = logging.getLogger(__name__)

DEFAULT_SLICE_BYTES = 64 << 20


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    """One variable to dump, and where its value sits in the checkpoint."""

    name: str  # as in the graph: `dense/kernel`, `w` (partitioned, whole) or `w/part_0`
    dtype: str  # beam_v1 dtype name (`float32`, `int64`, `string`, ...)
    shape: tuple[int, ...]
    kind: str  # ref | resource | checkpoint (in the checkpoint only)
    trainable: bool | None  # None when the MetaGraph has no trainable_variables collection
    key: str  # checkpoint key (the full name for parts)
    full_shape: tuple[int, ...]  # shape stored under `key`
    offset: tuple[int, ...] | None = None  # a part's offset in the full variable

    @property
    def numpy_dtype(self) -> np.dtype:
        return dtypes.numpy_dtype(self.dtype)

    @property
    def nbytes(self) -> int:
        if self.dtype == "string":
            return 0
        return math.prod(self.shape) * self.numpy_dtype.itemsize


# ------------------------------------------------------------------- listing


def _part_slices(mg) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Part variable name -> (full name, full shape, offset, part shape)."""
    found = {}
    for key in ("variables", "local_variables", "model_variables"):
        for var in savedmodel.variable_defs(mg, key):
            if var.HasField("save_slice_info_def"):
                info = var.save_slice_info_def
                found[var.variable_name.split(":")[0]] = (
                    info.full_name,
                    tuple(info.full_shape),
                    tuple(info.var_offset),
                    tuple(info.var_shape),
                )
    return found


def declared_variables(mg) -> list[str]:
    """Names of the variables the MetaGraph says its checkpoint holds: the global `variables`
    collection, else the graph's variable nodes (VariableV2, VarHandleOp) that the
    `local_variables` collection does not claim (local ones are never saved). A graph with a
    Saver (`saver_def`) but neither declares `<saver>` itself. Empty only for a graph with no
    saved variables: then, and only then, a missing checkpoint is not an error."""

    def names(key: str) -> list[str]:
        found = []
        collection = mg.collection_def.get(key)
        for raw in collection.bytes_list.value if collection is not None else ():
            var = variable_pb2.VariableDef()
            try:
                var.ParseFromString(raw)
            except Exception:  # DecodeError: an unparsable entry still declares a variable
                found.append(f"<{key} #{len(found)}>")
                continue
            found.append(var.variable_name.split(":")[0])
        return found

    declared = names("variables")
    if not declared:
        local = set(names("local_variables"))
        declared = sorted(n for n in savedmodel.graph_variables(mg) if n not in local)
    if not declared and mg.saver_def.restore_op_name:
        declared = [f"<saver {mg.saver_def.restore_op_name}>"]
    return declared


def list_variables(
    model_dir: str, tags: Sequence[str] | str | None = None, *, parts: bool = False
) -> list[VariableSpec]:
    """The variables of the checkpoint of the SavedModel at (local) `model_dir`, in name order.

    Empty only when the graph declares no saved variables (`declared_variables`); a graph
    that declares some and has no `variables/variables.index`, or one that holds none of
    them, is a ModelFileError naming the index. Reads the MetaGraph and the index only, never
    the data shards.
    """
    model_dir = savedmodel.resolve_model_dir(model_dir)
    mg = savedmodel.select_meta_graph(savedmodel.read_saved_model(model_dir), tags)
    index = savedmodel.checkpoint_prefix(model_dir) + ".index"
    declared = declared_variables(mg)
    if declared and not os.path.isfile(index):
        shown = ", ".join(declared[:5]) + (", ..." if len(declared) > 5 else "")
        shards = tensor_bundle.shard_files(savedmodel.checkpoint_prefix(model_dir))
        raise ModelFileError(
            f"The checkpoint index {index} is missing, but the graph of {model_dir} declares "
            f"{len(declared)} saved variable{'s' if len(declared) != 1 else ''} ({shown}); "
            f"data shards: {', '.join(shards) if shards else 'none found'}."
        )
    infos = savedmodel.variables(model_dir, mg)  # the same view `beam-v1 inspect` prints
    graph = savedmodel.graph_variables(mg)
    trainable = savedmodel.trainable_names(mg)
    has_collections = "trainable_variables" in mg.collection_def
    slices = _part_slices(mg) if parts else {}
    specs = []
    for info in infos:
        if not info.in_checkpoint:
            continue
        shape = tuple(info.shape or ())
        if parts and info.parts and all(p in slices for p in info.parts):
            for part in info.parts:
                full_name, full_shape, offset, part_shape = slices[part]
                specs.append(
                    VariableSpec(
                        name=part,
                        dtype=info.dtype,
                        shape=part_shape,
                        kind=graph.get(part, (None, None, info.kind))[2],
                        trainable=(part in trainable) if has_collections else None,
                        key=info.name,
                        full_shape=shape,
                        offset=offset,
                    )
                )
            continue
        specs.append(
            VariableSpec(
                name=info.name,
                dtype=info.dtype,
                shape=shape,
                kind=info.kind,
                trainable=info.trainable,
                key=info.name,
                full_shape=shape,
            )
        )
    saved = {i.name for i in infos if i.in_checkpoint}
    saved |= {p for i in infos if i.in_checkpoint for p in i.parts}
    named = [n for n in declared if not n.startswith("<")]
    if named and not saved.intersection(named):
        raise ModelFileError(
            f"The checkpoint index {index} holds none of the {len(declared)} saved variable"
            f"{'s' if len(declared) != 1 else ''} the graph of {model_dir} declares "
            f"({', '.join(declared[:5])}{', ...' if len(declared) > 5 else ''})."
        )
    return specs


# ------------------------------------------------------------------- reading


def _spec_string(full_shape: Sequence[int], offset: Sequence[int], shape: Sequence[int]) -> str:
    dims = " ".join(str(d) for d in full_shape)
    ranges = ":".join(f"{o},{s}" for o, s in zip(offset, shape))
    return f"{dims} {ranges}"


@dataclasses.dataclass(frozen=True)
class Slice:
    """Rows [row_start, row_stop) along axis 0 of a variable, slice `index` of `count`."""

    index: int
    count: int
    row_start: int
    row_stop: int
    value: np.ndarray


class CheckpointReader:
    """Reads one SavedModel checkpoint; `check()` validates every shard before any read."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.prefix = savedmodel.checkpoint_prefix(model_dir)
        index = self.prefix + ".index"
        if not os.path.isfile(index):
            raise ModelFileError(f"The model {model_dir} has no checkpoint index {index}.")
        self._header, self._entries = tensor_bundle.read_index(self.prefix)
        try:
            self._reader = py_checkpoint_reader.NewCheckpointReader(self.prefix)
        except Exception as e:  # TensorFlow raises several types
            raise ModelFileError(
                f"The checkpoint {self.prefix} cannot be opened ({self._shards_text()}): {e}"
            ) from e

    def _shards_text(self) -> str:
        files = tensor_bundle.shard_files(self.prefix)
        return "data shards: " + (", ".join(files) if files else "none found")

    def _entry(self, key: str):
        return self._entries.get(key.encode("utf-8"))

    def _entry_files(self, key: str) -> list[str]:
        """The data shard(s) holding checkpoint key `key`."""
        entry = self._entry(key)
        if entry is None:
            return tensor_bundle.shard_files(self.prefix)
        n = self._header.num_shards
        if not entry.slices:
            return [tensor_bundle.shard_path(self.prefix, entry.shard_id, n)]
        shards = {
            e.shard_id
            for k, e in self._entries.items()
            if k.startswith(b"\x00" + key.encode("utf-8") + b"\x00")
        }
        return [tensor_bundle.shard_path(self.prefix, s, n) for s in sorted(shards)]

    def check(self) -> None:
        """Every tensor's shard exists and holds its bytes (the index's offset + size)."""
        n = self._header.num_shards
        sizes: dict[str, int | None] = {}
        for key, entry in self._entries.items():
            if entry.slices:
                continue  # the slices' own entries carry shard/offset/size
            path = tensor_bundle.shard_path(self.prefix, entry.shard_id, n)
            if path not in sizes:
                sizes[path] = os.path.getsize(path) if os.path.isfile(path) else None
            name = key.split(b"\x00")[1] if key.startswith(b"\x00") else key
            if sizes[path] is None:
                raise ModelFileError(
                    f"Data shard {path} is missing (it holds variable "
                    f"{name.decode('utf-8', 'replace')!r})."
                )
            if entry.offset + entry.size > sizes[path]:
                raise ModelFileError(
                    f"Data shard {path} is truncated: it holds {sizes[path]} bytes, variable "
                    f"{name.decode('utf-8', 'replace')!r} needs bytes up to "
                    f"{entry.offset + entry.size}."
                )

    def _fail(self, spec: VariableSpec, e: Exception) -> ModelFileError:
        return ModelFileError(
            f"Variable {spec.name!r} cannot be read from data shard "
            f"{', '.join(self._entry_files(spec.key)) or '(none found)'}: "
            f"{first_line(e)}"
        )

    def read(self, spec: VariableSpec) -> np.ndarray:
        """The whole variable (or part), checksum-verified by TensorFlow."""
        try:
            if spec.offset is None:
                value = self._reader.get_tensor(spec.key)
            else:
                value = self._restore(spec, spec.offset, spec.shape)
        except ModelFileError:
            raise
        except Exception as e:
            raise self._fail(spec, e) from e
        return _as_array(value, spec)

    def _restore(self, spec: VariableSpec, offset, shape) -> np.ndarray:
        text = _spec_string(spec.full_shape, offset, shape)
        (tensor,) = io_ops.restore_v2(
            self.prefix, [spec.key], [text], [tf.as_dtype(dtypes.enum_of(spec.dtype))]
        )
        return tensor.numpy()

    def read_rows(self, spec: VariableSpec, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the variable along axis 0, without reading the rest when
        the checkpoint stores it whole (see the module docstring)."""
        rows = stop - start
        shape = (rows, *spec.shape[1:])
        entry = self._entry(spec.key)
        direct = (
            entry is not None
            and not entry.slices
            and spec.offset is None
            and spec.dtype != "string"
            and self._header.endianness == 0  # LITTLE
            and np.little_endian
            and entry.size == spec.nbytes
        )
        try:
            if direct:
                row_bytes = spec.nbytes // spec.shape[0]
                path = tensor_bundle.shard_path(
                    self.prefix, entry.shard_id, self._header.num_shards
                )
                return _map_rows(path, entry.offset + start * row_bytes, spec, shape)
            base = spec.offset or (0,) * len(spec.shape)
            offset = (base[0] + start, *base[1:])
            return _as_array(self._restore(spec, offset, shape), spec, shape)
        except ModelFileError:
            raise
        except Exception as e:
            raise self._fail(spec, e) from e

    def slices(self, spec: VariableSpec, slice_bytes: int = DEFAULT_SLICE_BYTES) -> Iterator[Slice]:
        """The variable as one Slice, or as row ranges of at most `slice_bytes` if bigger.

        Ranges mapped from the shard are checksummed as they are given: after the last one, a
        CRC-32C that differs from the checkpoint index's is a ModelFileError (the ranges given
        were corrupt; `DumpVariables` then fails the model and writes no file for it)."""
        count, rows_per = slice_plan(spec, slice_bytes)
        if count == 1:
            value = self.read(spec)
            yield Slice(0, 1, 0, spec.shape[0] if spec.shape else 0, value)
            return
        entry = self._entry(spec.key)
        crc: int | None = 0
        for i in range(count):
            start = i * rows_per
            stop = min(spec.shape[0], start + rows_per)
            value = self.read_rows(spec, start, stop)
            if crc is not None and mapped_range(value) is not None:
                crc = checksums.crc32c(value, crc)
                drop_pages(value)  # read for the checksum only: a sink may never touch them
            else:
                crc = None  # read by TensorFlow: verified there, or not at all
            yield Slice(i, count, start, stop, value)
            del value
        if crc is not None and entry is not None and checksums.mask(crc) != entry.crc32c:
            raise ModelFileError(
                f"Data shard {', '.join(self._entry_files(spec.key))} is corrupt: the bytes of "
                f"variable {spec.name!r} (offset {entry.offset}, {entry.size} bytes) do not "
                "match the checkpoint index's CRC-32C."
            )


def iter_slices(
    reader: CheckpointReader, specs: Sequence[VariableSpec], slice_bytes: int
) -> Iterator[tuple[int, VariableSpec, Slice | Exception]]:
    """(position, spec, slice) for every slice of every variable, in order. A variable that
    cannot be read gives (position, spec, the exception) and ends the iteration."""
    for order, spec in enumerate(specs):
        pieces = reader.slices(spec, slice_bytes)
        while True:
            try:
                piece = next(pieces, None)
            except Exception as e:
                yield order, spec, e
                return
            if piece is None:
                break
            yield order, spec, piece
            del piece  # before the next read: one slice in memory here, not two


class _ShardMap(mmap.mmap):
    """A read-only map of part of a data shard that remembers which file (by device and inode)
    and where in it, so that a writer can have the kernel copy the bytes (`mapped_range`)."""


@dataclasses.dataclass(frozen=True)
class MappedRange:
    """Where an array's bytes lie in a checkpoint data shard."""

    path: str
    device: int
    inode: int
    offset: int
    nbytes: int


def _map_rows(path: str, offset: int, spec: VariableSpec, shape: tuple[int, ...]) -> np.ndarray:
    """The bytes [offset, offset + size) of a data shard as a read-only array over a memory map
    of the file: no copy, and the pages are the page cache's own, so writing them out costs one
    copy instead of two (read + write), or none in user space (`mapped_range`; see
    benchmarks/RESULTS.md, DumpVariables). The mapping goes when the last view of the array
    does. A file shorter than needed is an error before mapping (touching a page past the end
    would be a SIGBUS)."""
    nbytes = math.prod(shape) * spec.numpy_dtype.itemsize
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        if offset + nbytes > stat.st_size:
            raise ModelFileError(
                f"Data shard {path} is truncated: variable {spec.name!r} needs bytes "
                f"{offset}:{offset + nbytes}, the file has {stat.st_size}."
            )
        if nbytes == 0:
            return np.empty(shape, spec.numpy_dtype)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = _ShardMap(
            f.fileno(), offset + nbytes - start, access=mmap.ACCESS_READ, offset=start
        )
    data = np.frombuffer(mapped, np.uint8, count=nbytes, offset=offset - start)
    address = data.ctypes.data - (offset - start)
    mapped.source = (os.path.abspath(path), stat.st_dev, stat.st_ino, start, address)
    return data.view(spec.numpy_dtype).reshape(shape)


def _shard_map(value) -> _ShardMap | None:
    base = value
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return base if isinstance(base, _ShardMap) else None


def drop_pages(value: np.ndarray) -> None:
    """Unmap the resident pages of a `read_rows` map (not the map): they no longer count in
    this process's memory, and come back from the page cache if `value` is read again."""
    mapped = _shard_map(value)
    if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def mapped_range(value: np.ndarray) -> MappedRange | None:
    """Where `value`'s bytes are in a data shard, if it is a contiguous view of a `read_rows`
    map (never after a copy or a pickle: those own their bytes)."""
    base = _shard_map(value)
    if base is None or not value.flags.c_contiguous:
        return None
    path, device, inode, start, address = base.source
    delta = value.ctypes.data - address
    if delta < 0 or delta + value.nbytes > len(base):
        return None
    return MappedRange(path, device, inode, start + delta, int(value.nbytes))


def slice_plan(spec: VariableSpec, slice_bytes: int) -> tuple[int, int]:
    """(number of slices, rows per slice) for `spec`."""
    if spec.dtype == "string" or not spec.shape or spec.shape[0] <= 1 or spec.nbytes <= slice_bytes:
        return 1, spec.shape[0] if spec.shape else 0
    row_bytes = max(1, spec.nbytes // spec.shape[0])
    rows_per = max(1, slice_bytes // row_bytes)
    return math.ceil(spec.shape[0] / rows_per), rows_per


def _as_array(value, spec: VariableSpec, shape: tuple[int, ...] | None = None) -> np.ndarray:
    value = np.asarray(value)
    shape = spec.shape if shape is None else shape
    if spec.dtype == "string":
        return value.astype(object).reshape(shape)
    return value.reshape(shape) if value.shape != shape else value


def read_checkpoint(
    path: str, tags: Sequence[str] | str | None = None, *, parts: bool = False
) -> dict[str, np.ndarray]:
    """Every variable of the local SavedModel at `path`: {name: ndarray} (small models)."""
    model_dir = savedmodel.resolve_model_dir(path)
    specs = list_variables(model_dir, tags, parts=parts)
    if not specs:
        return {}
    reader = CheckpointReader(model_dir)
    reader.check()
    return {spec.name: reader.read(spec) for spec in specs}
