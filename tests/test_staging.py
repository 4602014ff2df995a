"""Model staging through a real S3-compatible server (moto's, on 127.0.0.1) and Beam's own `s3://`
filesystem: one copy per machine, shared by concurrent processes, removed after the last user."""

from __future__ import annotations

import collections
import glob
import hashlib
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

import staging_child  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

import beam_v1  # noqa: E402
from beam_v1.io import staging  # noqa: E402

BUCKET = "models"
SERVER_START_SECONDS = 60


def tf_reference(path, feeds):
    """serving_default of the SavedModel at `path`, run by TensorFlow's own TF1 loader."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        sig = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path).signature_def[
            "serving_default"
        ]
        keys = sorted(sig.outputs)
        values = sess.run(
            [sig.outputs[k].name for k in keys],
            feed_dict={sig.inputs[k].name: v for k, v in feeds.items()},
        )
    return dict(zip(keys, values))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """(Beam S3 flags, request log) of a moto server started here, stopped with its group."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"moto server did not start on port {port} (exit {proc.poll()})")
            time.sleep(0.2)
    args = [
        f"--s3_endpoint_url=http://127.0.0.1:{port}",
        "--s3_access_key_id=testing",
        "--s3_secret_access_key=testing",
        "--s3_region_name=us-east-1",
        "--s3_disable_ssl",
    ]
    FileSystems.set_options(PipelineOptions(args))
    _client(args).create_bucket(Bucket=BUCKET)
    yield args, str(log_path)
    FileSystems.set_options(PipelineOptions([]))
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log.close()


@pytest.fixture
def s3_args(s3_server):
    return s3_server[0]


def downloads(s3_server, key: str) -> dict[str, int]:
    """{file under s3://BUCKET/key: GET requests the server logged for it} (its own log)."""
    time.sleep(0.5)  # the server logs a request after answering it
    with open(s3_server[1], errors="replace") as f:
        found = re.findall(rf"GET /{BUCKET}/{re.escape(key)}/([^ ?]+) HTTP", f.read())
    return dict(collections.Counter(found))


def _client(args):
    endpoint = args[0].split("=", 1)[1]
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def upload(args, local_dir: str, key: str) -> str:
    """Upload the folder `local_dir` under `s3://BUCKET/key`; returns that URL."""
    client = _client(args)
    for folder, _, names in os.walk(local_dir):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, "/")
            client.upload_file(path, BUCKET, f"{key}/{relative}")
    return f"s3://{BUCKET}/{key}"


@pytest.fixture
def staging_root(tmp_path, monkeypatch):
    root = tmp_path / "staging"
    monkeypatch.setenv(staging.STAGING_DIR_ENV, str(root))
    return root


def _entries(root) -> list[str]:
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def _tree_digest(folder: str) -> dict[str, str]:
    out = {}
    for sub, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(sub, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


# ------------------------------------------------------------------ one process


def test_load_from_s3_predicts_as_the_local_model(built_models, s3_args, staging_root):
    local = built_models["mlp"]
    url = upload(s3_args, local, "load/mlp")
    x = np.random.RandomState(3).normal(size=(17, 4)).astype(np.float32)
    model = beam_v1.load(url)
    got = model.predict({"x": x})
    want = tf_reference(local, {"x": x})
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-6)
    np.testing.assert_array_equal(got["label"], want["label"])
    assert _entries(staging_root) == []  # load's copy is removed once the session holds the model


def test_acquire_copies_the_folder_and_the_last_release_removes_it(
    built_models, s3_args, staging_root
):
    local = built_models["string_lookup"]  # has an assets/ folder
    url = upload(s3_args, local, "hold/lookup")
    first = staging.acquire(url)
    assert os.path.dirname(first) == str(staging_root)
    assert _tree_digest(first) == _tree_digest(local)
    assert staging.acquire(url + "/") == first  # nested holds in one process, same URL
    assert staging.release(url) is True
    assert os.path.isdir(first)
    assert staging.release(url + "/") is True
    assert not os.path.exists(first)
    assert _entries(staging_root) == []  # no lock, registration or part folder left either
    assert staging.release(url) is False  # nothing held any more


def test_a_changed_model_is_staged_anew(built_models, s3_args, staging_root):
    url = upload(s3_args, built_models["mlp"], "changed/mlp")
    with staging.staged_model(url) as before:
        old = _tree_digest(before)
    _client(s3_args).put_object(Bucket=BUCKET, Key="changed/mlp/assets/extra.txt", Body=b"new")
    with staging.staged_model(url) as after:
        assert os.path.basename(after) != os.path.basename(before)
        assert _tree_digest(after) == {
            **old,
            os.path.join("assets", "extra.txt"): hashlib.sha256(b"new").hexdigest(),
        }
    assert _entries(staging_root) == []


def test_local_models_pass_through_and_are_never_removed(built_models, staging_root):
    local = built_models["mlp"]
    before = _tree_digest(local)
    assert staging.acquire(local) == local
    assert staging.release(local) is False
    with staging.staged_model(local) as same:
        assert same == local
    assert staging.local_model_dir(local) == local
    assert _tree_digest(local) == before
    assert _entries(staging_root) == []


def test_missing_remote_model_is_a_clear_error(s3_args, staging_root):
    with pytest.raises(beam_v1.errors.ModelFileError, match="empty or does not exist"):
        staging.acquire(f"s3://{BUCKET}/no/such/model")
    assert _entries(staging_root) == []


def test_big_files_are_copied_in_byte_ranges(s3_server, s3_args, tmp_path):
    src = tmp_path / "src"
    (src / "variables").mkdir(parents=True)
    rng = np.random.RandomState(5)
    (src / "variables" / "big.data").write_bytes(rng.bytes(1_500_000))
    (src / "small.pb").write_bytes(rng.bytes(1000))
    (src / "empty").write_bytes(b"")
    url = upload(s3_args, str(src), "ranges/m")
    dest = tmp_path / "dest"
    dest.mkdir()
    pieces = staging.copy_tree(url, str(dest), range_bytes=128 << 10)
    big = [p for p in pieces if p[0] == "variables/big.data"]
    assert len(big) == 12  # ceil(1.5 MB / 128 KiB) ranges, each read on its own handle
    assert sorted(p[1] for p in big) == list(range(0, 1_500_000, 128 << 10))
    assert sum(p[2] for p in big) == 1_500_000
    assert _tree_digest(str(dest)) == _tree_digest(str(src))  # "empty" made, never fetched
    assert downloads(s3_server, "ranges/m") == {"variables/big.data": 12, "small.pb": 1}


# ------------------------------------------------------------------ several processes


def test_two_processes_copy_once_and_the_last_removes_it(
    built_models, s3_server, s3_args, staging_root
):
    url = upload(s3_args, built_models["mlp"], "shared/mlp")
    ctx = multiprocessing.get_context("spawn")
    ready, go, out = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=staging_child.hold, args=(s3_args, url, ready, go, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        reports = [out.get(timeout=120) for _ in procs]
        dirs = {r[0] for r in reports}
        assert len(dirs) == 1 and all(r[3] for r in reports)
        assert sorted(r[1] for r in reports) == [0, 1]  # one copied, the other reused the copy
        (folder,) = dirs
        assert sorted(os.listdir(folder + ".users")) == sorted(str(r[2]) for r in reports)
        assert _tree_digest(folder) == _tree_digest(built_models["mlp"])
    finally:
        go.set()
        for p in procs:
            p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    files = _tree_digest(built_models["mlp"])
    assert downloads(s3_server, "shared/mlp") == {f.replace(os.sep, "/"): 1 for f in files}
    assert _entries(staging_root) == []


def test_a_killed_holder_does_not_keep_the_folder(built_models, s3_args, staging_root):
    url = upload(s3_args, built_models["mlp"], "killed/mlp")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=staging_child.hold_and_hang, args=(s3_args, url, out))
    child.start()
    try:
        folder = out.get(timeout=120)
        assert staging.acquire(url) == folder  # reused, not copied again
        os.kill(child.pid, signal.SIGKILL)  # its registration stays behind
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
    assert os.path.isdir(folder + ".users")
    staging.release(url)  # the dead pid's registration is ignored: this was the last user
    assert _entries(staging_root) == []


@pytest.mark.slow  # two DirectRunner worker processes that import TensorFlow: about 30 s
def test_score_multi_processing_from_s3(built_models, s3_server, s3_args, staging_root, tmp_path):
    local = built_models["mlp"]
    url = upload(s3_args, local, "score/mlp")
    rng = np.random.RandomState(11)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    (tmp_path / "in").mkdir()
    for part in range(2):
        rows = slice(part * 150, (part + 1) * 150)
        pq.write_table(
            pa.table(
                {
                    "id": np.arange(300, dtype=np.int64)[rows],
                    "x": pa.array(x[rows].tolist(), pa.list_(pa.float32())),
                }
            ),
            tmp_path / "in" / f"part-{part}.parquet",
        )
    prefix = str(tmp_path / "out" / "scores")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "beam_v1",
            "score",
            "--model",
            url,
            "--input",
            str(tmp_path / "in" / "*.parquet"),
            "--output",
            prefix,
            "--quiet",
            "--verbose",  # the workers' INFO lines say which staged copy they use
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            *s3_args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(n for n in glob.glob(f"{prefix}-*-of-*.parquet") if "-failed-" not in n)
    scored = pa.concat_tables([pq.read_table(n) for n in names]).sort_by("id")
    np.testing.assert_array_equal(scored["id"].to_numpy(), np.arange(300))
    want = tf_reference(local, {"x": x})
    got_scores = np.array(scored["scores"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(got_scores, want["scores"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])
    # the launcher copied the model, the two workers reused that copy: one download per file
    files = _tree_digest(local)
    assert downloads(s3_server, "score/mlp") == {f.replace(os.sep, "/"): 1 for f in files}
    reused = re.findall(r"staging: reusing (\S+) for " + re.escape(url), proc.stderr)
    # each worker reuses it (in setup and again when loading), never copies it
    assert len(reused) >= 2 and all(os.path.dirname(d) == str(staging_root) for d in reused)
    assert len(set(reused)) == 1
    assert _entries(staging_root) == []  # every process released: nothing staged is left
