"""The conventions users bring to a command line (issue 15 item 7): unknown flags, exact flag
names, --version, quiet output, TensorFlow's start-up lines, worker logging, display data."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.display import DisplayData

import beam_v1
from beam_v1 import DumpVariables, RunV1Inference, ScoreParquet, WriteVariables
from beam_v1.cli import startup_lines
from beam_v1.cli.flags import EXIT_USER_ERROR, quiet_worker_flags, unknown_to_beam
from beam_v1.cli.main import main
from beam_v1.errors import BeamV1Error
from beam_v1.io.parquet_read import ReadParquetRowGroups
from beam_v1.io.parquet_write import WriteParquetTables
from beam_v1.runs import check_finished

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what TensorFlow 2.21 printed on this CPU machine for a first `beam-v1 demo`
STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796587960.255887   17477 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1796587960.256982   17477 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796587967.136380   17477 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
STARTUP_MARKERS = ("absl::InitializeLog", "port.cc:", "cudart_stub.cc:", "cuInit")


def _parquet(folder, rows=60, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    table = pa.table({"id": np.arange(rows), "x": pa.array(x.tolist(), pa.list_(pa.float32()))})
    pq.write_table(table, os.path.join(folder, "part-0.parquet"))
    return os.path.join(folder, "*.parquet"), x


def _session_scores(model, x):
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], model)
        return sess.run("scores:0", {"x:0": x})


# ------------------------------------------------------------------ unknown and exact flags


@pytest.mark.parametrize("command", ["score", "dump-variables"])
def test_mistyped_flag_is_an_error_naming_it(command, built_models, tmp_path, capsys):
    if command == "score":
        argv = ["score", "--model", built_models["mlp"], "--input", str(tmp_path / "*.parquet"),
                "--output", str(tmp_path / "out"), "--batchsize", "10"]
    else:
        argv = ["dump-variables", built_models["mlp"], "--output", str(tmp_path / "d"),
                "--slicemb", "2"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    flag = argv[-2]
    assert f"beam-v1: error: unrecognized arguments: {flag}" in err
    hint = "--batch-size" if command == "score" else "--slice-mb"
    assert f"did you mean {hint}?" in err
    assert not list(tmp_path.glob("out*")) and not list(tmp_path.glob("d*"))  # nothing ran


def test_flags_beam_knows_pass_and_the_run_is_right(built_models, tmp_path, capsys):
    pattern, x = _parquet(str(tmp_path / "in"))
    prefix = str(tmp_path / "out" / "s")
    argv = ["score", "--model", built_models["mlp"], "--input", pattern, "--output", prefix,
            "--quiet", "--runner", "DirectRunner", "--direct_running_mode=in_memory",
            "--direct_num_workers", "1", "--job_name", "cli-test"]
    assert main(argv) == 0
    assert "rows in      60" in capsys.readouterr().out
    out = pa.concat_tables(
        pq.read_table(p) for p in sorted(tmp_path.glob("out/s-*-of-*.parquet"))
        if "-failed-" not in p.name
    ).sort_by("id")
    assert out.column("id").to_pylist() == list(range(60))
    np.testing.assert_allclose(
        np.array(out.column("scores").to_pylist(), np.float32),
        _session_scores(built_models["mlp"], x), rtol=1e-6,
    )


def test_unknown_to_beam_knows_beam_options_exactly():
    assert unknown_to_beam(["--runner", "DirectRunner", "--direct_num_workers", "2",
                            "--direct_running_mode=multi_processing", "--project", "p",
                            "--temp_location", "gs://b/t", "--setup_file", "./setup.py"]) == []
    assert unknown_to_beam(["--batchsize", "10"]) == ["--batchsize"]
    assert unknown_to_beam(["--runne=DirectRunner"]) == ["--runne=DirectRunner"]  # no prefixes
    assert unknown_to_beam(["--direct_num_workers", "two"]) == ["--direct_num_workers"]
    assert unknown_to_beam(["stray"]) == ["stray"]


def test_a_runners_own_options_count_once_it_is_named():
    """In a fresh interpreter (no runner module imported yet), --dask_client_address is known
    with --runner DaskRunner (or its class path), and unknown without a Dask runner."""
    pytest.importorskip("dask")
    code = (
        "import sys; from beam_v1.cli.flags import unknown_to_beam as u\n"
        "print(u(['--dask_client_address', 'tcp://h:1']))\n"
        "print(u(['--runner', 'DaskRunner', '--dask_client_address', 'tcp://h:1']))\n"
        "print(u(['--runner=apache_beam.runners.dask.dask_runner.DaskRunner',"
        " '--dask_client_address=tcp://h:1']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT}, check=True).stdout
    assert out.splitlines() == ["['--dask_client_address']", "[]", "[]"]


def test_no_abbreviated_flags(built_models, tmp_path, capsys):
    """`--batch` is not `--batch-size`, `--mod` is not `--model`: both are refused."""
    argv = ["score", "--model", built_models["mlp"], "--input", "x", "--output", "y",
            "--batch", "10"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == EXIT_USER_ERROR
    assert "unrecognized arguments: --batch" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", built_models["mlp"], "--js"])
    assert "unrecognized arguments: --js" in capsys.readouterr().err


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"beam-v1 {beam_v1.__version__}"
    assert beam_v1.__version__ == importlib.metadata.version("beam-v1")


# ---------------------------------------------------------------------- dump-variables


def test_dump_variables_quiet_prints_nothing_and_writes_the_same(built_models, tmp_path, capsys):
    prefix = str(tmp_path / "q")
    assert main(["dump-variables", built_models["mlp"], "--output", prefix, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    written = beam_v1.read_variables(prefix, model=built_models["mlp"])
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], built_models["mlp"])
        truth = {v.op.name: sess.run(v) for v in tf.compat.v1.global_variables()}
    assert set(written) == set(truth)
    for name, value in truth.items():
        np.testing.assert_array_equal(written[name], value)


def test_dump_variables_quiet_still_reports_failures(tmp_path, capsys):
    missing = str(tmp_path / "no_such_model")
    code = main(["dump-variables", missing, "--output", str(tmp_path / "f"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert f"FAILED {missing}" in captured.err and "could not be dumped" in captured.err


@pytest.mark.parametrize("state", [PipelineState.FAILED, PipelineState.CANCELLED,
                                   PipelineState.STOPPED, PipelineState.RUNNING])
def test_a_pipeline_not_done_is_an_error(state):
    with pytest.raises(BeamV1Error, match=f"ended in state {state}, not DONE"):
        check_finished(state, "The dump-variables pipeline")


def test_a_done_pipeline_passes():
    check_finished(PipelineState.DONE)
    check_finished(PipelineState.UNKNOWN)


# ------------------------------------------------------------------ TensorFlow's start-up


def test_filter_drops_startup_lines_of_this_process_and_children(capfd):
    lines = [*STARTUP, "keep: a real warning", "W0000 00:00:1.5  7 loader.cc:1] keep me too"]
    with startup_lines.filtered_stderr():
        os.write(2, ("\n".join(lines[:3]) + "\n").encode())
        print("python line", file=sys.stderr)
        subprocess.run(
            [sys.executable, "-c", "import os,sys; os.write(2, sys.argv[1].encode())",
             "\n".join(lines[3:]) + "\nno newline at the end"],
            check=True,
        )
    err = capfd.readouterr().err
    assert err.splitlines() == [
        "python line", "keep: a real warning",
        "W0000 00:00:1.5  7 loader.cc:1] keep me too", "no newline at the end",
    ]


def _demo(tmp_path, *flags):
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    return subprocess.run(
        [sys.executable, "-m", "beam_v1", "demo", "--rows", "2000",
         "--workdir", str(tmp_path), *flags],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )


@pytest.mark.slow
def test_demo_shows_no_tensorflow_startup_lines(tmp_path):
    run = _demo(tmp_path / "quiet")
    assert run.returncode == 0, run.stderr
    assert "rows in      2,000" in run.stdout and "rows failed  3" in run.stdout
    found = [m for m in STARTUP_MARKERS if m in run.stderr]
    assert found == [], run.stderr


@pytest.mark.slow
def test_demo_verbose_shows_them(tmp_path):
    run = _demo(tmp_path / "verbose", "--verbose")
    assert run.returncode == 0, run.stderr
    assert "absl::InitializeLog" in run.stderr and "rows in      2,000" in run.stdout


@pytest.mark.slow
def test_multi_process_run_keeps_worker_logs_off_the_terminal(built_models, tmp_path):
    """DirectRunner worker processes log at INFO to the shared stderr (about 50 lines of
    harness set-up for two workers); the CLI keeps them at WARNING and drops their set-up notes."""
    pattern, _ = _parquet(str(tmp_path / "in"), rows=100)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    run = subprocess.run(
        [sys.executable, "-m", "beam_v1", "score", "--model", built_models["mlp"], "--input",
         pattern, "--output", str(tmp_path / "out" / "s"), "--quiet",
         "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "rows in      100" in run.stdout and "rows scored  100" in run.stdout
    assert run.stderr == ""


def test_worker_log_flags_only_for_the_direct_runner_and_never_over_the_users():
    quiet = quiet_worker_flags([])
    assert quiet[0] == "--default_sdk_harness_log_level=WARNING"
    assert quiet_worker_flags(["--runner", "DirectRunner", "--direct_num_workers", "2"]) == quiet
    assert quiet_worker_flags(["--runner", "DataflowRunner"]) == []
    assert quiet_worker_flags(["--default_sdk_harness_log_level=DEBUG"]) == []


# ------------------------------------------------------------ worker logging, display data


def test_progress_is_logged_not_printed(built_models, tmp_path, caplog, capfd, monkeypatch):
    pattern, _ = _parquet(str(tmp_path / "in"), rows=40)
    # undo the CLI's handler (earlier tests ran main() in this process): caplog's alone
    progress = logging.getLogger("beam_v1.progress")
    monkeypatch.setattr(progress, "propagate", True)
    monkeypatch.setattr(progress, "handlers", [])
    caplog.set_level(logging.INFO, logger="beam_v1.progress")
    with beam.Pipeline() as p:
        _ = p | ScoreParquet(built_models["mlp"], pattern, str(tmp_path / "o"), batch_size=8,
                             progress_seconds=1e-9)
    lines = [r.getMessage() for r in caplog.records if r.name == "beam_v1.progress"]
    assert lines and all(" rows/s" in line for line in lines)
    assert lines[-1].startswith(f"beam-v1: worker {os.getpid()}: 40 rows")
    assert "rows/s" not in capfd.readouterr().err  # nothing printed besides the log record


def _display(transform):
    return {item.key: item.value for item in DisplayData.create_from(transform).items}


def test_transforms_have_display_data(built_models, tmp_path):
    model = built_models["mlp"]
    pattern, _ = _parquet(str(tmp_path / "in"))
    run = _display(RunV1Inference(model, outputs="scores, label", batch_size=128))
    assert run == {"model": model, "signature": "serving_default", "outputs": "scores, label",
                   "batch_size": 128, "max_batch_bytes": 64 << 20, "example_feed": "auto"}
    score = _display(ScoreParquet(model, pattern, "out/p", batch_size=256, num_shards=2))
    assert score["model"] == model and score["input"] == pattern
    assert score["output_prefix"] == "out/p" and score["dead_letter_prefix"] == "out/p-failed"
    assert score["signature"] == "serving_default" and score["batch_size"] == 256
    assert score["num_shards"] == 2
    assert _display(ReadParquetRowGroups(pattern, columns=["id", "x"])) == {
        "file_pattern": pattern, "columns": "id, x"}
    write = _display(WriteParquetTables("out/w", pa.schema([("id", pa.int64())]), num_shards=3))
    assert write["prefix"] == "out/w" and write["num_shards"] == 3 and write["columns"] == "id"
    assert _display(DumpVariables("serve", slice_bytes=1024)) == {
        "tags": "serve", "parts": False, "slice_bytes": 1024}
    assert _display(WriteVariables("out/v", "npz")) == {"prefix": "out/v", "format": "npz"}
