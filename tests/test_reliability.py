"""Reliability (issue 9): corrupt models, killed and re-run scores, max_batch_bytes, concurrency."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.utils import shared
from tensorflow.core.protobuf import saved_model_pb2

import beam_v1
from beam_v1.errors import BeamV1Error, MissingOpsError, ModelFileError
from beam_v1.scoring.dofn import RunV1InferenceDoFn, ScoringConfig, rows_within_bytes
from beam_v1.scoring.options import ScoringOptions

# ------------------------------------------------------------------ corrupt models


def _edit_pb(path, edit):
    pb = os.path.join(path, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        sm.ParseFromString(f.read())
    edit(sm.meta_graphs[0])
    with open(pb, "wb") as f:
        f.write(sm.SerializeToString())


def _data_shards(path):
    return sorted(glob.glob(os.path.join(path, "variables", "variables.data-*")))


def _truncate(file):
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(data[: len(data) // 2])


def _damage(case, path):
    pb = os.path.join(path, "saved_model.pb")
    if case == "no_pb":
        os.remove(pb)
    elif case == "empty_pb":
        open(pb, "wb").close()
    elif case == "truncated_pb":
        _truncate(pb)
    elif case == "random_pb":
        with open(pb, "wb") as f:
            f.write(np.random.RandomState(0).bytes(5000))
    elif case == "bad_pbtxt":
        os.remove(pb)
        with open(os.path.join(path, "saved_model.pbtxt"), "w") as f:
            f.write("meta_graphs { meta_info_def { tags: 'serve' ")
    elif case == "no_index":
        os.remove(os.path.join(path, "variables", "variables.index"))
    elif case == "no_data":
        for shard in _data_shards(path):
            os.remove(shard)
    elif case == "truncated_data":
        _truncate(_data_shards(path)[0])
    elif case == "bad_signature_tensor":

        def edit(mg):
            mg.signature_def["serving_default"].outputs["scores"].name = "no_such_node:0"

        _edit_pb(path, edit)
    elif case == "unknown_op":

        def edit(mg):
            for node in mg.graph_def.node:
                if node.name == "scores":
                    node.op = "NoSuchOpInThisTensorFlow"

        _edit_pb(path, edit)


# what each case names in its message
CORRUPT = {
    "no_pb": r"No saved_model\.pb",
    "empty_pb": r"saved_model\.pb is empty",
    "truncated_pb": r"saved_model\.pb is corrupt",
    "random_pb": r"saved_model\.pb is corrupt",
    "bad_pbtxt": r"saved_model\.pbtxt is corrupt",
    "no_index": r"variables\.index is missing",
    "no_data": r"variables\.data",
    "truncated_data": r"variables",
    "bad_signature_tensor": r"no_such_node:0",
    "unknown_op": r"NoSuchOpInThisTensorFlow",
}
# inspect reads metadata only (the index's sizes, never a tensor): these it reports as
# warnings, listing what it can; `beam-v1 inspect` then exits 2
INSPECT_WARNS = {"no_index", "no_data", "bad_signature_tensor", "truncated_data"}
INSPECT_OK: set[str] = set()


@pytest.fixture(scope="module")
def corrupt_models(built_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    models = {}
    for case in CORRUPT:
        path = str(root / case)
        shutil.copytree(built_models["mlp"], path)
        _damage(case, path)
        models[case] = path
    return models


@pytest.fixture(scope="module")
def mlp_parquet(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "in.parquet")
    x = np.random.RandomState(1).normal(size=(10, 4)).astype(np.float32)
    pq.write_table(
        pa.table(
            {
                "id": np.arange(10),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4),
            }
        ),
        path,
    )
    return path


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_model_load_fails_named(corrupt_models, case):
    with pytest.raises(BeamV1Error, match=CORRUPT[case]) as e:
        beam_v1.load(corrupt_models[case])
    assert isinstance(e.value, (ModelFileError, MissingOpsError))
    assert "\n" not in str(e.value).strip() or case == "truncated_data"


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_model_inspect(corrupt_models, case):
    if case in INSPECT_OK:
        assert beam_v1.inspect(corrupt_models[case]).variables
        return
    if case in INSPECT_WARNS:
        info = beam_v1.inspect(corrupt_models[case])
        assert any(__import__("re").search(CORRUPT[case], w) for w in info.warnings)
        return
    if case == "unknown_op":
        info = beam_v1.inspect(corrupt_models[case])
        assert "NoSuchOpInThisTensorFlow" in info.missing_ops
        return
    with pytest.raises(ModelFileError, match=CORRUPT[case]):
        beam_v1.inspect(corrupt_models[case])


@pytest.mark.parametrize("case", sorted(set(CORRUPT) - INSPECT_OK))
def test_corrupt_model_score_fails_before_running(corrupt_models, mlp_parquet, tmp_path, case):
    """ScoreParquet's checks run at construction: the pipeline never starts, nothing written."""
    with pytest.raises(BeamV1Error, match=CORRUPT[case]):
        beam_v1.ScoreParquet(corrupt_models[case], mlp_parquet, str(tmp_path / "out"))
    assert os.listdir(tmp_path) == []


def _cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "beam_v1", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("case", ["random_pb", "no_data", "bad_signature_tensor"])
def test_corrupt_model_cli(corrupt_models, mlp_parquet, tmp_path, case):
    out = str(tmp_path / "out")
    result = _cli("score", "--model", corrupt_models[case], "--input", mlp_parquet, "--output", out)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("beam-v1: error:") and corrupt_models[case] in last
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("case", sorted(INSPECT_WARNS))
def test_corrupt_model_cli_inspect_exits_2(corrupt_models, case, capsys):
    from beam_v1.cli import main as cli

    assert cli.main(["inspect", corrupt_models[case]]) == 2
    captured = capsys.readouterr()
    assert "Signatures" in captured.out  # what could be read is still shown
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("beam-v1: error:")
    assert __import__("re").search(CORRUPT[case], error[0])


# ------------------------------------------------------------ killed and re-run


def _mlp_input(path, rows, files=1, seed=0):
    os.makedirs(path, exist_ok=True)
    rng = np.random.RandomState(seed)
    per = rows // files
    for i in range(files):
        x = rng.normal(size=(per, 4)).astype(np.float32)
        # every 1000th row has a null x: it goes to the dead letter
        mask = np.zeros(per, bool)
        mask[::1000] = True
        col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
        # (a list<float> column: null fixed_size_list cells do not survive a Parquet round trip
        # through Beam's reader with this pyarrow)
        col = pa.array(
            [None if m else v for m, v in zip(mask, col.to_pylist())], pa.list_(pa.float32())
        )
        pq.write_table(
            pa.table({"id": np.arange(i * per, (i + 1) * per), "x": col}),
            os.path.join(path, f"part-{i}.parquet"),
            row_group_size=10_000,
        )
    return os.path.join(path, "*.parquet"), per * files


def _score_cmd(model, pattern, out, *extra):
    return [
        sys.executable,
        "-m",
        "beam_v1",
        "score",
        "--model",
        model,
        "--input",
        pattern,
        "--output",
        out,
        "--quiet",
        "--batch-size",
        "2000",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
        *extra,
    ]


def _outputs(out):
    scored = sorted(glob.glob(out + "-[0-9]*-of-*.parquet"))
    failed = sorted(glob.glob(out + "-failed-*-of-*.parquet"))
    return scored, failed


def _check_complete(out, rows):
    scored, failed = _outputs(out)
    ids = np.concatenate(
        [pq.read_table(f, columns=["id"]).column("id").to_numpy() for f in scored + failed]
    )
    assert len(ids) == rows and len(np.unique(ids)) == rows  # each row exactly once
    summary = json.load(open(out + "-summary.json"))
    assert summary["rows_in"] == rows
    assert summary["rows_failed"] == rows // 1000
    return scored, failed


def test_kill_and_rerun(built_models, tmp_path):
    pattern, rows = _mlp_input(str(tmp_path / "in"), 120_000, files=4)
    out = str(tmp_path / "out" / "scores")
    model = built_models["mlp"]
    # a complete run with 3 shards
    done = subprocess.run(
        _score_cmd(model, pattern, out, "--num-shards", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    scored, _ = _check_complete(out, rows)
    assert len(scored) == 3
    # killed runs (2 shards now) at several moments: before the pipeline, and during it
    for sig, delay in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 6.0), (signal.SIGTERM, 9.0)):
        proc = subprocess.Popen(
            _score_cmd(model, pattern, out, "--num-shards", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)  # not communicate(): workers may hold the pipes open
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # any worker left behind
            except ProcessLookupError:
                pass
        _, stderr = proc.communicate(timeout=30)
        print(f"kill {sig!r} at {delay}s: exit {proc.returncode}")
        if proc.returncode == 0:
            continue  # the run finished before the signal: a complete run
        if os.path.exists(out + "-summary.json"):
            # killed before it started writing: the earlier complete run is left whole
            summary = json.load(open(out + "-summary.json"))
            assert summary["files_written"] == _outputs(out)[0]
            assert len(_outputs(out)[0]) == 3
        if sig == signal.SIGTERM:
            lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("beam-v1:")]
            assert lines and "stopped by SIGTERM" in lines[-1], stderr[-2000:]
            assert proc.returncode == 143
        # whatever is under a final name is a complete Parquet file
        for f in sum(_outputs(out), []):
            pq.read_metadata(f)
    # the re-run gives exactly the full result, only its own shards
    again = subprocess.run(
        _score_cmd(model, pattern, out, "--num-shards", "2"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    scored, _ = _check_complete(out, rows)
    assert [os.path.basename(f) for f in scored] == [
        "scores-00000-of-00002.parquet",
        "scores-00001-of-00002.parquet",
    ]
    assert not glob.glob(str(tmp_path / "out" / "beam-temp-*"))


def test_rerun_removes_earlier_shards_in_process(built_models, tmp_path):
    from beam_v1.scoring.job import remove_earlier_outputs

    out = str(tmp_path / "scores")
    keep = [tmp_path / "scores-notes.txt", tmp_path / "scores-x-00000-of-00001.parquet"]
    stale = [
        tmp_path / "scores-00000-of-00003.parquet",
        tmp_path / "scores-failed-00000-of-00001.parquet",
        tmp_path / "scores-summary.json",
    ]
    for p in keep + stale:
        p.write_text("x")
    (tmp_path / "beam-temp-scores-abc").mkdir()
    removed = remove_earlier_outputs(out, out + "-failed")
    assert len(removed) == 4
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in keep)


# -------------------------------------------------------------- max_batch_bytes


def run_dofn(config, tables):
    """Run the DoFn by hand (one bundle); return (scored tables, failed tables)."""
    fn = RunV1InferenceDoFn(config, shared.Shared())
    fn.setup()
    fn.start_bundle()
    scored, failed = [], []

    def take(outputs):
        for o in outputs:
            value = getattr(o, "value", o)
            value = getattr(value, "value", value)  # WindowedValue from finish_bundle
            tag = getattr(o, "tag", "scored")
            (failed if tag == "failed" else scored).append(value)

    for t in tables:
        take(fn.process(t))
    take(fn.finish_bundle())
    fn._holder.model.close()
    return scored, failed


def _string_model_tables(lengths):
    words = ["banana" if n < 0 else "a" * n for n in lengths]
    return pa.table({"i": np.arange(len(words)), "word": pa.array(words, pa.string())})


def test_rows_within_bytes():
    table = _string_model_tables([10, 10, 10, 5000, 10, 10])
    assert rows_within_bytes(table, 6, 10**6) == 6
    n = rows_within_bytes(table, 6, 200)
    assert n == 3 and table.slice(0, n).nbytes <= 200 < table.slice(0, n + 1).nbytes
    assert rows_within_bytes(table.slice(3), 3, 200) == 1  # the oversized row goes alone


def test_max_batch_bytes_bounds_batches(built_models):
    lengths = [20] * 50 + [100_000] + [20] * 50
    table = _string_model_tables(lengths)
    limit = 4_000
    config = ScoringConfig(
        model=built_models["string_lookup"],
        scoring=ScoringOptions(batch_size=1000, max_batch_bytes=limit),
    )
    scored, failed = run_dofn(config, [table.slice(0, 30), table.slice(30)])
    assert failed == []
    sizes = [t.num_rows for t in scored]
    assert sum(sizes) == 101 and len(sizes) > 2
    for t in scored:
        if t.num_rows > 1:
            assert t.nbytes <= limit * 2  # outputs add a little; inputs were <= limit
    alone = [t for t in scored if 50 in t["i"].to_pylist()]  # row 50 is 100 kB
    assert len(alone) == 1 and alone[0].num_rows == 1  # scored alone, not dropped
    got = pa.concat_tables(scored).sort_by("i")
    assert got["i"].to_pylist() == list(range(101))
    assert got["id"].to_pylist() == [-1] * 101  # "aaa..." is not in the vocabulary
    # without the bound: one batch
    scored, _ = run_dofn(
        ScoringConfig(
            model=built_models["string_lookup"], scoring=ScoringOptions(batch_size=1000)
        ),
        [table],
    )
    assert [t.num_rows for t in scored] == [101]


# ------------------------------------------------------------------ concurrency


def test_eight_threads_thousand_batches(built_models):
    model = beam_v1.load(built_models["mlp"])
    rng = np.random.RandomState(7)
    batches = [rng.normal(size=(1 + i % 7, 4)).astype(np.float32) for i in range(1000)]
    reference = [model.predict({"x": b}) for b in batches]
    results: dict[int, list] = {}
    errors = []

    def work(thread):
        try:
            order = np.random.RandomState(thread).permutation(len(batches))
            got = {}
            for i in order:
                got[int(i)] = model.predict({"x": batches[i]})
            results[thread] = [got[i] for i in range(len(batches))]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    model.close()
    assert errors == []
    assert sorted(results) == list(range(8))
    for outs in results.values():
        for want, got in zip(reference, outs):
            np.testing.assert_array_equal(got["scores"], want["scores"])
            np.testing.assert_array_equal(got["label"], want["label"])
