"""`beam-v1 inspect` (SPEC §3, §6): a readable table, `--json` for machines, clean user errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from beam_v1.cli.flags import EXIT_USER_ERROR
from beam_v1.cli.main import main


def _signature_rows(text: str, key: str) -> list[str]:
    """The in/out rows printed under signature `key`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"'{key}'"))
    rows = []
    for line in lines[start + 1 :]:
        if not re.match(r"\s+(in|out)\s", line):
            break
        rows.append(line)
    return rows


def _column_starts(row: str) -> list[int]:
    return [m.start() for m in re.finditer(r"\S+", row)]


def test_inspect_table_lists_signature_inputs_aligned(built_models, capsys):
    assert main(["inspect", built_models["multi_input"]]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "'serving_default'" in out
    assert "tensorflow/serving/predict" in out
    rows = _signature_rows(out, "serving_default")
    parsed = [row.split() for row in rows]
    assert [(p[0], p[1], p[2], p[3], p[5]) for p in parsed] == [
        ("in", "a", "float32", "[-1,3]", "a:0"),
        ("in", "b", "int64", "[-1]", "b:0"),
        ("in", "c", "float64", "[-1,1]", "c:0"),
        ("out", "a_scaled", "float32", "[-1,3]", "a_scaled:0"),
        ("out", "total", "float32", "[-1]", "total:0"),
    ]
    # every column starts at the same position on every row
    starts = [_column_starts(row) for row in rows]
    assert all(s == starts[0] for s in starts), rows
    assert len(starts[0]) == 6
    # the variable table too: ref variable w
    assert re.search(r"^\s+w\s+float32\s+\[3\]\s+ref\b", out, re.M)
    assert "Traceback" not in captured.err


def test_inspect_table_shows_assets_init_op_and_partitions(built_models, capsys):
    assert main(["inspect", built_models["string_lookup"]]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+vocab\.txt\s+vocab_path:0$", out, re.M)
    assert re.search(r"^\s+saved_model_main_op\s+\S+", out, re.M)

    assert main(["inspect", built_models["partitioned"]]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+w\s+float32\s+\[8,2\]\s+ref\s+trainable\s+4 parts$", out, re.M)
    assert "part_0" not in out


def test_inspect_table_two_signatures(built_models, capsys):
    assert main(["inspect", built_models["nested"]]) == 0
    out = capsys.readouterr().out
    assert "Signatures (2)" in out
    assert [r.split()[1] for r in _signature_rows(out, "double")] == ["x", "doubled"]
    assert [r.split()[1] for r in _signature_rows(out, "serving_default")] == [
        "x",
        "doubled",
        "total",
    ]


def test_inspect_json(built_models, capsys):
    assert main(["inspect", built_models["mlp"], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tags"] == ["serve"]
    sig = data["signatures"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"]["dtype"] == "float32"
    assert sig["inputs"]["x"]["shape"] == [-1, 4]
    assert sig["inputs"]["x"]["tensor_name"] == "x:0"
    assert {k: (v["dtype"], v["shape"]) for k, v in sig["outputs"].items()} == {
        "scores": ("float32", [-1, 3]),
        "label": ("int64", [-1]),
    }
    assert sorted(v["name"] for v in data["variables"]) == [
        "dense1/bias",
        "dense1/kernel",
        "dense2/bias",
        "dense2/kernel",
    ]


def test_inspect_json_unknown_rank_and_tags_flag(built_models, capsys):
    assert main(["inspect", built_models["unknown_rank"], "--json", "--tags", "serve"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["signatures"]["serving_default"]["inputs"]["x"]["shape"] is None


def _assert_one_paragraph_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    message = err.strip()
    assert message.startswith("beam-v1: error:")
    assert "\n" not in message, err
    for needle in needles:
        assert needle in message


def test_inspect_bad_path_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "no-model-here")
    assert main(["inspect", missing]) == EXIT_USER_ERROR == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_paragraph_error(captured.err, "no-model-here")


def test_inspect_folder_without_saved_model_exits_2(tmp_path, capsys):
    (tmp_path / "readme.txt").write_text("not a model")
    assert main(["inspect", str(tmp_path)]) == 2
    _assert_one_paragraph_error(capsys.readouterr().err, "saved_model.pb", "readme.txt")


def test_inspect_unknown_tags_exits_2(built_models, capsys):
    assert main(["inspect", built_models["mlp"], "--tags", "train,gpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    _assert_one_paragraph_error(captured.err, "gpu,train", "serve")


def test_inspect_corrupt_model_exits_2(built_models, tmp_path, capsys):
    import shutil

    path = str(tmp_path / "m")
    shutil.copytree(built_models["fixed_batch"], path)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"\xff" * 32)
    assert main(["inspect", path]) == 2
    _assert_one_paragraph_error(capsys.readouterr().err, os.path.join(path, "saved_model.pb"))


def test_inspect_unknown_flag_is_a_usage_error(built_models, capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["inspect", built_models["mlp"], "--bogus"])
    assert excinfo.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_python_dash_m_inspect_json(built_models):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "beam_v1", "inspect", built_models["string_lookup"], "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["signatures"]["serving_default"]["inputs"]["word"]["dtype"] == "string"
    assert [a["filename"] for a in data["assets"]] == ["vocab.txt"]
