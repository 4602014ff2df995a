"""Graph-op audit (SPEC §7): hostile models are refused before anything runs, init op included.

Every hostile model is built here with tf.compat.v1. Each test asserts the refusal (naming the
op and node), that nothing ran (no marker file), and that with the override the model runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

import beam_v1
from beam_v1.model import audit
from beam_v1.model.audit import UnsafeModelError

v1 = tf.compat.v1
# keep py_func graphs alive: TF finds a py_func's Python callable through its graph
_KEEP_GRAPHS: list = []


def _save(path, graph, sess, signatures, main_op=None, assets=None):
    with graph.as_default():
        builder = v1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map=signatures,
            main_op=main_op,
            assets_collection=assets,
            strip_default_attrs=True,
        )
        builder.save()
    return path


def _sig(x, y):
    return {"serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})}


def build_init_writer(path, marker):
    """A harmless y = x * w whose main_op writes `marker`."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        w = v1.Variable(2.0, name="w")
        y = tf.multiply(x, w, name="y")
        main_op = tf.group(
            v1.saved_model.main_op.main_op(),
            tf.io.write_file(marker, tf.constant("pwned"), name="write_marker"),
        )
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            return _save(path, graph, sess, _sig(x, y), main_op=main_op)


def build_hostname_reader(path):
    """y = x + 0 * len(read_file('/etc/hostname')): the serving graph reads a file."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        content = tf.io.read_file("/etc/hostname", name="read_hostname")
        y = tf.add(x, 0.0 * tf.cast(tf.strings.length(content), tf.float32), name="y")
        with v1.Session(graph=graph) as sess:
            return _save(path, graph, sess, _sig(x, y))


def build_py_func(path):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        (y,) = v1.py_func(lambda a: (a * 3).astype(np.float32), [x], [tf.float32], name="py")
        y = tf.identity(tf.reshape(y, [-1]), name="y")
        with v1.Session(graph=graph) as sess:
            _save(path, graph, sess, _sig(x, y))
    _KEEP_GRAPHS.append(graph)
    return path


def build_function_writer(path, marker):
    """The WriteFile hides in a function-library function called by the signature."""
    graph = tf.Graph()
    with graph.as_default():

        @tf.function
        def double_and_write(a):
            tf.io.write_file(marker, tf.constant("pwned"))
            return a * 2.0

        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.identity(double_and_write(x), name="y")
        with v1.Session(graph=graph) as sess:
            return _save(path, graph, sess, _sig(x, y))


def _set_asset_filename(model_dir, filename):
    pb = os.path.join(model_dir, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        sm.ParseFromString(f.read())
    mg = sm.meta_graphs[0]
    # TF1's Builder writes AssetFileDefs into the saved_model_assets collection
    values = mg.collection_def["saved_model_assets"].any_list.value
    assert len(values) == 1 and not mg.asset_file_def
    asset = meta_graph_pb2.AssetFileDef()
    values[0].Unpack(asset)
    asset.filename = filename
    values[0].Pack(asset)
    with open(pb, "wb") as f:
        f.write(sm.SerializeToString())


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, built_models):
    root = tmp_path_factory.mktemp("hostile")
    marker = str(root / "marker.txt")
    fn_marker = str(root / "fn_marker.txt")
    outside_dir = root / "outside_case"
    outside_dir.mkdir()
    outside_model = str(outside_dir / "model")
    shutil.copytree(built_models["string_lookup"], outside_model)
    vocab = os.path.join(outside_model, "assets", "vocab.txt")
    # '../../outside.txt' from model/assets/ is outside_case/outside.txt
    shutil.copy(vocab, outside_dir / "outside.txt")
    os.remove(vocab)
    _set_asset_filename(outside_model, "../../outside.txt")
    absolute_model = str(root / "absolute")
    shutil.copytree(built_models["string_lookup"], absolute_model)
    _set_asset_filename(absolute_model, str(outside_dir / "outside.txt"))
    symlink_model = str(root / "symlink")
    shutil.copytree(built_models["string_lookup"], symlink_model)
    link = os.path.join(symlink_model, "assets", "vocab.txt")
    os.remove(link)
    os.symlink(outside_dir / "outside.txt", link)
    return {
        "marker": marker,
        "fn_marker": fn_marker,
        "init_writer": build_init_writer(str(root / "init_writer"), marker),
        "hostname": build_hostname_reader(str(root / "hostname")),
        "py_func": build_py_func(str(root / "py_func")),
        "function_writer": build_function_writer(str(root / "function_writer"), fn_marker),
        "outside_asset": outside_model,
        "absolute_asset": absolute_model,
        "symlink_asset": symlink_model,
    }


def _ops(findings):
    return {(f.op, f.reached_from) for f in findings}


def test_fixture_models_are_clean(built_models):
    for name, path in built_models.items():
        assert beam_v1.inspect(path).unsafe_ops == [], name


def test_inspect_reports_init_op_write(hostile):
    info = beam_v1.inspect(hostile["init_writer"])
    found = [f for f in info.unsafe_ops if f.op == "WriteFile"]
    assert len(found) == 1
    assert found[0].node == "write_marker"
    assert found[0].reached_from.startswith("init op")
    assert not os.path.exists(hostile["marker"])
    assert "WriteFile" in info.to_text() and "write_marker" in info.to_text()
    assert json.loads(info.to_json())["unsafe_ops"][0]["op"] == "WriteFile"


def test_inspect_reports_signature_read_and_py_func(hostile):
    info = beam_v1.inspect(hostile["hostname"])
    assert ("ReadFile", "signature 'serving_default'") in _ops(info.unsafe_ops)
    assert [f.node for f in info.unsafe_ops] == ["read_hostname"]
    info = beam_v1.inspect(hostile["py_func"])
    assert {f.op for f in info.unsafe_ops} == {"PyFunc"}


def test_audit_walks_into_function_library(hostile):
    findings = beam_v1.inspect(hostile["function_writer"]).unsafe_ops
    writes = [f for f in findings if f.op == "WriteFile"]
    assert writes and "::" in writes[0].node  # function::node
    assert writes[0].reached_from == "signature 'serving_default'"


@pytest.mark.parametrize("case", ["outside_asset", "absolute_asset", "symlink_asset"])
def test_assets_outside_model_are_flagged(hostile, case):
    findings = beam_v1.inspect(hostile[case]).unsafe_ops
    assert [f.op for f in findings] == ["AssetFileDef"]
    assert "outside" in findings[0].reason
    with pytest.raises(UnsafeModelError, match="AssetFileDef"):
        beam_v1.load(hostile[case])


def test_load_refuses_before_init_op_runs(hostile):
    with pytest.raises(UnsafeModelError) as e:
        beam_v1.load(hostile["init_writer"])
    assert "WriteFile" in str(e.value) and "write_marker" in str(e.value)
    assert "--allow-unsafe-ops" in str(e.value)
    assert not os.path.exists(hostile["marker"])
    with beam_v1.load(hostile["init_writer"], allow_unsafe_ops=True) as model:
        assert os.path.exists(hostile["marker"])  # the init op ran, as the user asked
        out = model.predict({"x": np.array([1.0, 2.0], np.float32)})["y"]
    np.testing.assert_array_equal(out, [2.0, 4.0])
    os.remove(hostile["marker"])


def test_load_refuses_and_override_runs(hostile):
    for case in ("hostname", "py_func", "function_writer"):
        with pytest.raises(UnsafeModelError):
            beam_v1.load(hostile[case])
    x = np.array([1.0, -2.0], np.float32)
    with beam_v1.load(hostile["hostname"], allow_unsafe_ops=True) as model:
        np.testing.assert_array_equal(model.predict({"x": x})["y"], x)
    with beam_v1.load(hostile["py_func"], allow_unsafe_ops=True) as model:
        np.testing.assert_array_equal(model.predict({"x": x})["y"], x * 3)
    assert not os.path.exists(hostile["fn_marker"])
    with beam_v1.load(hostile["function_writer"], allow_unsafe_ops=True) as model:
        np.testing.assert_array_equal(model.predict({"x": x})["y"], x * 2)
    assert os.path.exists(hostile["fn_marker"])


def test_outside_asset_override_runs(hostile):
    with beam_v1.load(hostile["outside_asset"], allow_unsafe_ops=True) as model:
        out = model.predict({"word": np.array([b"banana", b"zzz"], object)})["id"]
    np.testing.assert_array_equal(out, [1, -1])


def test_transforms_refuse(hostile, tmp_path):
    with pytest.raises(UnsafeModelError):
        beam_v1.RunV1Inference(hostile["init_writer"])
    beam_v1.RunV1Inference(hostile["hostname"], allow_unsafe_ops=True)
    data = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0], pa.float32())}), data)
    with pytest.raises(UnsafeModelError):
        beam_v1.ScoreParquet(hostile["init_writer"], data, str(tmp_path / "out"))
    assert not os.path.exists(hostile["marker"])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "beam_v1", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_score_refuses_then_override_runs(hostile, tmp_path):
    data = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0, 3.0], pa.float32())}), data)
    out = str(tmp_path / "out")
    args = ["score", "--model", hostile["init_writer"], "--input", data, "--output", out]
    refused = _cli(*args, "--quiet")
    assert refused.returncode == 2
    assert "WriteFile" in refused.stderr and "Traceback" not in refused.stderr
    assert not os.path.exists(hostile["marker"])
    assert sorted(os.listdir(tmp_path)) == ["in.parquet"]
    from beam_v1.cli import main as cli

    assert cli.main([*args, "--quiet", "--allow-unsafe-ops"]) == 0
    table = pq.read_table(f"{out}-00000-of-00001.parquet")
    assert table.column("y").to_pylist() == [2.0, 4.0, 6.0]
    assert os.path.exists(hostile["marker"])
    os.remove(hostile["marker"])


def test_cli_inspect_prints_findings(hostile, capsys):
    from beam_v1.cli import main as cli

    assert cli.main(["inspect", hostile["hostname"]]) == 0
    out = capsys.readouterr().out
    assert "ReadFile" in out and "read_hostname" in out
    assert cli.main(["inspect", "--json", hostile["py_func"]]) == 0
    found = json.loads(capsys.readouterr().out)["unsafe_ops"]
    assert [f["op"] for f in found] == ["PyFunc"]


def test_unsafe_attr_ops():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        p = tf.print(x, output_stream="file:///tmp/leak.txt", name="leak")
        q = tf.print(x, name="harmless")
        with tf.control_dependencies([p, q]):
            y = tf.identity(x, name="y")
        sig = v1.saved_model.predict_signature_def({"x": x}, {"y": y})
    mg = v1.train.export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    mg.signature_def["serving_default"].CopyFrom(sig)
    findings = audit.audit(mg)
    assert [(f.op, f.node) for f in findings] == [("PrintV2", "leak")]


def test_model_handler_refuses_at_load(hostile):
    from beam_v1.interop.handler import V1ModelHandler

    with pytest.raises(UnsafeModelError):
        V1ModelHandler(hostile["init_writer"]).load_model()
    assert not os.path.exists(hostile["marker"])
    model = V1ModelHandler(hostile["hostname"], allow_unsafe_ops=True).load_model()
    x = np.array([4.0], np.float32)
    np.testing.assert_array_equal(model.predict({"x": x})["y"], x)
    model.close()
