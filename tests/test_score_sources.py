"""`Score` over Arrow sources (beam_v1.scoring.sources) with typed options: Parquet and TFRecord
give the values of a direct session run, the step names say the source, and TFRecord records
are read into tables bounded in bytes."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that
from scoring_helpers import mlp_tables
from test_tfrecord_compression import build_parse_model, session_run, write_tf

import beam_v1
from beam_v1 import LoadOptions, OutputOptions, ParquetSource, Score, ScoringOptions, TFRecordSource
from beam_v1.scoring import preflight


def _step_names(pipeline: beam.Pipeline) -> list[str]:
    return [t.unique_name for t in pipeline.to_runner_api().components.transforms.values()]


def _payloads(n: int, width: int = 3) -> list[bytes]:
    rng = np.random.default_rng(3)
    return [
        tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(
                value=rng.normal(size=width).astype(np.float32)))
        })).SerializeToString()
        for _ in range(n)
    ]


def test_score_parquet_source_typed_options_equal_a_session_run(built_models, tmp_path):
    table = mlp_tables([50])[0]
    pq.write_table(table, tmp_path / "in.parquet")
    prefix = str(tmp_path / "out")
    with beam.Pipeline() as pipeline:
        _ = pipeline | Score(
            ParquetSource(str(tmp_path / "*.parquet")), built_models["mlp"],
            OutputOptions(prefix=prefix, codec="zstd"),
            scoring=ScoringOptions(batch_size=16, keep_columns=["id"]),
        )
        names = _step_names(pipeline)
    assert any("ReadParquet" in n for n in names)
    assert not any("TFRecord" in n for n in names)
    out = pq.read_table(sorted(str(p) for p in tmp_path.glob("out-0*.parquet"))).sort_by("id")
    assert out.column_names[0] == "id" and out.num_rows == 50
    x = np.stack(table.column("x").to_numpy(zero_copy_only=False))
    with beam_v1.load(built_models["mlp"]) as model:
        truth = model.predict({"x": x})
    for key, value in truth.items():
        np.testing.assert_allclose(np.stack(out.column(key).to_numpy(zero_copy_only=False))
                                   if value.ndim > 1 else out.column(key).to_numpy(), value,
                                   rtol=1e-6)


def test_score_tfrecord_source_is_named_and_equals_a_session_run(tmp_path):
    model = build_parse_model(str(tmp_path / "model"))
    payloads = _payloads(40)
    path = write_tf(tmp_path / "in.tfrecord", payloads, "ZLIB")
    prefix = str(tmp_path / "out")
    with beam.Pipeline() as pipeline:
        _ = pipeline | beam_v1.ScoreTFRecord(
            model, path, prefix, compression="zlib", batch_size=8, max_batch_bytes=300,
        )
        names = _step_names(pipeline)
    assert any(n.startswith("ScoreTFRecord/ReadTFRecord") for n in names)
    shown = {i.key: i.value for i in beam.transforms.display.DisplayData.create_from(
        beam_v1.ScoreTFRecord(model, path, prefix, compression="zlib")).items}
    assert shown["source"] == "TFRecord" and shown["model"] == model
    assert not any("Parquet" in n for n in names)
    out = pq.read_table(sorted(str(p) for p in tmp_path.glob("out-0*.parquet")))
    assert out.num_rows == 40
    truth = session_run(model, payloads)
    assert sorted(out.column("y").to_pylist()) == sorted(np.float32(truth["y"]).tolist())


def test_tfrecord_tables_are_bounded_in_record_bytes(tmp_path):
    """Records are read into tables of at most max_batch_bytes record bytes (a larger record
    alone), and every record arrives once."""
    model = build_parse_model(str(tmp_path / "model"))
    payloads = _payloads(60) + _payloads(1, width=200)  # the last one is ~800 bytes
    path = write_tf(tmp_path / "in.tfrecord", payloads, "")
    source = TFRecordSource(path)
    scoring = ScoringOptions(max_batch_bytes=250)
    checked = preflight.check_source(model, source, scoring=scoring)

    def check(tables):
        sizes = [(t.num_rows, sum(len(r) for r in t.column("serialized").to_pylist()))
                 for t in tables]
        assert sum(n for n, _ in sizes) == len(payloads)
        assert all(b <= 250 or n == 1 for n, b in sizes), sizes
        assert len(sizes) > len(payloads) * 30 // 250  # batches, not one table

    with beam.Pipeline() as pipeline:
        read = pipeline | source.read(checked, checked.scoring)
        assert_that(read["tables"], check)
    assert checked.input_schema.names == ["serialized"]
    assert checked.scoring.column_map == {"serialized": "examples"}  # adapted by the source


def test_run_v1_inference_typed_and_flat_forms(built_models):
    """The typed form and the flat keywords build the same worker config; flat keywords
    override the typed options' fields; an unknown keyword is named."""
    typed = beam_v1.RunV1Inference(
        built_models["mlp"], load=LoadOptions(intra_op_threads=1),
        scoring=ScoringOptions(batch_size=7, keep_columns="id, tag"), batch_size=9,
    )
    flat = beam_v1.RunV1Inference(built_models["mlp"], intra_op_threads=1, batch_size=9,
                                  keep_columns=["id", "tag"])
    assert typed.config == flat.config
    assert typed.config.scoring.batch_size == 9 and typed.config.scoring.keep_columns == (
        "id", "tag")
    with pytest.raises(TypeError, match="batchsize"):
        beam_v1.RunV1Inference(built_models["mlp"], batchsize=9)


def test_parquet_source_sample_reads_fixed_size_list_null_rows(tmp_path):
    """The first rows that teach unknown output ranks are read like the run's rows: a
    fixed_size_list column with null rows (which pyarrow's reader refuses) is read, nulls
    kept, with the footer's type; DuckDB reads the same rows from the same file."""
    import duckdb
    import pyarrow as pa

    mask = np.zeros(20, bool)
    mask[[1, 5]] = True
    x = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(60, dtype=np.float32)), 3,
                                          mask=pa.array(mask))
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": np.arange(20), "x": x}), path, row_group_size=6)
    with pytest.raises(pa.ArrowInvalid):
        next(pq.ParquetFile(path).iter_batches(batch_size=8))
    sample = ParquetSource(path).sample([path])
    assert sample.schema == pq.read_schema(path)
    truth = duckdb.sql(f"SELECT id, x FROM read_parquet('{path}') ORDER BY id").fetchall()
    assert sample.num_rows > 5
    assert sample["x"].to_pylist() == [None if v is None else list(v)
                                       for _, v in truth[:sample.num_rows]]
