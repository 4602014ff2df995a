"""beam-v1 through Beam's portable path (PortableRunner, the job service embedded, Python
DoFns run by an external SDK worker pool started here on 127.0.0.1): how Flink, Spark and
Dataflow Runner v2 run Python. Output compared with the DirectRunner's on the same input."""

from __future__ import annotations

import json

import clusters
import pytest
from test_dask import assert_same_dump, assert_same_outputs, mlp_parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlp_input(built_models, tmp_path_factory):
    return mlp_parquet(built_models, str(tmp_path_factory.mktemp("mlp-in")))


@pytest.fixture(scope="module")
def pool_port(tmp_path_factory):
    with clusters.worker_pool(str(tmp_path_factory.mktemp("pool-logs"))) as port:
        yield port


def test_score_command_on_the_portable_runner_equals_direct(mlp_input, pool_port, tmp_path):
    from beam_v1.scoring.job import score

    model, pattern, bad = mlp_input
    direct = score(model, pattern, str(tmp_path / "direct"), [], progress=False, batch_size=512)
    out = clusters.run_cli(["score", "--model", model, "--input", pattern, "--output",
                            str(tmp_path / "portable"), "--batch-size", "512", "--quiet",
                            *clusters.portable_args(pool_port)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert assert_same_outputs(str(tmp_path / "portable"), str(tmp_path / "direct")) == (
        3000 - bad, bad)
    with open(tmp_path / "portable-summary.json") as f:
        summary = json.load(f)
    assert "counts" not in summary  # the portable runner reports metrics
    for key in ("rows_in", "rows_scored", "rows_failed"):
        assert summary[key] == direct[key], key
    assert summary["rows_in"] == summary["rows_scored"] + summary["rows_failed"] == 3000
    assert summary["model_loads"] >= 1


def test_dump_variables_on_the_portable_runner_is_bit_exact(built_models, pool_port, tmp_path):
    from beam_v1.cli.main import main

    models = [built_models["mlp"], built_models["partitioned"], str(tmp_path / "missing")]
    assert main(["dump-variables", *models, "--output", str(tmp_path / "direct" / "v")]) == 1
    out = clusters.run_cli(["dump-variables", *models, "--output",
                            str(tmp_path / "portable" / "v"), *clusters.portable_args(pool_port)])
    assert out.returncode == 1, out.stderr[-3000:]
    assert "2 dumped, 0 without variables, 1 failed" in out.stdout
    assert_same_dump(tmp_path / "portable", tmp_path / "direct")
