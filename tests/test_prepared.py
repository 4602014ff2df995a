"""`beam_v1.model.prepared`: one PreparedModel per model and process, its steps in one order,
and `LoadOptions` (beam_v1.model.options).

Real SavedModels built with tf.compat.v1 (tests/builders.py); parse counts come from
`metadata.parse_count`, which counts real parses of saved_model.pb.
"""

from __future__ import annotations

import os
import shutil

import builders
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import beam_v1
from beam_v1.errors import MissingOpsError, ModelFileError, SignatureNotFoundError
from beam_v1.model import audit, metadata
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import PreparedModel, prepare
from beam_v1.model.session import V1Model
from beam_v1.scoring import example_feeds, preflight

v1 = tf.compat.v1


def mlp_reference(x: np.ndarray) -> np.ndarray:
    """builders.build_mlp's scores in numpy: softmax(relu(x k1 + b1) k2 + b2)."""
    k1, b1, k2, b2 = builders.mlp_weights()
    logits = np.maximum(x @ k1 + b1, 0.0) @ k2 + b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _copy(src: str, dest) -> str:
    shutil.copytree(src, dest)
    return str(dest)


# ----------------------------------------------------------------- parsed once


def test_one_prepare_parses_once_and_every_consumer_reuses_it(built_models, tmp_path):
    path = _copy(built_models["mlp"], tmp_path / "mlp")
    before = metadata.parse_count()
    prepared = prepare(path)
    assert metadata.parse_count() == before + 1
    assert isinstance(prepared, PreparedModel)
    assert prepared.signature_key == "serving_default" and prepared.tags == ("serve",)
    # the same model again, by load (other session options), preflight and inspect: no parse
    assert prepare(path).meta_graph is prepared.meta_graph
    assert preflight.check_model(path, None, None, {}).meta_graph is prepared.meta_graph
    assert beam_v1.inspect(path).signatures == prepared.signatures
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with beam_v1.load(path, intra_op_threads=1) as model:
        assert model.prepared.meta_graph is prepared.meta_graph
        got = model.predict({"x": x})["scores"]
    assert metadata.parse_count() == before + 1
    np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_tf_example_scorer_reads_no_proto(tmp_path):
    from test_examples import build_estimator_style, fixture_table

    path = build_estimator_style(str(tmp_path / "est"))
    before = metadata.parse_count()
    with beam_v1.load(path) as model:
        table = fixture_table(20)
        scorer = example_feeds.scorer_for_columns(
            model, "serving_default", table.schema, {}, "auto", None
        )
        rows, out, bad = scorer.score(table)
        assert metadata.parse_count() == before + 1  # load's prepare only
        assert model.prepared.example_specs("serving_default")["examples"] is scorer.spec
        # the scorer's rows match the model run on TensorFlow's own serialized examples
        from test_examples import tf_examples

        reference = model.predict(
            {"examples": np.array(tf_examples(table.take(rows), scorer.spec), dtype=object)}
        )
    assert len(rows) + len(bad) == table.num_rows and len(rows) > 0
    np.testing.assert_allclose(out["score"], reference["score"], rtol=1e-6)


# ----------------------------------------------------------------- cache


def test_cache_follows_saved_model_pb(built_models, tmp_path):
    """A changed saved_model.pb is parsed again; an unchanged one is not."""
    path = _copy(built_models["nested"], tmp_path / "nested")
    first = prepare(path, signature="serving_default")
    assert len(first.signatures) == 2
    pb = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved_model.ParseFromString(f.read())
    other = next(k for k in first.signatures if k != "serving_default")
    del saved_model.meta_graphs[0].signature_def[other]
    with open(pb, "wb") as f:
        f.write(saved_model.SerializeToString())
    before = metadata.parse_count()
    second = prepare(path, signature="serving_default")
    assert metadata.parse_count() == before + 1
    assert second is not first and list(second.signatures) == ["serving_default"]
    with pytest.raises(SignatureNotFoundError, match=other):
        prepare(path, signature=other)
    # every signature of one model shares its parse
    assert prepare(path).signature_key == "serving_default"
    assert metadata.parse_count() == before + 1


def test_file_checks_are_never_served_from_the_cache(built_models, tmp_path):
    path = _copy(built_models["mlp"], tmp_path / "mlp")
    prepare(path)
    before = metadata.parse_count()
    os.remove(os.path.join(path, "variables", "variables.index"))
    with pytest.raises(ModelFileError, match="variables.index is missing"):
        prepare(path)
    assert metadata.parse_count() == before  # the proto did not change: still cached


def test_a_tf_serving_base_folder_and_its_version_share_one_prepared_model(built_models, tmp_path):
    base = tmp_path / "base"
    _copy(built_models["mlp"], base / "7")
    by_base = prepare(str(base))
    by_version = prepare(str(base / "7"))
    assert by_base.local_dir == by_version.local_dir == str(base / "7")
    assert by_base.meta_graph is by_version.meta_graph
    assert (by_base.source, by_version.source) == (str(base), str(base / "7"))


# ----------------------------------------------------------------- one order


def build_lost_op_and_file_reader(path: str, secret: str) -> str:
    """y = BoostedTreesBucketize(x, [0, 1, 2]) + 0 * len(read_file(secret)): a lost op (no CPU
    kernel in TF 2.21, rewritable) and an unsafe op in the same signature."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None], name="x")
        (buckets,) = tf.raw_ops.BoostedTreesBucketize(
            float_values=[x], bucket_boundaries=[tf.constant([0.0, 1.0, 2.0])], name="bucketize"
        )
        size = tf.strings.length(tf.io.read_file(secret, name="read_secret"))
        y = tf.add(buckets, 0 * size, name="y")
        with v1.Session(graph=graph) as sess:
            builder = v1.saved_model.Builder(path)
            builder.add_meta_graph_and_variables(
                sess, ["serve"], signature_def_map={
                    "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y})
                },
            )
            builder.save()
    return path


def test_ops_then_rewrites_then_audit_of_the_graph_that_runs(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hello")
    path = build_lost_op_and_file_reader(str(tmp_path / "m"), str(secret))
    # ops come first: without rewrites the lost op refuses the model before the audit
    with pytest.raises(MissingOpsError, match="BoostedTreesBucketize"):
        beam_v1.load(path, rewrites=False)
    # with rewrites the op check passes and the audit refuses, in load and preflight alike
    for attempt in (lambda: beam_v1.load(path), lambda: preflight.check_model(path, None, None)):
        with pytest.raises(beam_v1.UnsafeModelError, match="read_secret") as e:
            attempt()
        assert [f.op for f in e.value.findings] == ["ReadFile"]
    # the audit ran on the rewritten graph: the one a session imports
    recorded = prepare(path, strict=False)
    assert recorded.rewritten == {"BoostedTreesBucketize": ["bucketize"]}
    ops_run = {n.name: n.op for n in recorded.meta_graph.graph_def.node}
    assert ops_run["bucketize"] == "IdentityN" and "BoostedTreesBucketize" not in ops_run.values()
    assert list(recorded.findings) == audit.audit(recorded.meta_graph, recorded.local_dir)
    assert [f.node for f in recorded.findings] == ["read_secret"]
    with beam_v1.load(path, allow_unsafe_ops=True) as model:
        assert model.prepared.meta_graph is prepare(
            path, options=LoadOptions(allow_unsafe_ops=True)
        ).meta_graph
        out = model.predict({"x": np.array([-1.0, 0.0, 0.5, 1.5, 9.0], np.float32)})["y"]
    # lower_bound, clamped to len(boundaries) - 1
    assert out.tolist() == [0, 0, 1, 2, 2]


def test_strict_false_records_instead_of_refusing(built_models, tmp_path):
    path = _copy(built_models["mlp"], tmp_path / "mlp")
    os.remove(os.path.join(path, "variables", "variables.index"))
    with pytest.raises(ModelFileError):
        prepare(path)
    recorded = prepare(path, strict=False)
    assert any("variables.index" in p for p in recorded.file_problems())
    with pytest.raises(ValueError, match="strict=True"):
        V1Model(recorded)


# ----------------------------------------------------------------- V1Layer


def test_v1_layer_refuses_a_model_without_its_checkpoint_index(built_models, tmp_path):
    from beam_v1.keras import V1Layer

    path = _copy(built_models["mlp"], tmp_path / "mlp")
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(V1Layer(path, outputs="scores")(x)), mlp_reference(x), rtol=1e-5, atol=1e-6
    )
    os.remove(os.path.join(path, "variables", "variables.index"))
    with pytest.raises(ModelFileError, match="variables.index is missing"):
        V1Layer(path)


# ----------------------------------------------------------------- LoadOptions


def test_load_options_validate_in_one_place(built_models):
    with pytest.raises(TypeError, match=r"intra_threads.*intra_op_threads"):
        LoadOptions.of(intra_threads=2)
    with pytest.raises(TypeError):
        LoadOptions(intra_threads=2)
    with pytest.raises(TypeError):
        LoadOptions(0)  # keyword-only
    with pytest.raises(ValueError, match="inter_op_threads"):
        LoadOptions(inter_op_threads=-1)
    with pytest.raises(TypeError, match="intra_op_threads"):
        LoadOptions(intra_op_threads="2")
    with pytest.raises(ValueError, match="intra_op_threads"):
        beam_v1.load(built_models["mlp"], intra_op_threads=-3)
    with pytest.raises(TypeError, match="allow_unsafe_ops"):
        beam_v1.load(built_models["mlp"], allow_unsafe=True)
    with pytest.raises(TypeError, match="op_libraries"):
        beam_v1.V1ModelHandler(built_models["mlp"], op_library=["x.so"])
    with pytest.raises(TypeError, match="rewrites"):
        beam_v1.RunV1Inference(built_models["mlp"], rewrite=False)


def test_load_options_normalise_hash_and_configure_the_session(built_models):
    options = LoadOptions.of({"op_libraries": ["a.so"]}, intra_op_threads=1)
    assert options.op_libraries == ("a.so",) and options.import_modules == ()
    assert options == LoadOptions(op_libraries=("a.so",), intra_op_threads=1)
    assert hash(options) == hash(LoadOptions(op_libraries=["a.so"], intra_op_threads=1))
    assert options.as_kwargs() == {"intra_op_threads": 1, "op_libraries": ("a.so",)}
    assert LoadOptions.of(options) is options
    config = LoadOptions(intra_op_threads=1, inter_op_threads=2).session_config()
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == (1, 2)
    with beam_v1.load(built_models["mlp"], intra_op_threads=1, inter_op_threads=2) as model:
        assert model.options == LoadOptions(intra_op_threads=1, inter_op_threads=2)
        got = model.session._config  # the ConfigProto the session was made with
        assert (got.intra_op_parallelism_threads, got.inter_op_parallelism_threads) == (1, 2)


def test_run_v1_inference_keeps_the_validated_options(built_models):
    transform = beam_v1.RunV1Inference(
        built_models["mlp"], schema=pa.schema([("x", pa.list_(pa.float32(), 4))]),
        intra_op_threads=1, op_libraries=[],
    )
    assert transform.config.load == LoadOptions(intra_op_threads=1)
