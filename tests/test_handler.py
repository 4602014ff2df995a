"""V1ModelHandler: RunInference over TF1 SavedModels, compared with a direct session run."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelMetadata,
    PredictionResult,
    RunInference,
)
from apache_beam.testing.util import assert_that, equal_to

import beam_v1
from beam_v1.errors import FeedError
from beam_v1.interop.handler import V1ModelHandler


def _multi_rows(n=7):
    rng = np.random.RandomState(1)
    return [
        {
            "a": rng.rand(3).astype(np.float32),
            "b": np.int64(i),
            "c": np.array([i * 0.25], np.float64),
        }
        for i in range(n)
    ]


def _reference(path, feeds):
    with beam_v1.load(path) as model:
        return model.predict(feeds)


def _check(expected_by_id, outputs):
    """A matcher: every (id, {output: value}) equals the reference row, and none is missing."""

    def match(actual):
        got = dict(actual)
        assert sorted(got) == sorted(expected_by_id), (sorted(got), sorted(expected_by_id))
        for key, row in got.items():
            for out in outputs:
                np.testing.assert_allclose(row[out], expected_by_id[key][out], rtol=1e-6)

    return match


def test_unkeyed_multi_input_equals_session(built_models):
    path = built_models["multi_input"]
    rows = _multi_rows()
    ref = _reference(path, {k: np.stack([r[k] for r in rows]) for k in ("a", "b", "c")})
    expected = {i: {k: v[i] for k, v in ref.items()} for i in range(len(rows))}
    with beam.Pipeline() as p:
        results = (
            p
            | beam.Create(rows)
            | RunInference(V1ModelHandler(path, max_batch_size=3))
            | beam.Map(lambda r: (int(r.example["b"]), r.inference))
        )
        assert_that(results, _check(expected, ["total", "a_scaled"]))
        ids = (
            p
            | "ids" >> beam.Create(rows[:1])
            | "ri2" >> RunInference(V1ModelHandler(path))
            | beam.Map(lambda r: (type(r).__name__, r.model_id))
        )
        assert_that(ids, equal_to([("PredictionResult", path)]), label="model_id")


def test_keyed_single_input_arrays(built_models):
    path = built_models["mlp"]
    x = np.random.RandomState(2).normal(size=(9, 4)).astype(np.float32)
    ref = _reference(path, {"x": x})
    expected = {f"k{i}": {"scores": ref["scores"][i], "label": ref["label"][i]} for i in range(9)}
    p = beam.Pipeline()
    results = (
        p
        | beam.Create([(f"k{i}", x[i]) for i in range(9)])
        | RunInference(KeyedModelHandler(V1ModelHandler(path, outputs=["scores", "label"])))
        | beam.MapTuple(lambda key, r: (key, r.inference))
    )
    assert_that(results, _check(expected, ["scores", "label"]))
    result = p.run()
    result.wait_until_finish()
    # Beam's standard RunInference metrics, under the handler's namespace
    counters = result.metrics().query(MetricsFilter().with_namespace("BeamML_V1"))["counters"]
    inferences = [c.committed for c in counters if c.key.metric.name == "num_inferences"]
    assert inferences == [9]


def test_bad_element_goes_to_failed_output(built_models):
    path = built_models["mlp"]
    x = np.random.RandomState(3).normal(size=(5, 4)).astype(np.float32)
    ref = _reference(path, {"x": x})
    elements = [x[i] for i in range(5)] + [np.ones(7, np.float32)]  # wrong length: 7, not 4
    expected = {i: {"scores": ref["scores"][i]} for i in range(5)}
    with beam.Pipeline() as p:
        main, other = (
            p
            | beam.Create(elements)
            | RunInference(V1ModelHandler(path, max_batch_size=1)).with_exception_handling()
        )
        good = main | beam.Map(
            lambda r: (next(i for i in range(5) if np.array_equal(x[i], r.example)), r.inference)
        )
        assert_that(good, _check(expected, ["scores"]), label="good")
        bad = other.failed_inferences | beam.Map(lambda e: (len(e[0][0]), "x" in str(e[1])))
        assert_that(bad, equal_to([(7, True)]), label="bad")


def test_model_metadata_swaps_model(built_models, tmp_path):
    import builders

    first = built_models["mlp"]
    second = builders.build_mlp(str(tmp_path / "mlp2"), seed=5)
    x = np.random.RandomState(4).normal(size=(4, 4)).astype(np.float32)
    ref = _reference(second, {"x": x})["scores"]
    assert not np.allclose(ref, _reference(first, {"x": x})["scores"])
    with beam.Pipeline() as p:
        meta = p | "meta" >> beam.Create([ModelMetadata(model_id=second, model_name="mlp2")])
        results = (
            p
            | beam.Create([(i, x[i]) for i in range(4)])
            | RunInference(KeyedModelHandler(V1ModelHandler(first)), model_metadata_pcoll=meta)
            | beam.MapTuple(lambda i, r: (i, r.model_id, r.inference["scores"].tolist()))
        )

        def match(actual):
            assert len(actual) == 4
            for i, model_id, scores in actual:
                assert model_id == second
                np.testing.assert_allclose(scores, ref[i], rtol=1e-6)

        assert_that(results, match)


def test_run_inference_direct_shapes(built_models):
    scalar = V1ModelHandler(built_models["scalar_input"])
    model = scalar.load_model()
    out = list(scalar.run_inference([np.float32(2.0), np.float32(-1.0)], model))
    assert [float(r.inference["y"]) for r in out] == [5.0, -4.0]
    fixed = V1ModelHandler(built_models["fixed_batch"])  # x [4,3]
    rows = [np.full(3, i, np.float32) for i in range(6)]  # one full chunk + one padded
    out = list(fixed.run_inference(rows, fixed.load_model()))
    assert len(out) == 6
    for i, r in enumerate(out):
        np.testing.assert_array_equal(r.inference["y"], np.full(3, i * 2 + 1, np.float32))
        assert isinstance(r, PredictionResult)
    assert fixed.get_num_bytes(rows) == 6 * 3 * 4


def test_errors(built_models):
    with pytest.raises(TypeError, match="Unknown load option"):
        V1ModelHandler(built_models["mlp"], bogus=1)
    handler = V1ModelHandler(built_models["multi_input"])
    model = handler.load_model()
    with pytest.raises(FeedError, match="dict"):
        list(handler.run_inference([np.ones(3, np.float32)], model))
    with pytest.raises(FeedError, match="same inputs"):
        rows = _multi_rows(2)
        del rows[1]["c"]
        list(handler.run_inference(rows, model))
    with pytest.raises(beam_v1.SignatureNotFoundError):
        V1ModelHandler(built_models["mlp"], signature="nope").load_model()
    assert V1ModelHandler(built_models["mlp"], large_model=True).share_model_across_processes()
    assert V1ModelHandler(built_models["mlp"], max_batch_size=8).batch_elements_kwargs() == {
        "max_batch_size": 8
    }
