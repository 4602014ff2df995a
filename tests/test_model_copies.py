"""model_copies: one session per machine shared by its worker processes through Beam's
MultiProcessShared proxy (beam_v1.scoring.model_server). The proxy path must give exactly
what the session gives: dense, string and sparse feeds, model errors (bisected to the row),
tf.Example feeds; and on a real `multi_processing` x2 run, the output of the default run
with one model load on the machine."""

from __future__ import annotations

import glob
import os
import re
import tempfile
import uuid

import numpy as np
import pyarrow as pa
import pytest
from scoring_helpers import MULTI_PROCESSING, read_outputs, write_mlp_parquet
from test_sparse import good_table, with_bad_rows

import beam_v1
from beam_v1.scoring import columns, model_server
from beam_v1.scoring.job import score
from beam_v1.scoring.scorer import BatchScorer


def shared_client(model) -> model_server.SharedModelClient:
    """A client of `model` served through a real MultiProcessShared proxy (a local socket,
    always_proxy: every call is pickled both ways, as from another process)."""
    return model_server.acquire(
        uuid.uuid4().hex, 1, lambda: model_server.ModelServer(model, 7, None)
    )


@pytest.fixture(scope="module")
def sparse_path(tmp_path_factory):
    import builders

    return builders.build_sparse_input(str(tmp_path_factory.mktemp("sparse") / "model"))


def assert_tables_equal(got: pa.Table, want: pa.Table) -> None:
    assert got.schema == want.schema
    assert repr(got.to_pydict()) == repr(want.to_pydict())  # repr: NaN equals NaN


def test_sparse_and_string_feeds_and_model_errors_round_trip(sparse_path):
    """SparseFeed values (float and string), planted bad rows and NaN rows the session fails
    on (bisected through the proxy): the same scored and failed tables as the session."""
    table, planted = with_bad_rows(good_table(80, seed=3))
    with beam_v1.load(sparse_path) as model:
        client = shared_client(model)
        plan = columns.make_plan(model.signature(), table.schema)
        want = BatchScorer(model, plan, table.schema).score(table)
        got = BatchScorer(client, plan, table.schema).score(table)
    assert set(got.failed.column("id").to_pylist()) == set(planted)
    assert got.session_runs > 1  # the NaN rows failed remotely and were bisected out
    assert_tables_equal(got.scored, want.scored)
    assert_tables_equal(got.failed, want.failed)


def test_metadata_and_object_arrays(built_models):
    with beam_v1.load(built_models["string_lookup"]) as model:
        client = shared_client(model)
        assert client.signatures == model.signatures
        assert client.default_signature == model.default_signature
        assert client.path == model.path and client.tags == model.tags
        for key in model.signatures:
            assert client.required_inputs(key) == model.required_inputs(key)
        assert client.take_load_report() == 7 and client.take_load_report() is None
        sig = model.signature()
        (key,) = model.required_inputs()
        words = np.array([b"a", "b", "zzz", b"", "é"], dtype=object)
        want = model.predict({key: words})
        got = client.predict({key: words})
    assert sig.key == client.signature().key
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def test_example_scorer_runs_through_the_proxy(tmp_path):
    """A tf.Example signature fed from columns (tensors run by name on the server)."""
    from test_examples import build_estimator_style, fixture_table

    from beam_v1.scoring import example_feeds as examples

    path = build_estimator_style(str(tmp_path / "est"))
    table = fixture_table(40)
    with beam_v1.load(path) as model:
        client = shared_client(model)
        for mode in ("auto", "serialize"):
            want = examples.ExampleScorer(model, mode=mode).score(table)
            got = examples.ExampleScorer(client, mode=mode).score(table)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[2] == want[2]
            for key in want[1]:
                np.testing.assert_array_equal(got[1][key], want[1][key])


def _pids(pattern: str, text: str) -> list[str]:
    return re.findall(pattern, text)


@pytest.mark.slow  # two multi_processing runs, each starting 2 TensorFlow processes
def test_multi_processing_one_copy_scores_the_same_with_one_load(built_models, tmp_path, capfd):
    path = built_models["mlp"]
    write_mlp_parquet(str(tmp_path / "in"), n_files=4, rows=250, row_group_size=50)
    pattern = str(tmp_path / "in" / "*.parquet")
    leftovers = os.path.join(tempfile.gettempdir(), "beam-v1-*-copy*.address")
    before = set(glob.glob(leftovers))
    runs = {}
    for copies in (0, 1):
        prefix = str(tmp_path / f"out{copies}" / "mp")
        summary = score(path, pattern, prefix, MULTI_PROCESSING, progress=False,
                        batch_size=100, model_copies=copies)
        runs[copies] = (summary, read_outputs(prefix)[1].sort_by("id"), capfd.readouterr().err)
    (default, want, _), (shared, got, log) = runs[0], runs[1]
    assert shared["rows_in"] == shared["rows_scored"] == default["rows_scored"] == 1000
    assert_tables_equal(got, want)
    # one load on the machine: the metric (the served copy reports once), and the log
    assert shared["model_loads"] == 1
    loaded = _pids(r"beam-v1 worker (\d+) loaded", log)
    users = _pids(r"beam-v1 worker (\d+): using 1 shared model copy", log)
    servers = set(_pids(r"copy 0 served by process (\d+)", log))
    assert len(loaded) == 1 and servers == set(loaded)
    assert len(set(users)) == 2  # both worker processes scored through the one copy
    assert str(os.getpid()) not in users + loaded
    # the serving worker removed its copy's address file when it exited
    assert set(glob.glob(leftovers)) <= before


def test_two_copies_load_twice_and_take_turns(built_models):
    """model_copies=2: two servers, each loaded once; batches alternate between them."""
    path = built_models["mlp"]
    servers = []

    def load():
        servers.append(model_server.ModelServer(beam_v1.load(path), 5 + len(servers), None))
        return servers[-1]

    client = model_server.acquire(uuid.uuid4().hex, 2, load)
    assert len(servers) == 2
    assert client.take_load_report() == 6 and client.reported_loads == 2
    assert client.take_load_report() is None and client.reported_loads == 0
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    (key,) = client.required_inputs()
    want = servers[0].predict({key: x})
    used = {client.server() is client.server() for _ in range(2)}
    assert used == {False}  # consecutive calls go to different copies
    for _ in range(3):
        got = client.predict({key: x})
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
