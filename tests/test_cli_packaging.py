"""Packaging (issue 15 item 8): one version, typed, and the optional speed-up's fallback."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import pytest

import beam_v1
from beam_v1.io import checksums

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_the_version_lives_in_pyproject_only():
    assert beam_v1.__version__ == importlib.metadata.version("beam-v1") == _pyproject()["version"]


def test_a_source_tree_not_installed_still_imports():
    """With the distribution's metadata hidden (a checkout on PYTHONPATH), the fallback holds."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "def version(name):\n"
        "    if name == 'beam-v1': raise m.PackageNotFoundError(name)\n"
        "    return real(name)\n"
        "m.version = version\n"
        "import beam_v1; print(beam_v1.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=True).stdout
    assert out.strip() == "0+unknown"


def test_typed_and_licensed():
    assert os.path.exists(os.path.join(os.path.dirname(beam_v1.__file__), "py.typed"))
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_extras_and_no_hard_speed_up():
    project = _pyproject()
    extras = project["optional-dependencies"]
    assert extras["gcp"] == ["apache-beam[gcp]"] and extras["aws"] == ["apache-beam[aws]"]
    assert any(r.startswith("isal") for r in extras["fast"])
    assert not any(r.startswith("isal") for r in project["dependencies"])


def test_crc32_without_isal_is_zlibs(monkeypatch, tmp_path):
    """The `fast` extra is optional: without isal, crc32 falls back to zlib, same values."""
    data = np.random.default_rng(0).bytes(1 << 20)
    with_isal = checksums.crc32(data, 7)
    monkeypatch.setitem(sys.modules, "isal", None)  # `import isal...` raises ImportError
    monkeypatch.setitem(sys.modules, "isal.isal_zlib", None)
    assert checksums.crc32(data, 7) == zlib.crc32(data, 7) == with_isal
    # and an .npz dump written without isal passes zipfile's own CRC check
    from beam_v1.cli.main import main

    model = _tiny_model(str(tmp_path / "m"))
    prefix = str(tmp_path / "d")
    assert main(["dump-variables", model, "--output", prefix, "--format", "npz", "--quiet"]) == 0
    (npz,) = [p for p in tmp_path.glob("d*.npz")]
    with zipfile.ZipFile(npz) as z:
        assert z.testzip() is None and z.namelist()


def _tiny_model(path: str) -> str:
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        w = tf.compat.v1.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="w")
        sess.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(path)
        sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": tf.matmul(x, w)})
        builder.add_meta_graph_and_variables(sess, ["serve"], {"serving_default": sig})
        builder.save()
    return path
