"""The one table of TensorFlow dtypes: DataType enum <-> name <-> numpy dtype <-> Arrow type.

A leaf: imports nothing of beam_v1 and not TensorFlow. Names are TensorFlow's own
(`tf.as_dtype(enum).name`: `float32`, `float16`, `bfloat16`, `string`, `resource`, ...), with
`_ref` appended for a reference dtype (its enum is the base's + 100). The enum numbers are the
wire values of tensorflow/core/framework/types.proto, which never change;
tests/test_dtypes.py holds this table to TensorFlow's.

numpy dtypes are TensorFlow's too (`DType.as_numpy_dtype`): strings as `object` (bytes
objects), bfloat16 / float8 / int4 from `ml_dtypes` (a TensorFlow dependency, imported on first
use), quantized types as TensorFlow's one-field structured dtypes. Arrow types are those a
tensor is written to Parquet as: strings as `binary`, bool / integers / IEEE floats as
themselves; other dtypes (complex, bfloat16, quantized, resource, ...) have none.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

REF_SUFFIX = "_ref"
_REF_OFFSET = 100
INVALID = "invalid"  # the name of DT_INVALID (0): a proto field left unset

# name -> (DataType enum, numpy dtype): a numpy dtype name, "ml_dtypes.<name>", "q:<numpy
# name>" for a quantized type (TensorFlow's structured dtype), or None when there is none.
_TABLE: dict[str, tuple[int, str | None]] = {
    "float32": (1, "float32"),
    "float64": (2, "float64"),
    "int32": (3, "int32"),
    "uint8": (4, "uint8"),
    "int16": (5, "int16"),
    "int8": (6, "int8"),
    "string": (7, "object"),
    "complex64": (8, "complex64"),
    "int64": (9, "int64"),
    "bool": (10, "bool"),
    "qint8": (11, "q:int8"),
    "quint8": (12, "q:uint8"),
    "qint32": (13, "q:int32"),
    "bfloat16": (14, "ml_dtypes.bfloat16"),
    "qint16": (15, "q:int16"),
    "quint16": (16, "q:uint16"),
    "uint16": (17, "uint16"),
    "complex128": (18, "complex128"),
    "float16": (19, "float16"),
    "resource": (20, None),
    "variant": (21, None),
    "uint32": (22, "uint32"),
    "uint64": (23, "uint64"),
    "float8_e5m2": (24, "ml_dtypes.float8_e5m2"),
    "float8_e4m3fn": (25, "ml_dtypes.float8_e4m3fn"),
    "float8_e4m3fnuz": (26, "ml_dtypes.float8_e4m3fnuz"),
    "float8_e4m3b11fnuz": (27, "ml_dtypes.float8_e4m3b11fnuz"),
    "float8_e5m2fnuz": (28, "ml_dtypes.float8_e5m2fnuz"),
    "int4": (29, "ml_dtypes.int4"),
    "uint4": (30, "ml_dtypes.uint4"),
    "int2": (31, "ml_dtypes.int2"),
    "uint2": (32, "ml_dtypes.uint2"),
    "float4_e2m1fn": (33, "ml_dtypes.float4_e2m1fn"),
}
_NAME_BY_ENUM = {enum: name for name, (enum, _) in _TABLE.items()}
_FLOATING = frozenset(n for n in _TABLE if n.startswith(("float", "bfloat")))
_numpy_cache: dict[str, np.dtype] = {}


def base_name(name: str) -> str:
    """`name` without its `_ref` suffix (`float32_ref` -> `float32`)."""
    return name[: -len(REF_SUFFIX)] if name.endswith(REF_SUFFIX) else name


def is_ref(name: str) -> bool:
    return name.endswith(REF_SUFFIX)


def name_of(enum: int) -> str:
    """TensorFlow's name of DataType `enum` (`1` -> `float32`, `101` -> `float32_ref`);
    `invalid` for 0, `unknown(<enum>)` for an enum this table does not know."""
    if enum == 0:
        return INVALID
    ref = enum > _REF_OFFSET
    name = _NAME_BY_ENUM.get(enum - _REF_OFFSET if ref else enum)
    if name is None:
        return f"unknown({enum})"
    return name + (REF_SUFFIX if ref else "")


def enum_of(name: str) -> int:
    """The DataType enum of `name` (`float32_ref` -> 101). Raises ValueError if unknown."""
    try:
        enum = _TABLE[base_name(name)][0]
    except KeyError:
        raise ValueError(f"Unknown TensorFlow dtype {name!r}.") from None
    return enum + (_REF_OFFSET if is_ref(name) else 0)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype TensorFlow feeds and fetches a tensor of dtype `name` (or its `_ref`)
    as. Raises ValueError for a dtype with none (`resource`, `variant`) or an unknown name."""
    base = base_name(name)
    found = _numpy_cache.get(base)
    if found is not None:
        return found
    spec = _TABLE.get(base, (0, None))[1]
    if spec is None:
        known = "unknown" if base not in _TABLE else "has no numpy dtype"
        raise ValueError(f"TensorFlow dtype {name!r} {known}.")
    if spec.startswith("ml_dtypes."):
        import ml_dtypes  # on first use only: its C extension is slow to start

        found = np.dtype(getattr(ml_dtypes, spec.split(".", 1)[1]))
    elif spec.startswith("q:"):
        found = np.dtype([(base, spec[2:])])
    else:
        found = np.dtype(spec)
    _numpy_cache[base] = found
    return found


def arrow_type(name: str) -> pa.DataType | None:
    """The Arrow type of one value of a tensor of dtype `name` in Parquet (`string` ->
    `binary`), or None for a dtype Parquet cannot hold as such (complex, bfloat16, ...)."""
    base = base_name(name)
    if base == "string":
        return pa.binary()
    spec = _TABLE.get(base, (0, None))[1]
    if spec is None or spec.startswith(("ml_dtypes.", "q:")) or spec.startswith("complex"):
        return None
    return pa.from_numpy_dtype(np.dtype(spec))


def is_floating(name: str) -> bool:
    """Whether `name` is a floating-point dtype, as TensorFlow's `DType.is_floating`
    (float16/32/64, bfloat16, float8 and float4 types)."""
    return base_name(name) in _FLOATING
