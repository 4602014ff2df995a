"""DumpVariables, the checkpoint reader and read_variables, on real models (no mocks).

Expected values come from TensorFlow itself: `tf.train.load_checkpoint(prefix).get_tensor`
and, for the models TensorFlow 2.21 can load, `sess.run(global_variables())` after
`tf.compat.v1.saved_model.loader.load`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import apache_beam as beam
import builders
import numpy as np
import pytest
import tensorflow as tf
from realmodels import REALMODELS

from beam_v1.cli import main as cli
from beam_v1.errors import ModelFileError
from beam_v1.model import metadata as savedmodel
from beam_v1.model.inspect import inspect
from beam_v1.variables.checkpoint import CheckpointReader, list_variables, read_checkpoint
from beam_v1.variables.dump import DumpVariables, WriteVariables, output_path
from beam_v1.variables.read import read_variables

v1 = tf.compat.v1


CORPUS = (
    sorted(
        str(p)
        for p in REALMODELS.iterdir()
        if p.is_dir()
        and not p.name.startswith("_")
        and os.path.isdir(os.path.join(savedmodel.resolve_model_dir(str(p)), "variables"))
    )
    if REALMODELS.is_dir()
    else []
)
needs_corpus = pytest.mark.skipif(
    not CORPUS, reason=f"real-model corpus not found at {REALMODELS} (set BEAM_V1_REALMODELS)"
)
# TensorFlow 2.21's own TF1 loader fails on these (missing ops / kernels)
UNLOADABLE = ("stfs__custom_op_zeroout", "tfx__")
BIG = np.arange(300 * 7, dtype=np.float32).reshape(300, 7) * np.float32(1.0001) - 17.5
BIG_INT = (np.arange(60 * 3, dtype=np.int64).reshape(60, 3) - 90) * 1_000_000_007


def _ckpt_values(model: str) -> dict[str, np.ndarray]:
    prefix = savedmodel.checkpoint_prefix(savedmodel.resolve_model_dir(model))
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if not name.startswith("_CHECKPOINTABLE")
    }


def _assert_bit_exact(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        if value.dtype == object:  # strings: bytes objects
            assert got[name].tolist() == value.tolist(), name
        else:
            assert got[name].tobytes() == np.ascontiguousarray(value).tobytes(), name


def _dump(models, prefix, fmt, **kwargs) -> list:
    """Run DumpVariables + WriteVariables in process; return the failed dicts."""
    failed_out = []
    with beam.Pipeline() as p:
        dumped = p | beam.Create(models) | DumpVariables(**kwargs)
        _ = dumped.variables | WriteVariables(prefix, fmt, failed=dumped.failed)
    failed_file = prefix + "-failed.jsonl"
    if os.path.exists(failed_file):
        failed_out = [json.loads(x) for x in Path(failed_file).read_text().splitlines() if x]
    return failed_out


def _records(model, **kwargs):
    """DumpVariables' records for one model, collected in memory (tiny models only)."""
    import tempfile

    out = tempfile.mktemp(suffix=".jsonl")
    with beam.Pipeline() as p:
        dumped = p | beam.Create([model]) | DumpVariables(**kwargs)
        _ = (
            dumped.variables
            | beam.Map(lambda r: json.dumps([r.name, r.slice_index, r.num_slices, r.trainable]))
            | beam.io.WriteToText(out, shard_name_template="")
        )
    rows = [json.loads(x) for x in Path(out).read_text().splitlines() if x]
    os.remove(out)
    return rows


def build_big(path):
    """A model whose `big` variable (8,400 bytes) and `ints` (1,440 bytes) exceed 1 KiB."""

    def make():
        x = v1.placeholder(tf.float32, [None, 7], name="x")
        big = v1.Variable(BIG, name="big", use_resource=True)
        v1.Variable(BIG_INT, name="ints", use_resource=False, trainable=False)
        scale = v1.Variable(np.float64(0.1), name="scale", use_resource=False)
        y = tf.identity(tf.reduce_sum(x @ tf.transpose(big)) * tf.cast(scale, tf.float32), "y")
        return {"serving_default": builders.predict({"x": x}, {"y": y})}, None

    return builders.build(path, make)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, built_models):
    root = tmp_path_factory.mktemp("dumpmodels")
    return {
        "partitioned": built_models["partitioned"],
        "mlp": built_models["mlp"],
        "fixed_batch": built_models["fixed_batch"],  # no variables
        "big": build_big(str(root / "big")),
    }


# --------------------------------------------------------------------- corpus


@pytest.fixture(scope="module")
def corpus_dump(tmp_path_factory):
    if not CORPUS:
        pytest.skip("no corpus")
    out = tmp_path_factory.mktemp("corpus_dump")
    failed = {
        fmt: _dump(CORPUS, str(out / fmt / "dump"), fmt, slice_bytes=4096)
        for fmt in ("parquet", "npz")
    }
    return out, failed


@needs_corpus
@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_corpus_dump_equals_load_checkpoint(corpus_dump, fmt):
    out, failed = corpus_dump
    assert failed[fmt] == []
    manifest = [json.loads(x) for x in (out / fmt / "dump-manifest.jsonl").read_text().splitlines()]
    assert sorted(m["model"] for m in manifest) == CORPUS
    for model in CORPUS:
        got = read_variables(output_path(str(out / fmt / "dump"), model, fmt))
        _assert_bit_exact(got, _ckpt_values(model))
        assert got, model
    # the prefix form picks a model by name; the taxi exports (unloadable by TF 2.21) are there
    taxi = [m for m in CORPUS if "chicago_taxi" in m]
    assert len(taxi) == 3
    for model in taxi:
        got = read_variables(str(out / fmt / "dump"), model=model)
        assert len(got) > 10 and any(v.size > 1000 for v in got.values())


def _reinitialized(mg) -> set[str]:
    """Variables whose initializer the model's own init op runs again at load time (e.g.
    half_plus_two_mkl's main_op re-draws its conv kernels): a session sees new values."""
    nodes = {n.name: n for n in mg.graph_def.node}
    seen: set[str] = set()
    todo = [x for names in savedmodel.init_ops(mg).values() for x in names]
    while todo:
        name = todo.pop().split(":")[0].lstrip("^")
        if name in nodes and name not in seen:
            seen.add(name)
            todo.extend(nodes[name].input)
    return {n[: -len("/Assign")] for n in seen if n.endswith("/Assign")}


@needs_corpus
def test_corpus_dump_equals_session_run(corpus_dump):
    out, _ = corpus_dump
    checked, skipped = 0, set()
    for model in CORPUS:
        if any(u in model for u in UNLOADABLE):
            continue
        model_dir = savedmodel.resolve_model_dir(model)
        got = read_variables(output_path(str(out / "parquet" / "dump"), model, "parquet"))
        mg = savedmodel.select_meta_graph(savedmodel.read_saved_model(model_dir))
        graph = tf.Graph()
        with v1.Session(graph=graph) as sess:
            v1.saved_model.loader.load(sess, list(mg.meta_info_def.tags), model_dir)
            gvars = v1.global_variables()
            values = sess.run(gvars)
        assert gvars, model
        redrawn = _reinitialized(mg)
        for var, value in zip(gvars, values):
            if var.op.name in redrawn:
                skipped.add(Path(model).name)
                continue
            info = getattr(var, "_save_slice_info", None)
            if info is not None:  # a part: compare with its slice of the whole variable
                region = tuple(slice(o, o + s) for o, s in zip(info.var_offset, info.var_shape))
                expected = got[info.full_name][region]
            else:
                expected = got[var.op.name]
            assert expected.dtype == value.dtype and expected.shape == value.shape, var.name
            assert expected.tobytes() == value.tobytes(), (model, var.name)
            checked += 1
    assert checked > 100 and "serving__saved_model_half_plus_two_mkl" in skipped


@needs_corpus
def test_corpus_partitioned_parts_and_metadata():
    model = str(REALMODELS / "stfs__tensorflow_estimator_model")
    whole = {s.name: s for s in list_variables(model)}
    parts = {s.name: s for s in list_variables(model, parts=True)}
    assert "linear/a/weights" in whole and "linear/a/weights/part_0" in parts
    assert parts["linear/a/weights/part_0"].kind == "ref"
    assert parts["linear/a/weights/part_0"].trainable is True
    assert parts["global_step"].trainable is False
    values = read_checkpoint(model, parts=True)
    ckpt = _ckpt_values(model)
    np.testing.assert_array_equal(values["linear/a/weights/part_0"], ckpt["linear/a/weights"])
    # consistent with `beam-v1 inspect`
    assert [v.name for v in inspect(model).variables] == sorted(whole)


# --------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_partitioned_and_sliced_round_trip(fixtures, tmp_path, fmt):
    prefix = str(tmp_path / "dump")
    models = [fixtures["partitioned"], fixtures["big"]]
    assert _dump(models, prefix, fmt, slice_bytes=1024) == []
    part = read_variables(prefix, model=fixtures["partitioned"])
    np.testing.assert_array_equal(part["w"], builders.PARTITIONED_W)
    _assert_bit_exact(part, _ckpt_values(fixtures["partitioned"]))
    big = read_variables(prefix, model=fixtures["big"])
    _assert_bit_exact(big, {"big": BIG, "ints": BIG_INT, "scale": np.float64(0.1)})

    prefix = str(tmp_path / "parts")
    assert _dump([fixtures["partitioned"]], prefix, fmt, parts=True, slice_bytes=8) == []
    parts = read_variables(prefix)
    assert sorted(parts) == [f"w/part_{i}" for i in range(4)]
    for i in range(4):
        _assert_bit_exact(
            {"p": parts[f"w/part_{i}"]}, {"p": builders.PARTITIONED_W[2 * i : 2 * i + 2]}
        )


def test_big_variable_travels_as_slices(fixtures):
    rows = _records(fixtures["big"], slice_bytes=1024)
    big = sorted(r for r in rows if r[0] == "big")
    assert [r[1] for r in big] == list(range(len(big))) and len(big) == 9  # 8400 B / 1 KiB
    assert {r[2] for r in big} == {9}
    assert [r for r in rows if r[0] == "scale"] == [["scale", 0, 1, True]]
    assert [r for r in rows if r[0] == "ints"][0][3] is False  # trainable=False
    # read by slice: rows straight from the data shard, and via RestoreV2 for a partition
    reader = CheckpointReader(fixtures["big"])
    spec = {s.name: s for s in list_variables(fixtures["big"])}
    np.testing.assert_array_equal(reader.read_rows(spec["big"], 31, 77), BIG[31:77])
    reader = CheckpointReader(fixtures["partitioned"])
    spec = list_variables(fixtures["partitioned"])[0]
    np.testing.assert_array_equal(reader.read_rows(spec, 1, 6), builders.PARTITIONED_W[1:6])


def test_parquet_columns(fixtures, tmp_path):
    import pyarrow.parquet as pq

    prefix = str(tmp_path / "dump")
    assert _dump([fixtures["big"]], prefix, "parquet", slice_bytes=1024) == []
    table = pq.read_table(output_path(prefix, fixtures["big"], "parquet")).to_pylist()
    scale = [r for r in table if r["name"] == "scale"][0]
    assert scale["dtype"] == "float64" and scale["shape"] == [] and scale["values"] == [0.1]
    assert scale["kind"] == "ref" and scale["trainable"] is True
    big = [r for r in table if r["name"] == "big"]
    assert len(big) == 9 and all(r["values"] is None and r["kind"] == "resource" for r in big)
    assert sum(r["nbytes"] for r in big) == BIG.nbytes
    assert [r for r in table if r["name"] == "ints"][0]["values"] is None  # not float


def test_model_without_variables_yields_nothing(fixtures, caplog):
    assert list_variables(fixtures["fixed_batch"]) == []
    assert read_checkpoint(fixtures["fixed_batch"]) == {}
    assert _records(fixtures["fixed_batch"]) == []


# ---------------------------------------------------------------- broken shards


def _copy(model: str, dest: Path) -> tuple[str, str]:
    shutil.copytree(model, dest)
    shards = sorted((dest / "variables").glob("variables.data-*"))
    assert len(shards) == 1
    return str(dest), str(shards[0])


def test_missing_shard_names_the_file(fixtures, tmp_path):
    model, shard = _copy(fixtures["mlp"], tmp_path / "m")
    os.remove(shard)
    with pytest.raises(ModelFileError, match=shard.replace(".", r"\.")):
        read_checkpoint(model)


def test_truncated_shard_names_the_file(fixtures, tmp_path):
    model, shard = _copy(fixtures["mlp"], tmp_path / "m")
    os.truncate(shard, os.path.getsize(shard) - 8)
    with pytest.raises(ModelFileError, match="truncated") as e:
        read_checkpoint(model)
    assert shard in str(e.value)


def test_corrupt_shard_names_the_file(fixtures, tmp_path):
    model, shard = _copy(fixtures["mlp"], tmp_path / "m")
    data = bytearray(Path(shard).read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last variable's bytes
    Path(shard).write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as e:
        read_checkpoint(model)
    assert shard in str(e.value)


def _break(model: str, dest: Path, how: str) -> tuple[str, str]:
    """A copy of `model` with its checkpoint broken `how`; (copy, the file named in errors)."""
    copy, shard = _copy(model, dest)
    index = os.path.join(copy, "variables", "variables.index")
    if how == "no index":
        os.remove(index)
        return copy, index
    if how == "no shard":
        os.remove(shard)
    elif how == "truncated shard":
        os.truncate(shard, os.path.getsize(shard) // 2)
    elif how == "empty index":
        os.truncate(index, 0)
        return copy, index
    elif how == "index of other variables":  # a valid index that is not this graph's
        prefix = str(dest.parent / "other")
        tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=["other"], shape_and_slices=[""], tensors=[[1.0]]
        )
        shutil.copy(prefix + ".index", index)
        return copy, index
    return copy, shard


@pytest.mark.parametrize(
    "how", ["no index", "empty index", "index of other variables", "no shard", "truncated shard"]
)
def test_a_graph_with_variables_and_a_broken_checkpoint_fails_named(
    fixtures, tmp_path, how, capsys
):
    """A model "has no variables" only when its graph declares none: a graph with variables
    whose index or shard is missing or unreadable fails, naming the file, and the CLI exits 1
    (before, a missing index was reported as "no variables" with exit 0)."""
    model, named = _break(fixtures["mlp"], tmp_path / "m", how)
    with pytest.raises(ModelFileError) as e:
        read_checkpoint(model)
    assert named in str(e.value)
    prefix = str(tmp_path / "out" / "d")
    argv = ["dump-variables", model, fixtures["fixed_batch"], "--output", prefix]
    assert cli.main(argv) == 1
    text = capsys.readouterr()
    assert "2 models: 0 dumped, 1 without variables, 1 failed" in text.out
    assert f"{fixtures['fixed_batch']}: no variables" in text.out
    failed = [json.loads(x) for x in Path(prefix + "-failed.jsonl").read_text().splitlines()]
    assert [f["model"] for f in failed] == [model] and named in failed[0]["error"]
    assert not os.path.exists(output_path(prefix, model, "parquet"))


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_corrupt_sliced_variable_fails_its_model_and_writes_no_file(fixtures, tmp_path, fmt):
    """A big variable read as mapped ranges is checked against the index's CRC-32C after its
    last slice: one flipped byte fails that model (naming the shard and the variable) after
    its other slices went to the sink, and no file appears for it; the fleet goes on."""
    from beam_v1.io.tensor_bundle import read_index
    from beam_v1.model import metadata as sm

    model, shard = _copy(fixtures["big"], tmp_path / "m")
    _, entries = read_index(sm.checkpoint_prefix(model))
    entry = entries[b"big"]
    data = bytearray(Path(shard).read_bytes())
    data[entry.offset + entry.size // 2] ^= 0x01
    Path(shard).write_bytes(bytes(data))
    prefix = str(tmp_path / "out" / "dump")
    failed = _dump([model, fixtures["mlp"]], prefix, fmt, slice_bytes=1024)
    assert [f["model"] for f in failed] == [model]
    assert shard in failed[0]["error"] and "'big'" in failed[0]["error"]
    assert "CRC-32C" in failed[0]["error"]
    assert not os.path.exists(output_path(prefix, model, fmt))
    _assert_bit_exact(
        read_variables(output_path(prefix, fixtures["mlp"], fmt)), _ckpt_values(fixtures["mlp"])
    )
    reader = CheckpointReader(model)
    spec = {s.name: s for s in list_variables(model)}["big"]
    with pytest.raises(ModelFileError, match="CRC-32C"):
        list(reader.slices(spec, 1024))


# ------------------------------------------------------------------------ fleet


@pytest.mark.slow
def test_fleet_multi_processing_cli(fixtures, tmp_path, capsys):
    bad, shard = _copy(fixtures["mlp"], tmp_path / "corrupt")
    data = bytearray(Path(shard).read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # found part way through the model
    Path(shard).write_bytes(bytes(data))
    good = [fixtures["mlp"], fixtures["partitioned"], fixtures["big"]]
    prefix = str(tmp_path / "out" / "fleet")
    argv = [
        "dump-variables",
        *good,
        bad,
        fixtures["fixed_batch"],
        "--output",
        prefix,
        "--format",
        "npz",
        "--slice-mb",
        "0.001",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=2",
    ]
    assert cli.main(argv) == 1
    text = capsys.readouterr()
    assert "5 models: 3 dumped, 1 without variables, 1 failed" in text.out
    for model in good:
        _assert_bit_exact(read_variables(prefix, model=model), _ckpt_values(model))
    assert not os.path.exists(output_path(prefix, bad, "npz"))  # no partial file
    failed = [json.loads(x) for x in Path(prefix + "-failed.jsonl").read_text().splitlines()]
    assert [f["model"] for f in failed] == [bad] and shard in failed[0]["error"]
    assert not [p for p in os.listdir(tmp_path / "out") if "-tmp-" in p]  # temp files gone


# ------------------------------------------------------- parts and finalize


def _fixture_records(model: str, slice_bytes: int):
    """(RecordMeta, value) for every slice of `model`, read as DumpVariables reads them."""
    from beam_v1.variables import checkpoint as variables
    from beam_v1.variables.files import RecordMeta

    specs = list_variables(model)
    reader = CheckpointReader(model)
    out = []
    for order, spec, piece in variables.iter_slices(reader, specs, slice_bytes):
        assert not isinstance(piece, Exception), piece
        meta = RecordMeta(
            spec.name, spec.dtype, tuple(spec.shape), spec.kind, spec.trainable, order,
            piece.index, piece.count, piece.row_start, piece.row_stop, piece.value.nbytes,
        )  # fmt: skip
        out.append((meta, np.array(piece.value)))
    return out


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_records_split_across_parts_are_joined_bit_exact(fixtures, tmp_path, fmt):
    """Records of one model arriving in three bundles, a variable's slices spread over them
    and out of order, are joined into one file equal to the checkpoint."""
    from beam_v1.variables import files as dump_files

    model = fixtures["big"]
    records = _fixture_records(model, 1024)
    big = [r for r in records if r[0].name == "big"]
    assert len(big) == 9
    # part 0: big slices 0-2 then 6 (a run broken off), part 1: the others' variables and
    # big 7, 8, 3 (a run not starting at slice 0), part 2: big 4-5
    groups = [
        big[0:3] + [big[6]],
        [r for r in records if r[0].name != "big"] + [big[7], big[8], big[3]],
        big[4:6],
    ]
    parts = []
    for group in groups:
        writer = dump_files.part_writer(str(tmp_path / "tmp"), model, fmt)
        for meta, value in group:
            writer.append(meta, value)
        parts.append(writer.close())
    final = str(tmp_path / f"out.{fmt}")
    assert dump_files.finalize(final, parts[::-1]) == "joined"
    _assert_bit_exact(read_variables(final), _ckpt_values(model))
    assert not [p for p in parts if os.path.exists(p.path)]  # parts deleted
    if fmt == "npz":
        import zipfile

        with zipfile.ZipFile(final) as zf:
            assert zf.testzip() is None and sorted(zf.namelist()) == [
                "big.npy", "ints.npy", "scale.npy"
            ]  # fmt: skip


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_one_part_is_renamed_and_an_incomplete_model_writes_nothing(fixtures, tmp_path, fmt):
    from beam_v1.variables import files as dump_files

    model = fixtures["big"]
    records = _fixture_records(model, 1024)
    writer = dump_files.part_writer(str(tmp_path / "tmp"), model, fmt)
    for meta, value in records:
        writer.append(meta, value)
    part = writer.close()
    size = os.path.getsize(part.path)
    final = str(tmp_path / f"whole.{fmt}")
    assert dump_files.finalize(final, [part]) == "renamed"
    assert os.path.getsize(final) == size and not os.path.exists(part.path)
    _assert_bit_exact(read_variables(final), _ckpt_values(model))

    writer = dump_files.part_writer(str(tmp_path / "tmp"), model, fmt)
    for meta, value in records[:3] + records[4:]:  # one slice of `big` missing
        writer.append(meta, value)
    part = writer.close()
    final = str(tmp_path / f"missing.{fmt}")
    with pytest.raises(ModelFileError, match=r"'big' has slices \[0, 1, 2, 4"):
        dump_files.finalize(final, [part])
    assert not os.path.exists(final) and not os.path.exists(part.path)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_npz_big_slices_get_a_valid_crc(tmp_path):
    """Slices over 1 MiB have their CRC-32 computed beside the write: the zip must verify."""
    import zipfile

    from beam_v1.variables import files as dump_files
    from beam_v1.variables.files import RecordMeta

    value = np.random.default_rng(0).standard_normal((3 << 16, 8)).astype(np.float32)  # 6 MiB
    writer = dump_files.part_writer(str(tmp_path), "m", "npz")
    rows = value.shape[0] // 3
    for i in range(3):
        meta = RecordMeta(
            "w", "float32", value.shape, "ref", True, 0, i, 3, i * rows, (i + 1) * rows, 0
        )
        writer.append(meta, value[i * rows : (i + 1) * rows])
    part = writer.close()
    with zipfile.ZipFile(part.path) as zf:
        assert zf.testzip() is None
    np.testing.assert_array_equal(read_variables(part.path)["w"], value)


def test_model_failing_part_way_leaves_no_file(fixtures, tmp_path):
    """The corrupt model's first variables were already appended to its part when its last
    one failed: the part is deleted, no final file, the other model is dumped."""
    bad, shard = _copy(fixtures["mlp"], tmp_path / "corrupt")
    data = bytearray(Path(shard).read_bytes())
    data[-4:] = bytes(b ^ 0xFF for b in data[-4:])  # the last variable read
    Path(shard).write_bytes(bytes(data))
    assert len(list_variables(bad)) > 1
    prefix = str(tmp_path / "out" / "dump")
    failed = _dump([bad, fixtures["big"]], prefix, "parquet", slice_bytes=1024)
    assert [f["model"] for f in failed] == [bad] and failed[0]["variables_read"] > 0
    assert not os.path.exists(output_path(prefix, bad, "parquet"))
    _assert_bit_exact(read_variables(prefix, model=fixtures["big"]), _ckpt_values(fixtures["big"]))
    good = os.path.basename(output_path(prefix, fixtures["big"], "parquet"))
    expected = sorted(["dump-failed.jsonl", "dump-manifest.jsonl", good])
    assert sorted(os.listdir(tmp_path / "out")) == expected  # no part, no temp folder
    manifest = [json.loads(x) for x in Path(prefix + "-manifest.jsonl").read_text().splitlines()]
    assert [(m["model"], m["parts"]) for m in manifest] == [(fixtures["big"], 1)]  # renamed


def test_mapped_row_ranges_check_the_shard_size(fixtures, tmp_path):
    """Row ranges are memory-mapped: a shard too short for them is an error naming the file,
    never a crash (touching a mapped page past the end of a file is a SIGBUS)."""
    model, shard = _copy(fixtures["big"], tmp_path / "m")
    spec = {s.name: s for s in list_variables(model)}["big"]
    reader = CheckpointReader(model)
    value = reader.read_rows(spec, 10, 20)
    np.testing.assert_array_equal(value, BIG[10:20])
    with pytest.raises(ValueError, match="read-only"):  # what a sink copies is the file's
        value[0, 0] = 123.0
    os.truncate(shard, 100)
    with pytest.raises(ModelFileError, match="truncated") as e:
        reader.read_rows(spec, 10, 20)
    assert shard in str(e.value)


def build_wide(path):
    """A model with a 6 MiB variable `wide` (3 slices of 2 MiB: each over Parquet's big-value
    size, so each its own row group and its bytes kernel-copied) and a small `bias`."""

    def make():
        x = v1.placeholder(tf.float32, [None, 8], name="x")
        wide = v1.Variable(WIDE, name="wide", use_resource=True)
        bias = v1.Variable(np.float32(0.5), name="bias", use_resource=False)
        y = tf.identity(tf.reduce_sum(x @ tf.transpose(wide[:4])) + bias, "y")
        return {"serving_default": builders.predict({"x": x}, {"y": y})}, None

    return builders.build(path, make)


WIDE = np.random.default_rng(3).standard_normal((3 << 16, 8)).astype(np.float32)  # 6 MiB


@pytest.mark.parametrize("where", ["local", "beam_filesystem"])
@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_big_slices_are_kernel_copied_bit_exact(tmp_path, monkeypatch, fmt, where):
    """Slices mapped from the shard reach the file through copy_file_range (local outputs, and
    here the test FileSystem's, which are local files too); the dump still reads back
    bit-exact, the npz verifies, and each big Parquet slice is a row group of its own."""
    import zipfile

    import pyarrow.parquet as pq
    from remote_fs import MappedFileSystem

    model = build_wide(str(tmp_path / "bucket" / "models" / "wide"))
    prefix = str(tmp_path / "bucket" / "out" / "dump")
    if where == "beam_filesystem":
        MappedFileSystem.ROOT = str(tmp_path / "bucket")
        MappedFileSystem.created.clear()
        model, prefix = "beamv1test://models/wide", "beamv1test://out/dump"
    copied = []
    real = os.copy_file_range

    def spy(src, dst, count, *args):
        n = real(src, dst, count, *args)
        copied.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", spy)
    assert _dump([model], prefix, fmt, slice_bytes=2 << 20) == []
    local = str(tmp_path / "bucket" / "out" / "dump")
    path = output_path(local, model, fmt)
    _assert_bit_exact(read_variables(path), _ckpt_values(str(tmp_path / "bucket/models/wide")))
    assert sum(copied) == WIDE.nbytes  # every slice by the kernel, nothing else
    if where == "beam_filesystem":
        assert any(p.startswith("beamv1test://out/") for p in MappedFileSystem.created)
    if fmt == "npz":
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None
    else:
        pf = pq.ParquetFile(path)
        groups = [
            pf.read_row_group(i, columns=["name"]).column(0).to_pylist()
            for i in range(pf.num_row_groups)
        ]
        assert [g for g in groups if "wide" in g] == [["wide"]] * 3


DTYPES = ("float16", "bfloat16", "bool", "complex64", "int8", "uint16", "float64")


def build_dtypes(path):
    """A model with a (4000, 3) variable of each of DTYPES (12,000-96,000 bytes each)."""

    def make():
        x = v1.placeholder(tf.float32, [None, 2], name="x")
        values = np.arange(4000 * 3).reshape(4000, 3)
        for name in DTYPES:
            init = values % 3 == 0 if name == "bool" else values
            v1.Variable(tf.cast(tf.constant(init), name), name=f"v_{name}")
        v1.Variable(np.array([[b"abc", b""], [b"\xff\x00z", b"d" * 300]]), name="v_string")
        y = tf.identity(x * 2, "y")
        return {"serving_default": builders.predict({"x": x}, {"y": y})}, None

    return builders.build(path, make)


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_every_dtype_round_trips_sliced_whole_and_joined(tmp_path, fmt):
    """bfloat16 (which an .npy header records as raw '<V2': the npz lists it in its zip
    comment), float16, bool, complex64, small ints and strings (bytes objects, as TensorFlow
    gives them) come back with their dtype and bytes, whether read whole, as mapped slices, or
    joined from parts."""
    from beam_v1.variables import files as dump_files

    model = build_dtypes(str(tmp_path / "m"))
    want = _ckpt_values(model)
    assert want["v_bfloat16"].dtype.name == "bfloat16"
    for slice_bytes in (1024, 1 << 20):
        prefix = str(tmp_path / f"out{slice_bytes}" / "dump")
        assert _dump([model], prefix, fmt, slice_bytes=slice_bytes) == []
        _assert_bit_exact(read_variables(output_path(prefix, model, fmt)), want)
    records = _fixture_records(model, 1024)
    parts = []
    for k in range(2):
        writer = dump_files.part_writer(str(tmp_path / "tmp"), model, fmt)
        for meta, value in records[k::2]:
            writer.append(meta, value)
        parts.append(writer.close())
    final = str(tmp_path / f"joined.{fmt}")
    assert dump_files.finalize(final, parts) == "joined"
    _assert_bit_exact(read_variables(final), want)


def _join_rows(rows: list[tuple]) -> dict[str, np.ndarray]:
    """Variables from dump rows (name, dtype, shape, num_slices, row_start, row_stop, data) as
    another reader returned them; no beam_v1 reader involved."""
    import ml_dtypes

    out: dict[str, np.ndarray] = {}
    for name, dtype, shape, num_slices, start, stop, data in rows:
        data = bytes(data)
        if dtype == "string":
            assert num_slices == 1
            items, pos = [], 0
            while pos < len(data):
                n = int.from_bytes(data[pos : pos + 8], "little")
                items.append(data[pos + 8 : pos + 8 + n])
                pos += 8 + n
            out[name] = np.array(items, dtype=object).reshape(shape)
            continue
        np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
        value = np.frombuffer(data, np_dtype.newbyteorder("<"))
        if num_slices == 1:
            out[name] = value.reshape(shape)
            continue
        if name not in out:
            out[name] = np.zeros(shape, np_dtype)
        out[name][start:stop] = value.reshape((stop - start, *shape[1:]))
    return out


def test_dump_parquet_reads_the_same_in_duckdb_polars_and_pyarrow(tmp_path):
    """The dump's Parquet (our own writer) read by DuckDB and by Polars: every column of every
    row equals pyarrow's reading, and the variables joined from their rows equal TensorFlow's
    (several dtypes sliced into 1 KiB rows; a 6 MiB variable in 2 MiB kernel-copied rows)."""
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    for model, slice_bytes in (
        (build_dtypes(str(tmp_path / "dtypes")), 1024),
        (build_wide(str(tmp_path / "wide")), 2 << 20),
    ):
        prefix = str(tmp_path / f"out{slice_bytes}" / "dump")
        assert _dump([model], prefix, "parquet", slice_bytes=slice_bytes) == []
        path = output_path(prefix, model, "parquet")
        arrow = pq.read_table(path)
        names = arrow.schema.names
        want = [tuple(r[n] for n in names) for r in arrow.to_pylist()]
        with duckdb.connect() as con:
            cols = ", ".join(f'"{n}"' for n in names)
            by_duckdb = con.execute(f"SELECT {cols} FROM read_parquet(?)", [path]).fetchall()
        by_polars = pl.read_parquet(path).select(names).rows()
        for got in (by_duckdb, by_polars):
            assert len(got) == len(want) > 1
            for row, expected in zip(got, want, strict=True):
                row = tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in row)
                assert row == expected  # no NaN or -0.0 in these dumps: == is exact here
        if slice_bytes == 1024:
            assert max(r[names.index("num_slices")] for r in want) > 10
        else:
            assert [r[names.index("num_slices")] for r in want if r[1] == "wide"] == [3, 3, 3]
        joined = ["name", "dtype", "shape", "num_slices", "row_start", "row_stop", "data"]
        rows = [tuple(r[names.index(c)] for c in joined) for r in by_duckdb]
        _assert_bit_exact(_join_rows(rows), _ckpt_values(model))
        rows = pl.read_parquet(path).select(joined).rows()
        _assert_bit_exact(_join_rows(rows), _ckpt_values(model))


def test_npz_lists_many_bfloat16_variables_in_a_member(tmp_path):
    """Too many bfloat16 names for the 64 KiB zip comment go to a JSON member of their own,
    which read_variables uses and does not return."""
    import ml_dtypes

    from beam_v1.variables import files as dump_files
    from beam_v1.variables.files import RecordMeta

    writer = dump_files.part_writer(str(tmp_path / "tmp"), "m", "npz")
    names = [f"encoder/layer_{i:04d}/attention/output/dense/kernel" for i in range(1500)]
    value = np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16)
    for order, name in enumerate(names):
        meta = RecordMeta(name, "bfloat16", (2,), "ref", True, order, 0, 1, 0, 2, 4)
        writer.append(meta, value)
    final = str(tmp_path / "m.npz")
    assert dump_files.finalize(final, [writer.close()]) == "renamed"
    got = read_variables(final)
    assert sorted(got) == sorted(names)
    assert all(v.dtype == value.dtype and v.tobytes() == value.tobytes() for v in got.values())


def build_sharded(path):
    """A model saved by a sharded Saver across two devices: two data shards; also an empty
    (0, 3) variable."""

    def make():
        x = v1.placeholder(tf.float32, [None, 3], name="x")
        with tf.device("/cpu:0"):
            a = v1.Variable(np.arange(3000 * 3, dtype=np.float32).reshape(3000, 3), name="a")
            v1.Variable(np.zeros((0, 3), np.float32), name="empty")
        with tf.device("/cpu:1"):
            v1.Variable(np.arange(2000 * 3, dtype=np.float64).reshape(2000, 3) * 0.5, name="b")
        y = tf.identity(x @ tf.transpose(a[:2]), "y")
        return {"serving_default": builders.predict({"x": x}, {"y": y})}, None

    config = v1.ConfigProto(device_count={"CPU": 2})
    return builders.build(path, make, sharded_saver=True, session_config=config)


@pytest.mark.parametrize("fmt", ["parquet", "npz"])
def test_sharded_checkpoint_dumps_bit_exact(tmp_path, fmt):
    model = build_sharded(str(tmp_path / "m"))
    assert len(list((tmp_path / "m" / "variables").glob("variables.data-*-of-00002"))) == 2
    prefix = str(tmp_path / "out" / "dump")
    assert _dump([model], prefix, fmt, slice_bytes=1024) == []
    _assert_bit_exact(read_variables(output_path(prefix, model, fmt)), _ckpt_values(model))


def test_pipelines_dump_variables_module(fixtures, tmp_path):
    """`python -m pipelines.dump_variables` runs the same job as `beam-v1 dump-variables`."""
    import subprocess
    import sys

    prefix = str(tmp_path / "out" / "w")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.dump_variables", fixtures["big"], "--output", prefix,
         "--format", "npz", "--slice-mb", "0.001"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 dumped" in proc.stdout
    _assert_bit_exact(
        read_variables(output_path(prefix, fixtures["big"], "npz")), _ckpt_values(fixtures["big"])
    )


def test_a_model_given_twice_is_dumped_once(fixtures, tmp_path):
    """The same path twice (or with a trailing slash) is one model: one file, bit-exact,
    instead of a join of two copies that failed the whole pipeline."""
    model = fixtures["big"]
    prefix = str(tmp_path / "out" / "dump")
    assert _dump([model, model, model + "/"], prefix, "parquet", slice_bytes=1024) == []
    manifest = [json.loads(x) for x in Path(prefix + "-manifest.jsonl").read_text().splitlines()]
    assert [m["model"] for m in manifest] == [model]
    _assert_bit_exact(read_variables(output_path(prefix, model, "parquet")), _ckpt_values(model))
