"""The checkpoint reader of beam_v1.variables.checkpoint held to TensorFlow's.

Oracles (public TensorFlow APIs only): `tf.train.load_checkpoint` (listing, `get_tensor`) and
`tf.raw_ops.RestoreV2` (a stored slice by its spec). Our index reader (`read_index`,
`list_index`) and our mapped row ranges must list and give exactly what TensorFlow does, on
every corpus checkpoint and on a fixture with several dtypes, a partitioned variable and a
variable read as row ranges; corrupt files (every single-byte flip of an index, and random
flips/truncations of index and shard) give a ModelFileError naming the file, or exact values.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path

import builders
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realmodels import REALMODELS

from beam_v1.errors import ModelFileError
from beam_v1.io import checksums, varint
from beam_v1.io.tensor_bundle import list_index, read_index
from beam_v1.model import metadata as savedmodel
from beam_v1.variables.checkpoint import CheckpointReader, iter_slices, list_variables

v1 = tf.compat.v1
FUZZ_EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "40"))


CORPUS = (
    sorted(
        str(p)
        for p in REALMODELS.iterdir()
        if p.is_dir()
        and not p.name.startswith("_")
        and os.path.isfile(
            savedmodel.checkpoint_prefix(savedmodel.resolve_model_dir(str(p))) + ".index"
        )
    )
    if REALMODELS.is_dir()
    else []
)
needs_corpus = pytest.mark.skipif(
    not CORPUS, reason=f"real-model corpus not found at {REALMODELS} (set BEAM_V1_REALMODELS)"
)


def build_mixed(path):
    """float32 (40, 3) read as row ranges, int64, string, bool, float64 scalar, and a
    (12, 4) variable in 3 partitions."""

    def make():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        dense = v1.Variable(
            np.arange(120, dtype=np.float32).reshape(40, 3) / 7, name="dense", use_resource=True
        )
        v1.Variable(np.arange(10, dtype=np.int64) * -(10**12), name="ids", use_resource=False)
        v1.Variable(np.array([b"a", b"", b"\xff\x00q" * 9]), name="words")
        v1.Variable(np.array([True, False, True, True, False]), name="flags")
        v1.Variable(np.float64(-2.5), name="scale")
        v1.get_variable(
            "emb",
            shape=[12, 4],
            dtype=tf.float32,
            initializer=v1.random_uniform_initializer(seed=3),
            partitioner=v1.fixed_size_partitioner(3),
            use_resource=False,
        )
        y = tf.identity(x @ tf.transpose(dense[:2]), "y")
        return {"serving_default": builders.predict({"x": x}, {"y": y})}, None

    return builders.build(path, make)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return build_mixed(str(tmp_path_factory.mktemp("oracle") / "mixed"))


def _prefix(model: str) -> str:
    return savedmodel.checkpoint_prefix(savedmodel.resolve_model_dir(model))


def _tf_values(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _assert_same(got: np.ndarray, want: np.ndarray, name: str) -> None:
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if want.dtype == object:
        assert got.tolist() == want.tolist(), name
    else:
        assert got.tobytes() == np.ascontiguousarray(want).tobytes(), name


def _assert_listing_equals_tf(prefix: str) -> None:
    """Names, dtypes and shapes equal TensorFlow's maps; every slice restored by RestoreV2 is
    that region of TensorFlow's whole tensor, and the slices tile it exactly."""
    ours = list_index(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    assert sorted(ours) == sorted(shapes)
    for name, tensor in ours.items():
        assert list(tensor.shape) == list(shapes[name]), name
        assert tf.as_dtype(tensor.dtype_enum) == dtypes[name], name
        if not tensor.slices:
            continue
        whole = reader.get_tensor(name)
        covered = np.zeros(tensor.shape, dtype=np.int32)
        for offset, shape in tensor.slices:
            region = tuple(slice(o, o + s) for o, s in zip(offset, shape, strict=True))
            spec = (
                " ".join(map(str, tensor.shape))
                + " "
                + ":".join(f"{o},{s}" for o, s in zip(offset, shape, strict=True))
            )
            (part,) = tf.raw_ops.RestoreV2(
                prefix=prefix, tensor_names=[name], shape_and_slices=[spec], dtypes=[dtypes[name]]
            )
            _assert_same(part.numpy(), whole[region], f"{name} {spec}")
            covered[region] += 1
        assert (covered == 1).all(), name


def _our_values(model: str, slice_bytes: int) -> dict[str, np.ndarray]:
    """Every variable as DumpVariables reads it (mapped row ranges above `slice_bytes`),
    joined; the first failure is raised."""
    specs = list_variables(model)
    reader = CheckpointReader(savedmodel.resolve_model_dir(model))
    reader.check()
    out: dict[str, np.ndarray] = {}
    for _, spec, piece in iter_slices(reader, specs, slice_bytes):
        if isinstance(piece, Exception):
            raise piece
        if piece.count == 1:
            out[spec.name] = np.array(piece.value, copy=True)
            continue
        if spec.name not in out:
            out[spec.name] = np.empty(spec.shape, spec.numpy_dtype)
        out[spec.name][piece.row_start : piece.row_stop] = piece.value
    return out


def _assert_values_equal_tf(model: str, slice_bytes: int) -> None:
    want = _tf_values(_prefix(model))
    got = _our_values(model, slice_bytes)
    assert got, model
    for name, value in got.items():
        _assert_same(value, want[name], name)


# ---------------------------------------------------------------------- corpus


@needs_corpus
@pytest.mark.parametrize("model", CORPUS, ids=os.path.basename)
def test_corpus_listing_and_values_equal_load_checkpoint(model):
    _assert_listing_equals_tf(_prefix(model))
    _assert_values_equal_tf(model, slice_bytes=256)


def test_fixture_listing_and_values_equal_load_checkpoint(mixed):
    _assert_listing_equals_tf(_prefix(mixed))
    assert len(list_index(_prefix(mixed))["emb"].slices) == 3
    for slice_bytes in (64, 1 << 20):  # `dense` as 4-row ranges mapped from the shard, and whole
        _assert_values_equal_tf(mixed, slice_bytes)


# -------------------------------------------------------------- corrupt files


def test_every_single_byte_flip_of_the_index_fails_as_tensorflow_does(mixed, tmp_path):
    """Each block's CRC-32C is checked: a flipped byte anywhere in the index is an error
    naming it exactly where TensorFlow's reader fails; where TensorFlow reads on (the footer's
    padding and unused metaindex handle) the listing still equals TensorFlow's."""
    prefix = str(tmp_path / "ckpt")
    src = _prefix(mixed)
    for path in Path(src).parent.glob("variables.data-*"):
        shutil.copy(path, prefix + path.name[len("variables") :])
    original = Path(src + ".index").read_bytes()
    index = prefix + ".index"
    tf_failed = 0
    for pos in range(len(original)):
        data = bytearray(original)
        data[pos] ^= 0xFF
        Path(index).write_bytes(bytes(data))
        try:
            tf.train.load_checkpoint(prefix)
        except Exception:
            tf_failed += 1
            with pytest.raises(ModelFileError, match=index.replace(".", r"\.")):
                read_index(prefix)
            continue
        _assert_listing_equals_tf(prefix)
    assert tf_failed > len(original) - 48  # every byte outside the footer is checked


def _corrupt(path: str, flips: list[tuple[float, int]], cut: float | None) -> None:
    data = bytearray(Path(path).read_bytes())
    for where, xor in flips:
        data[min(len(data) - 1, int(where * len(data)))] ^= xor
    if cut is not None:
        del data[int(cut * len(data)) :]
    Path(path).write_bytes(bytes(data))


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    target=st.sampled_from(["index", "shard"]),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
    cut=st.none() | st.floats(0, 1, exclude_max=True),
)
def test_flipped_or_truncated_files_give_a_named_error_or_exact_values(mixed, target, flips, cut):
    """Never wrong values, a hang or a crash: a ModelFileError naming the damaged file, or
    values bit-equal to TensorFlow's on the intact checkpoint."""
    want = _tf_values(_prefix(mixed))
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "m")
        shutil.copytree(mixed, model)
        folder = os.path.join(model, "variables")
        (shard,) = [f for f in os.listdir(folder) if f.startswith("variables.data-")]
        path = os.path.join(folder, "variables.index" if target == "index" else shard)
        _corrupt(path, flips, cut)
        for slice_bytes in (64, 1 << 20):
            try:
                got = _our_values(model, slice_bytes)
            except ModelFileError as e:
                assert path in str(e), str(e)
                continue
            assert sorted(got) == sorted(want)
            for name, value in got.items():
                _assert_same(value, want[name], name)


# -------------------------------------------------------- Snappy-compressed index


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB table block, one restart point per entry (no key sharing)."""
    body, restarts = bytearray(), []
    for key, value in entries:
        restarts.append(len(body))
        body += varint.encode(0) + varint.encode(len(key)) + varint.encode(len(value))
        body += key + value
    body += b"".join(struct.pack("<I", r) for r in restarts or [0])
    return bytes(body + struct.pack("<I", len(restarts or [0])))


def _table(entries: list[tuple[bytes, bytes]], per_block: int = 2) -> bytes:
    """A table whose data and index blocks are raw-Snappy compressed (TensorFlow's BundleWriter
    never writes one; LevelDB's format allows it)."""
    out = bytearray()

    def put(contents: bytes) -> bytes:
        compressed = pa.Codec("snappy").compress(contents, asbytes=True)
        handle = varint.encode(len(out)) + varint.encode(len(compressed))
        out.extend(compressed + b"\x01")
        out.extend(struct.pack("<I", checksums.masked_crc32c(compressed + b"\x01")))
        return handle

    index = []
    for k in range(0, len(entries), per_block):
        chunk = entries[k : k + per_block]
        index.append((chunk[-1][0], put(_block(chunk))))
    meta = put(_block([]))
    footer = meta + put(_block(index))
    out += footer + bytes(40 - len(footer)) + bytes.fromhex("57fb808b247547db")
    return bytes(out)


def test_a_snappy_compressed_index_reads_as_tensorflow_reads_it(mixed, tmp_path):
    header, entries = read_index(_prefix(mixed))
    rows = [(b"", header.SerializeToString())]
    rows += [(k, e.SerializeToString()) for k, e in sorted(entries.items())]
    prefix = str(tmp_path / "snappy")
    Path(prefix + ".index").write_bytes(_table(rows))
    for path in Path(_prefix(mixed)).parent.glob("variables.data-*"):
        shutil.copy(path, prefix + path.name[len("variables") :])
    got_header, got_entries = read_index(prefix)
    assert got_header == header and got_entries == entries
    _assert_listing_equals_tf(prefix)  # TensorFlow reads the crafted table too
    want = _tf_values(_prefix(mixed))
    for name, value in _tf_values(prefix).items():
        _assert_same(value, want[name], name)
