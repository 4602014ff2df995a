"""beam_v1.variables.parquet_raw (the dump's Parquet writer) read back by pyarrow, and the
kernel-copy path of dump_files.write_bytes for ranges mapped from a checkpoint shard."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_v1.variables import checkpoint as variables
from beam_v1.variables import files as dump_files
from beam_v1.variables import parquet_raw

SCHEMA = pa.schema(
    [
        ("s", pa.string()),
        ("b", pa.binary()),
        ("lb", pa.large_binary()),
        ("flag", pa.bool_()),
        ("i", pa.int32()),
        ("j", pa.int64()),
        ("x", pa.float64()),
        ("shape", pa.list_(pa.int64())),
        ("values", pa.list_(pa.float64())),
    ]
)

_i32 = st.integers(-(2**31), 2**31 - 1)
_i64 = st.integers(-(2**63), 2**63 - 1)
_f64 = st.floats(allow_nan=False)
_row = st.fixed_dictionaries(
    {
        "s": st.none() | st.text(max_size=20),
        "b": st.none() | st.binary(max_size=40),
        "lb": st.none() | st.binary(max_size=40),
        "flag": st.none() | st.booleans(),
        "i": st.none() | _i32,
        "j": st.none() | _i64,
        "x": st.none() | _f64,
        "shape": st.none() | st.lists(st.none() | _i64, max_size=5),
        "values": st.none() | st.lists(st.none() | _f64, max_size=12),
    }
)


def _write(groups, schema=SCHEMA, **kwargs) -> bytes:
    buf = io.BytesIO()
    with parquet_raw.ParquetRawWriter(buf, schema, **kwargs) as writer:
        for rows in groups:
            writer.write_rows({f.name: [r[f.name] for r in rows] for f in schema})
    return buf.getvalue()


def _pyarrow_file(table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none")
    return sink.getvalue().to_pybytes()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_row, max_size=30), max_size=4))
def test_pyarrow_reads_back_exactly_what_was_written(groups):
    data = _write(groups)
    table = pq.read_table(pa.BufferReader(data))
    rows = [r for g in groups for r in g]
    expected = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert table.schema.equals(SCHEMA)
    assert table.equals(expected), (table.to_pylist(), rows)
    meta = pq.read_metadata(pa.BufferReader(data))
    assert meta.num_rows == len(rows)
    assert meta.num_row_groups == sum(1 for g in groups if g)
    for k, group in enumerate(g for g in groups if g):
        assert pq.ParquetFile(pa.BufferReader(data)).read_row_group(k).num_rows == len(group)


def test_parquet_schema_is_the_one_pyarrow_writes():
    """Readers that ignore the stored Arrow schema see the same Parquet types (strings as
    UTF8/String, 3-level LISTs) as in a file pyarrow writes."""
    rows = [{f.name: None for f in SCHEMA}]
    ours = pq.ParquetFile(pa.BufferReader(_write([rows]))).schema
    theirs = pq.ParquetFile(pa.BufferReader(_pyarrow_file(pa.Table.from_pylist(rows, SCHEMA))))
    assert ours.equals(theirs.schema)
    arrow = ours.to_arrow_schema()  # from the Parquet types alone
    assert arrow.field("s").type == pa.string() and arrow.field("b").type == pa.binary()
    assert arrow.field("values").type == pa.list_(pa.field("element", pa.float64()))


def test_big_binary_values_are_handed_to_write_bytes_uncopied():
    big = np.arange(parquet_raw.BIG_VALUE // 2 + 7, dtype=np.float32)  # above BIG_VALUE bytes
    handed = []

    def write_bytes(file, value):
        handed.append(value)
        file.write(parquet_raw.as_bytes(value))

    rows = [
        {**{f.name: None for f in SCHEMA}, "lb": big, "s": "big"},
        {**{f.name: None for f in SCHEMA}, "lb": b"small", "s": "small"},
        {**{f.name: None for f in SCHEMA}, "lb": memoryview(big.tobytes()), "s": "view"},
    ]
    data = _write([rows[:2], rows[2:]], write_bytes=write_bytes)
    assert len(handed) == 2 and handed[0] is big  # the array itself, not a copy of its bytes
    got = pq.read_table(pa.BufferReader(data)).column("lb").to_pylist()
    assert got == [big.tobytes(), b"small", big.tobytes()]


def test_unsupported_types_and_ragged_columns_are_refused():
    with pytest.raises(TypeError, match="'t'.*timestamp"):
        parquet_raw.ParquetRawWriter(io.BytesIO(), pa.schema([("t", pa.timestamp("s"))]))
    writer = parquet_raw.ParquetRawWriter(
        io.BytesIO(), pa.schema([("a", pa.int64()), ("b", pa.int64())])
    )
    with pytest.raises(ValueError, match="unequal lengths"):
        writer.write_rows({"a": [1, 2], "b": [1]})


# ------------------------------------------------------------ kernel copies


@pytest.fixture()
def shard(tmp_path):
    """A 'data shard' file and a mapped (read_rows-style) array over part of it."""
    data = np.random.default_rng(0).random((64, 1024)).astype(np.float32)
    path = tmp_path / "variables.data-00000-of-00001"
    path.write_bytes(b"H" * 1000 + data.tobytes())
    spec = variables.VariableSpec(
        "w", "float32", (64, 1024), "ref", True, key="w", full_shape=(64, 1024)
    )
    return path, data, variables._map_rows(str(path), 1000, spec, (64, 1024))


def test_mapped_range_locates_views_of_a_shard_and_nothing_else(shard):
    path, data, mapped = shard
    whole = variables.mapped_range(mapped)
    assert (whole.path, whole.offset, whole.nbytes) == (str(path), 1000, data.nbytes)
    rows = variables.mapped_range(mapped[5:9])
    assert (rows.offset, rows.nbytes) == (1000 + 5 * 4096, 4 * 4096)
    assert variables.mapped_range(mapped[:, :3]) is None  # not contiguous
    assert variables.mapped_range(mapped.copy()) is None
    assert variables.mapped_range(pickle.loads(pickle.dumps(mapped))) is None
    np.testing.assert_array_equal(mapped, data)


def test_write_bytes_kernel_copies_a_mapped_range(shard, tmp_path, monkeypatch):
    path, data, mapped = shard
    calls = []
    real = os.copy_file_range

    def spy(*args):
        calls.append(args[2])
        return real(*args)

    monkeypatch.setattr(os, "copy_file_range", spy)
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        f.write(b"head")
        dump_files.write_bytes(f, mapped[3:60])
        f.write(b"tail")
    assert out.read_bytes() == b"head" + data[3:60].tobytes() + b"tail"
    assert sum(calls) >= data[3:60].nbytes  # the kernel copied it

    calls.clear()
    buf = io.BytesIO()  # no file descriptor: written from memory
    dump_files.write_bytes(buf, mapped)
    assert buf.getvalue() == data.tobytes() and not calls


def test_write_bytes_never_copies_a_replaced_shard(shard, tmp_path):
    """The map keeps the old file's bytes; a new file at the same path is never copied."""
    path, data, mapped = shard
    replacement = tmp_path / "new"
    replacement.write_bytes(b"\0" * (1000 + data.nbytes))
    os.replace(replacement, path)
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        dump_files.write_bytes(f, mapped)
    assert out.read_bytes() == data.tobytes()


def test_background_copies_fill_their_range_and_report_failures(shard, tmp_path):
    path, data, mapped = shard
    copies = dump_files.BackgroundCopies()
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        dump_files.write_bytes(f, mapped[:32], copies)
        assert f.tell() == data[:32].nbytes  # moved past the range before it is copied
        f.write(b"after")
        dump_files.write_bytes(f, mapped[32:], copies)
        copies.wait()
    assert out.read_bytes() == data[:32].tobytes() + b"after" + data[32:].tobytes()

    with open(out, "rb") as read_only:  # neither the kernel nor pwrite can write here
        dump_files.write_bytes(read_only, mapped, copies)
        with pytest.raises(OSError):
            copies.wait()
