"""TensorFlow's checkpoint format (the "tensor bundle"), read without TensorFlow's reader.

A V2 checkpoint at `prefix` is `prefix.index`, a LevelDB-format table (blocks of
prefix-compressed keys, each block with a masked CRC-32C; tensorflow/core/lib/io/table*)
mapping each tensor's key to a `BundleEntryProto` (dtype, shape, shard, offset, size,
CRC-32C, or slices), plus the data shards `prefix.data-SSSSS-of-NNNNN` holding the bytes.
`read_index` parses the index as TensorFlow's reader does, checking everything it checks;
`list_index` lists the tensors; `shard_path` / `shard_files` name the shards. The protos
come from TensorFlow's package (imported on first read). Nothing here knows SavedModels.
"""

from __future__ import annotations

import dataclasses
import glob as glob_module
import struct
from collections.abc import Iterator

import pyarrow as pa

from beam_v1 import dtypes
from beam_v1.errors import ModelFileError
from beam_v1.io import checksums, varint

_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")
_BLOCK_TRAILER = 5  # compression type byte + masked CRC-32C
_FOOTER = 48  # two block handles padded to 40 bytes, then the magic number
_NO_COMPRESSION, _SNAPPY = 0, 1


class _TableError(Exception):
    pass


def _read_block(data: bytes, offset: int, size: int) -> bytes:
    """The contents of the block at (offset, size), as TensorFlow's table reader gives them
    (tensorflow/core/lib/io/format.cc ReadBlock): the trailer's CRC-32C, masked, must be that
    of the block's bytes and its type byte; type 0 is raw, 1 raw Snappy, anything else an
    error."""
    end = offset + size + _BLOCK_TRAILER
    if offset < 0 or size < 0 or end > len(data) - _FOOTER:
        raise _TableError(f"block {offset}+{size} lies outside the table")
    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if checksums.masked_crc32c(data[offset : offset + size + 1]) != stored:
        raise _TableError(f"block checksum mismatch (block at {offset}, {size} bytes)")
    block = data[offset : offset + size]
    compression = data[offset + size]
    if compression == _SNAPPY:
        length, _ = varint.decode(block, 0)
        try:
            return pa.Codec("snappy").decompress(block, decompressed_size=length).to_pybytes()
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _TableError(f"corrupted compressed block contents at {offset}: {e}") from e
    if compression != _NO_COMPRESSION:
        raise _TableError(f"bad block type {compression} at {offset}")
    return block


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a table block, bounds-checked as TensorFlow's Block does."""
    size = len(block)
    if size < 4:
        raise _TableError("block too short for its restart count")
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    if restarts > (size - 4) // 4:
        raise _TableError(f"block claims {restarts} restart points in {size} bytes")
    limit = size - 4 - 4 * restarts
    pos, key = 0, b""
    while pos < limit:
        shared, pos = varint.decode(block, pos)
        own, pos = varint.decode(block, pos)
        length, pos = varint.decode(block, pos)
        if shared > len(key) or pos + own + length > limit:
            raise _TableError(f"bad entry in block at byte {pos}")
        key = key[:shared] + block[pos : pos + own]
        pos += own
        yield key, block[pos : pos + length]
        pos += length


def _handle(data: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = varint.decode(data, pos)
    size, pos = varint.decode(data, pos)
    return offset, size, pos


def read_index(prefix: str):
    """(BundleHeaderProto, {key: BundleEntryProto}) from `prefix.index` (a LevelDB table).

    Held to TensorFlow's reader: the footer's magic number, every block's CRC-32C, block
    bounds and types are checked; an index that fails any check is a ModelFileError naming
    the file. Raw Snappy blocks (which TensorFlow's BundleWriter does not write) are
    decompressed by pyarrow."""
    from tensorflow.core.protobuf import tensor_bundle_pb2  # deferred: TensorFlow start-up

    path = prefix + ".index"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelFileError(f"The checkpoint index {path} cannot be read: {e}") from e
    if len(data) < _FOOTER or data[-8:] != _TABLE_MAGIC:
        raise ModelFileError(f"The checkpoint index {path} is corrupt (no table footer).")
    try:
        _, _, pos = _handle(data, len(data) - _FOOTER)  # the metaindex: unused, as in TF
        index_offset, index_size, _ = _handle(data, pos)
        header, entries = None, {}
        for _, handle in _block_entries(_read_block(data, index_offset, index_size)):
            offset, size, _ = _handle(handle, 0)
            for key, value in _block_entries(_read_block(data, offset, size)):
                if key == b"":
                    header = tensor_bundle_pb2.BundleHeaderProto.FromString(value)
                else:
                    entries[key] = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        if header is None:
            raise _TableError("no bundle header entry")
    except Exception as e:  # _TableError, IndexError, struct.error, DecodeError, ValueError
        raise ModelFileError(f"The checkpoint index {path} is corrupt: {e}") from e
    return header, entries


@dataclasses.dataclass(frozen=True)
class IndexedTensor:
    """One tensor as the checkpoint index lists it (what `tf.train.load_checkpoint` lists)."""

    name: str
    dtype_enum: int  # TensorFlow's DataType enum
    shape: tuple[int, ...]
    slices: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (offset, shape) per slice

    @property
    def dtype(self) -> str:
        """TensorFlow's name of `dtype_enum` (`float32`, `string`, ...)."""
        return dtypes.name_of(self.dtype_enum)


def list_index(prefix: str) -> dict[str, IndexedTensor]:
    """Every tensor of the checkpoint at `prefix` by name, from our index reader alone: the
    slice entries of a partitioned tensor are listed under it, not on their own (TensorFlow's
    CheckpointReader does the same)."""
    _, entries = read_index(prefix)
    found = {}
    for key, entry in entries.items():
        if key.startswith(b"\x00"):  # a slice's own key (TF names cannot hold NUL)
            continue
        shape = tuple(d.size for d in entry.shape.dim)
        slices = []
        for proto in entry.slices:
            offsets, sizes = [], []
            for dim, extent in zip(shape, proto.extent, strict=False):
                has_length = extent.HasField("length")
                offsets.append(extent.start)
                sizes.append(extent.length if has_length else dim - extent.start)
            for dim in shape[len(proto.extent) :]:  # extents left out span their dimension
                offsets.append(0)
                sizes.append(dim)
            slices.append((tuple(offsets), tuple(sizes)))
        name = key.decode("utf-8", "replace")
        found[name] = IndexedTensor(name, entry.dtype, shape, tuple(slices))
    return found


def shard_path(prefix: str, shard_id: int, num_shards: int) -> str:
    """The data shard `shard_id` of `num_shards` (`prefix.data-00000-of-00001`)."""
    return f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}"


def shard_files(prefix: str) -> list[str]:
    """The data shard files present beside `prefix` (`prefix.data-*-of-*`), sorted."""
    return sorted(glob_module.glob(glob_module.escape(prefix) + ".data-*-of-*"))
