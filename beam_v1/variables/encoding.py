"""How a dump stores a variable's value, shared by its writer and its reader.

`to_bytes` / `from_bytes`: the lossless bytes of a Parquet dump's `data` column (little-endian,
C order; strings as (u64 length, bytes)*). An `.npy` header cannot record every dtype
(bfloat16 becomes raw `<V2`): `npy_loses_dtype` says which, and a dump's npz lists them as
JSON under `NPZ_DTYPES_KEY`, in its zip comment or, when too long, in member
`NPZ_DTYPES_MEMBER`.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np

from beam_v1 import dtypes

NPZ_DTYPES_KEY = "beam_v1_dtypes"
NPZ_DTYPES_MEMBER = "~beam_v1~/dtypes.json"  # when the list is too long for the zip comment


def npy_loses_dtype(name: str) -> bool:
    """Whether an .npy header cannot record this dtype (bfloat16 becomes raw '<V2')."""
    if name == "string":
        return False
    dtype = dtypes.numpy_dtype(name)
    return np.lib.format.descr_to_dtype(np.lib.format.dtype_to_descr(dtype)) != dtype


def to_bytes(value: np.ndarray, dtype: str) -> bytes:
    """Lossless bytes of an array: little-endian C order; strings as (u64 length, bytes)*."""
    if dtype == "string":
        out = io.BytesIO()
        for item in np.asarray(value, dtype=object).reshape(-1):
            item = item if isinstance(item, bytes) else str(item).encode("utf-8")
            out.write(struct.pack("<Q", len(item)))
            out.write(item)
        return out.getvalue()
    arr = np.ascontiguousarray(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def from_bytes(data: bytes, dtype: str, shape: Sequence[int]) -> np.ndarray:
    """The array of `to_bytes`'s bytes, of `shape`: a read-only view of `data` for numeric
    dtypes, bytes objects for strings."""
    if dtype == "string":
        items, pos = [], 0
        while pos < len(data):
            (n,) = struct.unpack_from("<Q", data, pos)
            items.append(bytes(data[pos + 8 : pos + 8 + n]))
            pos += 8 + n
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(tuple(shape))
    little = dtypes.numpy_dtype(dtype).newbyteorder("<")
    return np.frombuffer(data, dtype=little).reshape(tuple(shape))
