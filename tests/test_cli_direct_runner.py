"""`beam-v1 score` on the DirectRunner (the default) runs Beam's FnApiRunner at once, as the
DirectRunner does after its PrismRunner attempt fails: no worker pool, no download of Prism's
binary, and the same outputs. Other runners are left to Beam (`beam_v1.runs.direct_runner_for`).
That the workers of `multi_processing` still get the pipeline options is tested where they
use them: test_cli_conventions (their log level) and test_staging (their S3 endpoint).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from scoring_helpers import tf_reference, write_mlp_parquet

from beam_v1.runs import direct_runner_for
from beam_v1.scoring.job import score

PRISM_LOGGERS = ("apache_beam.runners.direct.direct_runner", "apache_beam.runners.portability")


@pytest.mark.parametrize("runner_args", [[], ["--runner=DirectRunner"]])
def test_score_on_the_direct_runner_never_tries_prism(
    built_models, tmp_path, caplog, runner_args
):
    path = built_models["mlp"]
    written = write_mlp_parquet(str(tmp_path / "in"), n_files=2, rows=50, bad_every=20)
    caplog.set_level(logging.INFO)
    prefix = str(tmp_path / "out" / "s")
    summary = score(path, str(tmp_path / "in" / "*.parquet"), prefix, runner_args,
                    progress=False, num_shards=1)
    beam_lines = [r.getMessage() for r in caplog.records if r.name.startswith(PRISM_LOGGERS)]
    assert not [m for m in beam_lines if "prism" in m.lower()], beam_lines
    bad = sum(len(w[2]) for w in written)
    assert (summary["rows_in"], summary["rows_scored"], summary["rows_failed"]) == (
        100, 100 - bad, bad)
    scored = pa.concat_tables([pq.read_table(n) for n in summary["files_written"]]).sort_by("id")
    ids = np.concatenate([w[0] for w in written])
    x = np.concatenate([w[1] for w in written])
    keep = np.isin(ids, scored["id"].to_numpy())
    want = tf_reference(path, {"x": x[keep]})
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["label"])
    with open(f"{prefix}-summary.json") as f:
        assert json.load(f)["rows_scored"] == 100 - bad


@pytest.mark.parametrize(
    "runner",
    ["PrismRunner", "PortableRunner", "DataflowRunner", "BundleBasedDirectRunner",
     "beam_v1.dask_compat.DaskRunner"],
)
def test_other_runners_are_left_to_beam(runner):
    assert direct_runner_for(PipelineOptions([f"--runner={runner}"])) is None


def test_streaming_is_left_to_the_direct_runner():
    assert direct_runner_for(PipelineOptions(["--streaming"])) is None
    assert direct_runner_for(PipelineOptions([])) is not None


def test_dump_variables_on_the_direct_runner_never_tries_prism(built_models, tmp_path, caplog):
    import tensorflow as tf

    from beam_v1.cli.main import main
    from beam_v1.model.metadata import checkpoint_prefix
    from beam_v1.variables.read import read_variables

    model = built_models["mlp"]
    caplog.set_level(logging.INFO)
    prefix = str(tmp_path / "out" / "d")
    assert main(["dump-variables", model, "--output", prefix, "--format", "npz", "--quiet"]) == 0
    beam_lines = [r.getMessage() for r in caplog.records if r.name.startswith(PRISM_LOGGERS)]
    assert not [m for m in beam_lines if "prism" in m.lower()], beam_lines
    reader = tf.train.load_checkpoint(checkpoint_prefix(model))
    want = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    got = read_variables(prefix, model=model)
    assert sorted(got) == sorted(want) and want
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value)
