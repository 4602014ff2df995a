"""RunV1Inference on real Beam pipelines (SPEC §2-§6): scores, rebatching, bad rows,
model errors found by bisection, and errors raised before any output.
"""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scoring_helpers import (
    MULTI_THREADING,
    as_numpy,
    assert_close,
    check_mlp_scores,
    mlp_tables,
    read_outputs,
    run_inference,
    tf_reference,
)

from beam_v1 import RunV1Inference
from beam_v1.cli import main as cli
from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.scoring.job import score

# ------------------------------------------------------------ RunV1Inference


@pytest.mark.parametrize("argv", [[], MULTI_THREADING], ids=["in_memory", "multi_threading"])
def test_mlp_scores_equal_tf_loader(built_models, tmp_path, argv):
    path = built_models["mlp"]
    tables = mlp_tables([5, 120, 1, 37, 64, 90], seed=1)
    run = run_inference(tables, tmp_path, path, argv=argv, batch_size=64)
    scored = run.scored()
    assert run.rows_failed == 0
    assert scored["id"].to_pylist() == list(range(317))
    assert scored.schema.names == ["id", "tag", "label", "scores"]
    assert scored.schema.field("scores").type == pa.list_(pa.float32(), 3)
    assert scored.schema.field("label").type == pa.int64()
    check_mlp_scores(path, scored, tables)
    assert run.counters["rows_in"] == 317 == run.counters["rows_scored"]
    assert run.counters["rows_failed"] == 0
    assert run.counters["model_loads"] == 1


def test_rebatching_merges_small_tables_and_splits_large_ones(built_models, tmp_path):
    path = built_models["mlp"]
    sizes = [7] * 40 + [500] + [3] * 10
    tables = mlp_tables(sizes, seed=2)
    total = sum(sizes)
    run = run_inference(tables, tmp_path, path, batch_size=50)
    out_sizes = [t.num_rows for t in run.scored_parts]
    assert sum(out_sizes) == total and run.rows_failed == 0
    assert max(out_sizes) == 50  # the 500-row table was split, small ones merged
    assert len(out_sizes) < len(sizes) // 2
    # some output batch holds rows of several input tables
    table_of_id = np.repeat(np.arange(len(sizes)), sizes)
    spans = [len(set(table_of_id[t["id"].to_numpy()])) for t in run.scored_parts]
    assert max(spans) >= 5
    batch_size = run.distributions["batch_size"]
    assert batch_size.max == 50 and batch_size.sum == total
    assert batch_size.count == run.counters["batches"] <= total // 50 + 3
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(total))
    check_mlp_scores(path, scored, tables)


def test_record_batches_are_accepted(built_models, tmp_path):
    path = built_models["mlp"]
    tables = mlp_tables([30, 20], seed=3)
    batches = [b for t in tables for b in t.to_batches()]
    assert all(isinstance(b, pa.RecordBatch) for b in batches)
    run = run_inference(batches, tmp_path, path, batch_size=16)
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(50))
    check_mlp_scores(path, scored, tables)


def test_result_is_addressable_by_attribute_and_key(built_models):
    pipeline = beam.Pipeline()
    result = pipeline | beam.Create(mlp_tables([3])) | RunV1Inference(built_models["mlp"])
    assert result.scored is result["scored"]
    assert result.failed is result["failed"]


def test_multi_input_with_planted_bad_rows(built_models, tmp_path):
    path = built_models["multi_input"]
    rng = np.random.RandomState(4)
    n = 120
    a = rng.normal(size=(n, 3)).astype(np.float32).tolist()
    b = rng.randint(-100, 100, size=n).tolist()
    c = rng.normal(size=n).tolist()
    expected_errors = {
        5: "column 'a' is null (input 'a' needs a value)",
        17: "column 'a' has a list of shape [2] where input 'a' needs [3] (shape [-1,3])",
        33: "column 'a' holds a null value",
        64: "column 'b' is null (input 'b' needs a value)",
        99: "column 'c' is null (input 'c' needs a value)",
    }
    a[5] = None
    a[17] = a[17][:2]
    a[33][1] = None
    b[64] = None
    c[99] = None
    full = pa.table(
        {
            "id": np.arange(n),
            "a": pa.array(a, pa.list_(pa.float32())),
            "b": pa.array(b, pa.int64()),
            "c": pa.array(c, pa.float64()),
            "note": [f"n{i}" for i in range(n)],
        }
    )
    tables = [full.slice(0, 50), full.slice(50, 40), full.slice(90)]
    run = run_inference(tables, tmp_path, path, batch_size=32)
    failed = run.failed()
    scored = run.scored()
    assert run.rows_scored + run.rows_failed == n
    assert failed.schema.names == ["id", "a", "b", "c", "note", "error"]
    assert dict(zip(failed["id"].to_pylist(), failed["error"].to_pylist())) == expected_errors
    for column in ("a", "b", "c", "note"):
        assert failed[column].to_pylist() == full.take(list(expected_errors))[column].to_pylist()
    good = np.array(sorted(set(range(n)) - set(expected_errors)))
    assert scored["id"].to_numpy().tolist() == good.tolist()
    assert scored.schema.names == ["id", "note", "a_scaled", "total"]
    want = tf_reference(
        path,
        {
            "a": np.array([a[i] for i in good], dtype=np.float32),
            "b": np.array([b[i] for i in good], dtype=np.int64),
            "c": np.array([[c[i]] for i in good], dtype=np.float64),
        },
    )
    assert_close(scored["total"].to_numpy(), want["total"], "total")
    assert_close(as_numpy(scored["a_scaled"]), want["a_scaled"], "a_scaled")
    assert run.counters["rows_failed"] == len(expected_errors)


def test_string_lookup(built_models, tmp_path):
    path = built_models["string_lookup"]
    words = ["apple", "zzz", "date", None, "banana", "cherry", "", "apple"] * 5
    table = pa.table({"row": np.arange(len(words)), "word": pa.array(words)})
    run = run_inference([table], tmp_path, path, batch_size=16)
    scored, failed = run.scored("row"), run.failed("row")
    assert failed["row"].to_pylist() == [i for i, w in enumerate(words) if w is None]
    assert set(failed["error"].to_pylist()) == {
        "column 'word' is null (input 'word' needs a value)"
    }
    good = [i for i, w in enumerate(words) if w is not None]
    assert scored.schema.names == ["row", "id", "score"]
    assert scored["row"].to_pylist() == good
    want = tf_reference(path, {"word": np.array([words[i] for i in good], dtype=object)})
    np.testing.assert_array_equal(scored["id"].to_numpy(), want["id"])
    assert_close(scored["score"].to_numpy(), want["score"], "score")
    assert scored["id"].to_pylist()[:7] == [0, -1, 3, 1, 2, -1, 0]


def test_fixed_batch_model_with_rows_not_a_multiple_of_the_batch(built_models, tmp_path):
    path = built_models["fixed_batch"]
    n = 23
    x = (np.arange(n * 3, dtype=np.float32) / 7).reshape(n, 3)
    table = pa.table({"id": np.arange(n), "x": pa.array(x.tolist(), pa.list_(pa.float32()))})
    run = run_inference([table.slice(0, 10), table.slice(10)], tmp_path, path, batch_size=7)
    scored = run.scored()
    assert run.rows_failed == 0
    assert scored["id"].to_pylist() == list(range(n))
    assert scored.schema.field("y").type == pa.list_(pa.float32(), 3)
    np.testing.assert_array_equal(as_numpy(scored["y"]).astype(np.float32), x * 2 + 1)
    # the TF loader on one full fixed batch agrees
    want = tf_reference(path, {"x": x[:4]})
    np.testing.assert_array_equal(as_numpy(scored["y"])[:4], want["y"])


def test_scalar_input_model_runs_row_by_row(built_models, tmp_path):
    path = built_models["scalar_input"]
    values = [1.5, -2.0, None, 4.0, 0.25, 10.0]
    table = pa.table({"id": np.arange(6), "x": pa.array(values, pa.float64())})
    run = run_inference([table], tmp_path, path, batch_size=4)
    scored, failed = run.scored(), run.failed()
    assert scored["id"].to_pylist() == [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(
        scored["y"].to_numpy(), np.array([v * 3 - 1 for v in values if v is not None], np.float32)
    )
    assert scored.schema.field("y").type == pa.float32()
    assert failed["id"].to_pylist() == [2]
    assert failed["error"].to_pylist() == ["column 'x' is null (input 'x' needs a value)"]
    assert tf_reference(path, {"x": np.float32(1.5)})["y"] == scored["y"][0].as_py()


@pytest.mark.parametrize("kind", ["list", "fixed_size_list"])
def test_nested_model(built_models, tmp_path, kind):
    path = built_models["nested"]
    rng = np.random.RandomState(5)
    x = rng.normal(size=(40, 2, 3)).astype(np.float32)
    if kind == "list":
        rows = x.tolist()
        rows[7] = rows[7][:1]  # [1,3] where [2,3] is needed
        rows[11][1] = rows[11][1][:2]  # ragged
        column = pa.array(rows, pa.list_(pa.list_(pa.float32())))
        bad = {
            7: "column 'x' has a list of shape [1x3] where input 'x' needs [2x3] (shape [-1,2,3])",
            11: "column 'x' is a ragged nested list",
        }
    else:
        column = pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 3), 2
        )
        bad = {}
    table = pa.table({"id": np.arange(40), "x": column})
    run = run_inference([table], tmp_path, path, batch_size=16)
    scored = run.scored()
    good = [i for i in range(40) if i not in bad]
    assert scored["id"].to_pylist() == good
    failed = run.failed()
    if not bad:
        assert failed is None
    else:
        assert dict(zip(failed["id"].to_pylist(), failed["error"].to_pylist())) == bad
        assert failed.schema.field("x").type == pa.list_(pa.list_(pa.float32()))
    want = tf_reference(path, {"x": x[good]})
    assert scored.schema.field("doubled").type == pa.list_(pa.list_(pa.float32(), 3), 2)
    assert_close(as_numpy(scored["doubled"]).astype(np.float32), want["doubled"], "doubled")
    assert_close(scored["total"].to_numpy(), want["total"], "total")


def test_variable_length_model(built_models, tmp_path):
    path = built_models["variable_len"]
    rng = np.random.RandomState(6)
    rows = [rng.randint(-9, 9, size=rng.randint(0, 6)).astype(float).tolist() for _ in range(60)]
    rows[13] = None
    table = pa.table({"id": np.arange(60), "x": pa.array(rows, pa.list_(pa.float32()))})
    run = run_inference([table.slice(0, 25), table.slice(25)], tmp_path, path, batch_size=20)
    scored, failed = run.scored(), run.failed()
    assert failed["id"].to_pylist() == [13]
    good = [i for i in range(60) if rows[i] is not None]
    assert scored["id"].to_pylist() == good
    np.testing.assert_array_equal(
        scored["total"].to_numpy(), np.array([sum(rows[i]) for i in good], np.float32)
    )
    np.testing.assert_array_equal(scored["count"].to_numpy(), [len(rows[i]) for i in good])
    assert scored.schema.field("count").type == pa.int32()
    i = next(i for i in good if len(rows[i]) == 4)
    want = tf_reference(path, {"x": np.array([rows[i]], np.float32)})
    assert scored["total"][good.index(i)].as_py() == want["total"][0]


@pytest.mark.parametrize("output_shapes", [None, {"y": (-1,)}], ids=["learnt", "given"])
def test_unknown_rank_model_scalar_column(built_models, tmp_path, output_shapes):
    path = built_models["unknown_rank"]
    x = np.arange(-5, 25, dtype=np.float32) / 3
    table = pa.table({"id": np.arange(30), "x": x})
    run = run_inference([table], tmp_path, path, batch_size=8, output_shapes=output_shapes)
    scored = run.scored()
    assert scored.schema.field("y").type == pa.float32()
    np.testing.assert_array_equal(scored["y"].to_numpy(), tf_reference(path, {"x": x})["y"])


def test_unknown_rank_model_list_column_learns_the_output_rank(built_models, tmp_path):
    path = built_models["unknown_rank"]
    x = (np.arange(40, dtype=np.float32) / 4).reshape(20, 2)
    table = pa.table({"id": np.arange(20), "x": pa.array(x.tolist(), pa.list_(pa.float32()))})
    run = run_inference([table], tmp_path, path, batch_size=8)
    scored = run.scored()
    assert scored["id"].to_pylist() == list(range(20))
    assert pa.types.is_list(scored.schema.field("y").type)
    np.testing.assert_array_equal(as_numpy(scored["y"]), tf_reference(path, {"x": x})["y"])


@pytest.mark.parametrize("nested", [False, True], ids=["scalar", "list"])
def test_unknown_rank_model_over_parquet(built_models, tmp_path, nested):
    """ScoreParquet learns an unknown-rank output's shape from the first file's first rows."""
    path = built_models["unknown_rank"]
    x = (np.arange(60, dtype=np.float32) / 8).reshape(30, 2)
    column = pa.array(x.tolist(), pa.list_(pa.float32())) if nested else pa.array(x[:, 0])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": np.arange(30), "x": column}), str(tmp_path / "in" / "a.parquet"))
    prefix = str(tmp_path / "out" / "u")
    summary = score(path, str(tmp_path / "in" / "*.parquet"), prefix, [], progress=False)
    assert summary["rows_scored"] == 30 and summary["rows_failed"] == 0
    _, scored = read_outputs(prefix)
    scored = scored.sort_by("id")
    want = tf_reference(path, {"x": x if nested else x[:, 0]})["y"]
    assert pa.types.is_list(scored.schema.field("y").type) == nested
    np.testing.assert_array_equal(as_numpy(scored["y"]), want)


# ---------------------------------------------------- model errors: bisection


def test_model_error_fails_only_the_rows_that_cause_it(failing_models, tmp_path):
    path = failing_models["checked_sqrt"]
    n = 300
    x = np.linspace(0.0, 50.0, n).astype(np.float32)
    negative = [0, 77, 78, 150, 299]
    x[negative] = -1.0
    tables = [pa.table({"id": np.arange(s, s + 100), "x": x[s : s + 100]}) for s in (0, 100, 200)]
    run = run_inference(tables, tmp_path, path, batch_size=64)
    failed, scored = run.failed(), run.scored()
    assert failed["id"].to_pylist() == negative
    assert failed.schema.names == ["id", "x", "error"]
    assert failed["x"].to_pylist() == [-1.0] * len(negative)
    for error in failed["error"].to_pylist():
        assert error.startswith("the model failed on this row: ")
        assert "x must be >= 0" in error
    good = [i for i in range(n) if i not in negative]
    assert scored["id"].to_pylist() == good
    want = tf_reference(path, {"x": x[good]})["y"]
    np.testing.assert_array_equal(scored["y"].to_numpy(), want)
    assert run.counters["rows_in"] == n
    assert run.counters["rows_scored"] == n - len(negative)
    assert run.counters["rows_failed"] == len(negative)


def test_model_error_on_strings_is_bisected(failing_models, tmp_path):
    path = failing_models["parse_number"]
    texts = [str(i / 4) for i in range(50)]
    texts[9] = "abc"
    texts[31] = "1.5.2"
    table = pa.table({"id": np.arange(50), "text": texts})
    run = run_inference([table], tmp_path, path)
    failed, scored = run.failed(), run.scored()
    assert failed["id"].to_pylist() == [9, 31]
    assert failed["text"].to_pylist() == ["abc", "1.5.2"]
    assert all("the model failed on this row" in e for e in failed["error"].to_pylist())
    assert "abc" in failed["error"][0].as_py()
    good = [t for t in texts if t not in ("abc", "1.5.2")]
    want = tf_reference(path, {"text": np.array(good, dtype=object)})["value"]
    np.testing.assert_array_equal(scored["value"].to_numpy(), want)
    np.testing.assert_array_equal(want, np.array([float(t) * 2 for t in good], np.float32))


# ----------------------------------------------------------- pre-run errors


def _write_x_file(path, column="x", rows=4):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "id": np.arange(rows),
                column: pa.array([[1.0, 2.0, 3.0, 4.0]] * rows, pa.list_(pa.float32())),
            }
        ),
        path,
    )


PRE_RUN_ERRORS = {
    "missing model path": (
        {"model": "{tmp}/no_such_model"},
        [],
        ["no_such_model", "does not exist"],
    ),
    "unknown tags": ({"tags": ["gpu"]}, ["--tags", "gpu"], ["gpu", "serve"]),
    "unknown signature": (
        {"signature": "nope"},
        ["--signature", "nope"],
        ["'nope'", "'serving_default'"],
    ),
    "missing column": (
        {"input": "{tmp}/in_other/*.parquet"},
        [],
        ["input 'x' (float32 [-1,4]) has no column 'x'", "id (int64), feat"],
    ),
    "no input file matches": (
        {"input": "{tmp}/nothing/*.parquet"},
        [],
        ["No input file matches", "nothing"],
    ),
    "unknown output": (
        {"outputs": ["nope"]},
        ["--outputs", "nope"],
        ["['nope']", "'label'", "'scores'"],
    ),
    "--map to an unknown input": (
        {"column_map": {"x": "nope"}},
        ["--map", "x=nope"],
        ["--map names input(s) ['nope']"],
    ),
}


@pytest.mark.parametrize("case", sorted(PRE_RUN_ERRORS))
def test_pre_run_errors_raise_before_any_output(built_models, tmp_path, capsys, case):
    overrides, flags, fragments = PRE_RUN_ERRORS[case]
    tmp = str(tmp_path)
    _write_x_file(f"{tmp}/in/a.parquet")
    _write_x_file(f"{tmp}/in_other/a.parquet", column="feat")
    model = overrides.get("model", built_models["mlp"]).format(tmp=tmp)
    pattern = overrides.get("input", f"{tmp}/in/*.parquet").format(tmp=tmp)
    kwargs = {k: v for k, v in overrides.items() if k not in ("model", "input")}
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    prefix = str(out_dir / "res")
    with pytest.raises(BeamV1Error) as info:
        score(model, pattern, prefix, [], progress=False, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert os.listdir(out_dir) == []

    capsys.readouterr()
    argv = ["score", "--model", model, "--input", pattern, "--output", prefix, "--quiet"]
    assert cli.main(argv + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("beam-v1: error: ")
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0  # one paragraph
    for fragment in fragments:
        assert fragment in err
    assert os.listdir(out_dir) == []


def test_schema_given_to_run_v1_inference_is_checked_at_construction(built_models):
    schema = pa.schema([("id", pa.int64()), ("features", pa.list_(pa.float32()))])
    with pytest.raises(SchemaError, match="has no column 'x'"):
        RunV1Inference(built_models["mlp"], schema=schema)
    RunV1Inference(built_models["mlp"], schema=schema, column_map={"features": "x"})
    with pytest.raises(BeamV1Error, match="'nope'"):
        RunV1Inference(built_models["mlp"], signature="nope")
    with pytest.raises(ValueError, match="batch_size"):
        RunV1Inference(built_models["mlp"], batch_size=0)
