"""Checksums: CRC-32C as TensorFlow's files use it (TFRecord framing, checkpoint bundle
entries), and the CRC-32 of zip members."""

from __future__ import annotations

import google_crc32c
import numpy as np


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of `data` (bytes, or a C-contiguous array: read in place), continuing `crc`."""

    if isinstance(data, np.ndarray):
        data = data.reshape(-1).view(np.uint8)
    return google_crc32c.extend(crc, data)


def mask(crc: int) -> int:
    """TensorFlow's masked form of a CRC-32C: rotated right by 15 bits, plus a constant."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    return mask(crc32c(data))


def crc32(data, crc: int = 0) -> int:
    """CRC-32 (zip, gzip) of a bytes-like `data`, continuing `crc`: ISA-L's when installed
    (the [fast] extra; faster, see benchmarks/RESULTS.md), else zlib's; the values are equal."""
    try:
        from isal.isal_zlib import crc32 as fast  # optional: the [fast] extra
    except ImportError:  # no wheel for this platform
        import zlib

        return zlib.crc32(data, crc)
    return fast(data, crc)
