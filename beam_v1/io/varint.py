"""Base-128 varints, as protobuf and Thrift's compact protocol write them."""

from __future__ import annotations


def encode(value: int) -> bytes:
    """`value` as a varint; a negative int64 as protobuf writes it (two's complement, 10 bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `buf[pos]`."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
