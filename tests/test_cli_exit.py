"""How a `beam-v1` process ends: after a command, every atexit handler runs, every stream is
flushed, the exit status is the command's, and the interpreter's teardown (slow once
TensorFlow is loaded) is skipped. Only the command line does this, never `main(argv)`.

Each test runs a real process. A probe module, imported during the run with `--import`
(the flag that loads op-registering modules), registers an atexit handler and a
`weakref.finalize` as the run's own modules do (staging, sessions, temporary folders) and keeps
an object whose `__del__` only runs in the interpreter's teardown; each writes a marker file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scoring_helpers import tf_reference, write_mlp_parquet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = textwrap.dedent(
    """
    import atexit, os, weakref

    MARKS = os.environ["EXIT_PROBE_DIR"]

    def mark(name, _open=open, _join=os.path.join, _dir=MARKS):
        with _open(_join(_dir, name), "w") as f:
            f.write(name)

    atexit.register(mark, "atexit")

    class Held:
        pass

    held = Held()
    weakref.finalize(held, mark, "finalize")  # run at exit by weakref's own atexit handler

    class Teardown:
        def __del__(self, _mark=mark):  # bound now: module globals are gone by then
            _mark("teardown")

    kept = Teardown()  # collected when the interpreter clears modules at exit
    """
)


def _run(tmp_path, args, *, code=None):
    """Run `python -m beam_v1 ARGS` (or `python -c CODE ARGS`) with the probe importable."""
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "exit_probe.py").write_text(PROBE)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([ROOT, str(probe_dir)]),
        EXIT_PROBE_DIR=str(marks),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "beam_v1"]
    proc = subprocess.run(
        [*head, *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    return proc, {p.name for p in marks.iterdir()}


def _score_args(model, tmp_path, *more):
    return [
        "score", "--model", model, "--input", str(tmp_path / "in" / "*.parquet"),
        "--output", str(tmp_path / "out" / "s"), "--num-shards", "1", "--quiet",
        "--import", "exit_probe", *more,
    ]


def test_score_runs_atexit_handlers_and_skips_the_teardown(built_models, tmp_path):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=2, rows=40)
    proc, marks = _run(tmp_path, _score_args(path, tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # stdout is a pipe here (block-buffered): the summary must have been flushed
    assert "rows in      80" in proc.stdout and "rows scored  80" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"summary      {tmp_path / 'out' / 's'}-summary.json")
    assert marks == {"atexit", "finalize"}, "atexit handlers must run; the teardown must not"
    with open(tmp_path / "out" / "s-summary.json") as f:
        summary = json.load(f)
    assert summary["rows_in"] == summary["rows_scored"] == 80
    scored = pa.concat_tables([pq.read_table(n) for n in summary["files_written"]]).sort_by("id")
    want = tf_reference(path, {"x": np.concatenate([w[1] for w in written])})
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])
    np.testing.assert_allclose(
        np.stack(scored["scores"].to_numpy(zero_copy_only=False)), want["scores"], rtol=1e-6
    )


def test_a_user_error_keeps_its_status_and_message(built_models, tmp_path):
    write_mlp_parquet(str(tmp_path / "in"), n_files=1, rows=10)
    proc, marks = _run(
        tmp_path, _score_args(built_models["mlp"], tmp_path, "--signature", "nope")
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "beam-v1: error:" in proc.stderr and "serving_default" in proc.stderr
    assert proc.stdout == ""
    assert marks == {"atexit", "finalize"}


def test_main_with_argv_leaves_the_exit_to_its_caller(built_models, tmp_path):
    """The library path: main(argv) returns, the caller's own status and teardown stand,
    with hard_stop too (as pipelines/*.py call it): only a missing argv ends the process."""
    write_mlp_parquet(str(tmp_path / "in"), n_files=1, rows=10)
    code = (
        "import sys\n"
        "from beam_v1.cli.main import main\n"
        "status = main(sys.argv[1:], hard_stop=True)\n"
        "print('returned', status, flush=True)\n"
        "sys.exit(7)\n"
    )
    proc, marks = _run(tmp_path, _score_args(built_models["mlp"], tmp_path), code=code)
    assert proc.returncode == 7, proc.stderr[-3000:]
    assert "rows scored  10" in proc.stdout and "returned 0" in proc.stdout
    assert marks == {"atexit", "finalize", "teardown"}
