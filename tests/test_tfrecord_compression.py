"""TFRecord input against TensorFlow: files written by `tf.io.TFRecordWriter` (uncompressed,
GZIP, ZLIB) read by `beam_v1.io.tfrecord.read_records` give exactly the records
`tf.data.TFRecordDataset(path, compression_type=...)` yields, and a ZLIB file scored by
`python -m beam_v1 score --input-format tfrecord` equals a direct session run.

BEAM_V1_FUZZ_EXAMPLES raises the number of generated files (default 25).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import builders
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_output_readers import assert_readers_agree

from beam_v1.errors import BeamV1Error
from beam_v1.io import tfrecord

v1 = tf.compat.v1
EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TF_TYPES = ["", "GZIP", "ZLIB"]  # tf.io.TFRecordOptions.compression_type

# ------------------------------------------------------------------------ generated records

keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=6)
features = st.one_of(
    st.lists(st.floats(width=32, allow_nan=False), max_size=5).map(
        lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))
    ),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5).map(
        lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))
    ),
    st.lists(st.binary(max_size=40), max_size=4).map(
        lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
    ),
)
examples = st.dictionaries(keys, features, max_size=5).map(
    lambda f: tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()
)
# tf.Examples (an empty one serializes to b""), empty records, and other bytes
records = st.lists(st.one_of(examples, st.just(b""), st.binary(max_size=300)), max_size=12)


def write_tf(path: Path, payloads: list[bytes], compression_type: str) -> str:
    options = tf.io.TFRecordOptions(compression_type=compression_type)
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for p in payloads:
            writer.write(p)
    return str(path)


def read_tf(path: str, compression_type: str) -> list[bytes]:
    dataset = tf.data.TFRecordDataset(path, compression_type=compression_type)
    return [r.numpy() for r in dataset]


@FUZZ
@given(
    payloads=records,
    compression_type=st.sampled_from(TF_TYPES),
    name=st.sampled_from(["data.tfrecord", "data.tfrecord.gz", "data.zlib", "data"]),
)
def test_records_equal_tensorflows_for_every_compression(tmp_path_factory, payloads,
                                                         compression_type, name):
    """Auto-detection ignores the name (any name may hold any compression); the explicit
    TensorFlow name reads the same."""
    path = write_tf(tmp_path_factory.mktemp("rec") / name, payloads, compression_type)
    truth = read_tf(path, compression_type)
    assert truth == payloads  # the oracle itself
    assert list(tfrecord.read_records(path)) == truth
    assert list(tfrecord.read_records(path, compression_type)) == truth


@pytest.mark.parametrize("compression_type", TF_TYPES)
def test_large_records_across_inflate_steps(tmp_path, compression_type):
    """Records larger than one inflate step (64 KiB compressed), compressible and not."""
    rng = np.random.default_rng(0)
    payloads = [bytes(300_000), rng.bytes(200_000), b"", rng.bytes(70_000) * 3, b"end"]
    path = write_tf(tmp_path / "big", payloads, compression_type)
    assert list(tfrecord.read_records(path)) == read_tf(path, compression_type) == payloads


@pytest.mark.parametrize("compression_type", TF_TYPES)
def test_a_file_without_records(tmp_path, compression_type):
    path = write_tf(tmp_path / "empty", [], compression_type)
    assert list(tfrecord.read_records(path)) == read_tf(path, compression_type) == []


def test_concatenated_zlib_streams(tmp_path):
    """Two ZLIB files appended (as `cat a b`) read as their records in order, as
    concatenated GZIP members do."""
    a = Path(write_tf(tmp_path / "a", [b"one", b"two"], "ZLIB")).read_bytes()
    b = Path(write_tf(tmp_path / "b", [b"three"], "ZLIB")).read_bytes()
    (tmp_path / "ab").write_bytes(a + b)
    assert list(tfrecord.read_records(str(tmp_path / "ab"))) == [b"one", b"two", b"three"]


@pytest.mark.parametrize(
    ("written", "asked", "found"),
    [("ZLIB", "gzip", "zlib"), ("GZIP", "ZLIB", "gzip"), ("ZLIB", "", "zlib"),
     ("", "gzip", "none")],
)
def test_an_explicit_compression_the_file_contradicts_is_named(tmp_path, written, asked, found):
    path = write_tf(tmp_path / "f.tfrecord", [b"x" * 50], written)
    with pytest.raises(BeamV1Error, match=f"asked for, but the file starts like a '{found}'"):
        list(tfrecord.read_records(path, asked))


def test_not_a_tfrecord_file_and_unknown_compression_are_named(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is text and no TFRecord")
    with pytest.raises(BeamV1Error, match="notes.txt: not a TFRecord file, or its first"):
        list(tfrecord.read_records(str(path)))
    damaged = bytearray(Path(write_tf(tmp_path / "f", [b"abc"], "")).read_bytes())
    damaged[9] ^= 1  # the first length checksum
    (tmp_path / "f").write_bytes(bytes(damaged))
    with pytest.raises(BeamV1Error, match="its first record is damaged"):
        list(tfrecord.read_records(str(tmp_path / "f")))
    with pytest.raises(BeamV1Error, match="record 0 at byte 0: corrupt TFRecord: the length"):
        list(tfrecord.read_records(str(tmp_path / "f"), "none"))
    with pytest.raises(BeamV1Error, match=r"compression 'snappy': use one of"):
        tfrecord.compression_name("snappy")


@pytest.mark.parametrize("compression_type", ["GZIP", "ZLIB"])
def test_damaged_compressed_files_fail_named(tmp_path, compression_type):
    """A flipped byte inside the compressed stream, or a cut-off file: a BeamV1Error naming
    the file, never wrong records."""
    payloads = [bytes(range(256)) * 20, b"second", b"third" * 100]
    path = Path(write_tf(tmp_path / "f", payloads, compression_type))
    raw = path.read_bytes()
    damaged = bytearray(raw)
    damaged[len(raw) // 2] ^= 0x55
    for name, data in {"flip": bytes(damaged), "cut": raw[: len(raw) * 2 // 3]}.items():
        target = tmp_path / name
        target.write_bytes(data)
        with pytest.raises(BeamV1Error, match=name):
            list(tfrecord.read_records(str(target)))


# ------------------------------------------------------------------------ end to end


def build_parse_model(path: str) -> str:
    """serialized tf.Example -> parse_example {x: float32[3] required, k: int64 [] default 2}
    -> y = sum(x) * k (float32), z = x * 2 ([-1,3])."""

    def make():
        serialized = v1.placeholder(tf.string, [None], name="examples")
        parsed = v1.io.parse_example(serialized, {
            "x": v1.io.FixedLenFeature([3], tf.float32),
            "k": v1.io.FixedLenFeature([], tf.int64, default_value=2),
        })
        y = tf.identity(tf.reduce_sum(parsed["x"], 1) * tf.cast(parsed["k"], tf.float32), "y")
        z = tf.identity(parsed["x"] * 2.0, "z")
        return {"serving_default": builders.predict({"examples": serialized},
                                                    {"y": y, "z": z})}, None

    return builders.build(path, make)


def session_run(model: str, serialized: list[bytes]) -> dict[str, np.ndarray]:
    graph = tf.Graph()
    with v1.Session(graph=graph) as sess:
        meta = v1.saved_model.loader.load(sess, ["serve"], model)
        sig = meta.signature_def["serving_default"]
        fetches = {k: v.name for k, v in sig.outputs.items()}
        return sess.run(fetches, {sig.inputs["examples"].name: serialized})


def test_score_command_reads_zlib_input_like_a_session_run(tmp_path):
    """`python -m beam_v1 score --input-format tfrecord --decode-features` on two ZLIB files
    (one named .zlib, one with no hint in its name) and a GZIP one: every record scored,
    values equal to the session run on the same serialized examples; the decoded features
    are the records' own, and DuckDB and Polars read the output as pyarrow does."""
    model = build_parse_model(str(tmp_path / "model"))
    rng = np.random.default_rng(1)
    payloads = []
    for i in range(30):
        feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(
            value=rng.normal(size=3).astype(np.float32)))}
        if i % 3:
            feature["k"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))
        payloads.append(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
    data = tmp_path / "data"
    data.mkdir()
    write_tf(data / "part-0.zlib", payloads[:10], "ZLIB")
    write_tf(data / "part-1.tfrecord", payloads[10:25], "ZLIB")
    write_tf(data / "part-2.tfrecord.gz", payloads[25:], "GZIP")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    done = subprocess.run(
        [sys.executable, "-m", "beam_v1", "score", "--model", model, "--input",
         str(data / "part-*"), "--input-format", "tfrecord", "--output", str(tmp_path / "out"),
         "--decode-features", "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = assert_readers_agree(sorted(str(p) for p in tmp_path.glob("out-0*.parquet")))
    assert out.num_rows == 30
    decoded = {tuple(x): k for x, k in zip(out.column("x").to_pylist(),
                                           out.column("k").to_pylist())}
    for record in payloads:
        example = tf.train.Example.FromString(record).features.feature
        x = tuple(np.float32(example["x"].float_list.value).tolist())
        assert decoded[x] == (list(example["k"].int64_list.value) if "k" in example else None)
    assert not list(tmp_path.glob("out-failed-0*.parquet")) or pq.read_table(
        sorted(str(p) for p in tmp_path.glob("out-failed-0*.parquet"))).num_rows == 0
    truth = session_run(model, payloads)
    # records of different files may come in any order: match rows on z (x*2, unique here)
    got = {tuple(z): y for z, y in zip(out.column("z").to_pylist(), out.column("y").to_pylist())}
    assert len(got) == 30
    for z, y in zip(truth["z"].tolist(), truth["y"].tolist()):
        assert got[tuple(np.float32(z).tolist())] == np.float32(y)


def test_explicit_compression_flag_and_api(tmp_path, capsys):
    """`--compression zlib` (as tf.data's compression_type) scores a ZLIB file like the
    session; `--compression gzip` on it fails naming both compressions; the API's
    `compression=` refuses Parquet input, naming why."""
    from beam_v1.cli.main import main
    from beam_v1.scoring.job import score

    model = build_parse_model(str(tmp_path / "model"))
    payloads = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[i, 1.0, -2.5]))}))
        .SerializeToString() for i in range(7)]
    path = write_tf(tmp_path / "in.tfrecord", payloads, "ZLIB")
    common = ["score", "--model", model, "--input", path, "--input-format", "tfrecord", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "out"), "--compression", "zlib"]) == 0
    out = pq.read_table(sorted(str(p) for p in tmp_path.glob("out-0*.parquet")))
    truth = session_run(model, payloads)
    assert sorted(out.column("y").to_pylist()) == sorted(truth["y"].tolist())
    assert main([*common, "--output", str(tmp_path / "o2"), "--compression", "gzip"]) != 0
    err = capsys.readouterr().err
    assert "compression 'gzip' was asked for, but the file starts like a 'zlib'" in err
    with pytest.raises(BeamV1Error, match="--compression applies to --input-format tfrecord"):
        score(model, path, str(tmp_path / "o3"), compression="zlib", progress=False)


def test_zlib_is_what_tensorflow_writes(tmp_path):
    """Guard on the oracle: TensorFlow's ZLIB option writes one RFC 1950 stream."""
    raw = Path(write_tf(tmp_path / "f", [b"abc"], "ZLIB")).read_bytes()
    assert zlib.decompress(raw)[12:15] == b"abc"
