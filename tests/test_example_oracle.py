"""Oracle for tf.Example from columns: TensorFlow itself.

Random feature specs (required / defaulted FixedLenFeature of int64, float32 and string with
shapes [], [2], [2,2]; VarLenFeature; FixedLenSequenceFeature(allow_missing=True)) are built
into real TF1 graphs parsed by ParseExampleV2 or ParseExample. Random columns (nulls, wrong
list lengths, ints into float features, binary and utf8 strings, scalar, list and large_list
columns) are scored through the real
scoring path (`inference.BatchScorer` planned as a RunV1Inference worker plans it) on both
feed paths. The truth: every row serialized with TensorFlow's own `tf.train.Example` (a null
cell = the feature is absent) and run ALONE through the signature in a plain Session. Both
paths must score exactly the rows TensorFlow scores, with the same values, and dead-letter
exactly the rows TensorFlow rejects. The model's computation is per row and exact (integer
reductions, elementwise float maps), so a row's values do not depend on its batch.

BEAM_V1_FUZZ_EXAMPLES raises the number of generated cases (default 30).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from example_truth import TruthSession, build_parse_model, example_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import beam_v1
from beam_v1.errors import SchemaError
from beam_v1.model import example_spec as examples
from beam_v1.scoring import columns, example_feeds, preflight
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.plan import build_plan
from beam_v1.scoring.scorer import BatchScorer, choose_feed

v1 = tf.compat.v1
EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "30"))
ORACLE = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])
KINDS = ("required", "default", "sparse", "sequence")
DTYPES = ("int64", "float32", "string")
SHAPES = ((), (2,), (2, 2))


# ------------------------------------------------------------------ specs and models


def normalize(spec) -> tuple:
    """(v1_op, ((key, kind, dtype, shape), ...)) with shapes that mean something per kind."""
    v1_op, features = spec
    out = []
    for i, (kind, dtype, shape) in enumerate(features):
        if kind == "sparse":
            shape = ()
        elif kind == "sequence":
            shape = shape[:1]
        out.append((f"f{i}_{kind[:3]}_{dtype[:3]}", kind, dtype, shape))
    return v1_op, tuple(out)


SPECS = st.tuples(
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(DTYPES), st.sampled_from(SHAPES)),
             min_size=1, max_size=4),
).map(normalize)


def default_of(dtype: str, size: int) -> list:
    if dtype == "string":
        return [f"d{i}".encode() for i in range(size)]
    if dtype == "float32":
        return [0.5 + i for i in range(size)]
    return [7 + i for i in range(size)]


def tf_feature(kind: str, dtype: str, shape: tuple):
    tf_dtype = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}[dtype]
    if kind == "required":
        return v1.io.FixedLenFeature(list(shape), tf_dtype)
    if kind == "default":
        size = int(np.prod(shape)) if shape else 1
        value = default_of(dtype, size)
        return v1.io.FixedLenFeature(list(shape), tf_dtype,
                                     default_value=np.reshape(np.array(value), shape).tolist())
    if kind == "sparse":
        return v1.io.VarLenFeature(tf_dtype)
    return v1.io.FixedLenSequenceFeature(list(shape), tf_dtype, allow_missing=True)


def exact_ints(t: tf.Tensor) -> tf.Tensor:
    """Values as int64 exactly: ints as they are, floats rounded, strings by length."""
    if t.dtype == tf.string:
        return tf.cast(tf.strings.length(t), tf.int64)
    if t.dtype == tf.float32:
        return tf.cast(tf.round(t), tf.int64)
    return t


def outputs_of(features: tuple):
    """Per feature, per-row exact outputs: elementwise maps of dense values (a string by a hash
    of its bytes), integer sums and counts over var-len and sequence values."""

    def output(parsed: dict) -> dict:
        out = {}
        for key, kind, dtype, _ in features:
            t = parsed[key]
            if kind in ("required", "default"):
                if dtype == "string":
                    out[f"{key}_hash"] = tf.strings.to_hash_bucket_fast(t, 1 << 30)
                elif dtype == "float32":
                    out[f"{key}_map"] = t * 2.0 + 1.0
                else:
                    out[f"{key}_map"] = t * 3 + 1
            elif kind == "sparse":
                # v1.sparse_reduce_sum: an output of unknown rank, as Estimator models have
                out[f"{key}_sum"] = v1.sparse_reduce_sum(
                    tf.SparseTensor(t.indices, exact_ints(t.values), t.dense_shape), 1)
                out[f"{key}_count"] = v1.sparse_reduce_sum(
                    tf.SparseTensor(t.indices, tf.ones_like(t.values, tf.int64), t.dense_shape),
                    1)
            else:  # sequence [n, length, *shape], padded with zeros / b"": pads add nothing
                axes = list(range(1, len(t.shape)))
                out[f"{key}_sum"] = tf.reduce_sum(exact_ints(t), axes)
        return out

    return output


class Built:
    """One spec as a SavedModel, loaded by beam-v1 and by the plain-Session oracle."""

    def __init__(self, root: str, spec: tuple):
        v1_op, features = spec
        self.features = features
        self.dtypes = {key: dtype for key, _, dtype, _ in features}
        self.path = build_parse_model(
            root, {key: tf_feature(kind, dtype, shape) for key, kind, dtype, shape in features},
            outputs_of(features), v1_op=v1_op)
        self.model = beam_v1.load(self.path)
        self.truth = TruthSession(self.path)

    def close(self) -> None:
        self.model.close()
        self.truth.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Models by spec, built once and reused across examples."""
    cache: dict[tuple, Built] = {}
    root = tmp_path_factory.mktemp("oracle")

    def get(spec: tuple) -> Built:
        if spec not in cache:
            cache[spec] = Built(str(root / f"m{len(cache)}"), spec)
        return cache[spec]

    yield get
    for b in cache.values():
        b.close()


# ------------------------------------------------------------------ columns


INTS = st.integers(-(2**40), 2**40)
SMALL_INTS = st.integers(-1000, 1000)  # ints into a float feature: exact in float32
FLOATS = st.floats(-1e6, 1e6, width=32, allow_nan=False)
BYTES = st.binary(max_size=4)
TEXT = st.text(max_size=3)


@st.composite
def column(draw, kind: str, dtype: str, shape: tuple, n: int):
    """(Arrow column, python values per row: None / value / list) for one feature."""
    size = int(np.prod(shape)) if shape else 1
    if dtype == "int64":
        arrow, values = pa.int64(), INTS
    elif dtype == "float32":
        arrow, values = draw(st.sampled_from([(pa.float32(), FLOATS), (pa.float64(), FLOATS),
                                              (pa.int64(), SMALL_INTS)]))
    else:
        arrow, values = draw(st.sampled_from([(pa.binary(), BYTES), (pa.string(), TEXT)]))
    scalar = (kind == "sparse" or kind in ("required", "default") and shape == ()) and draw(
        st.booleans())
    if kind == "sequence":
        step = size  # lengths: any multiple of the element size, or (rarely) not one
        length = st.one_of(st.integers(0, 3).map(lambda k: k * step), st.integers(0, 5))
    elif kind == "sparse":
        length = st.integers(0, 4)
    else:  # mostly the right number of values, sometimes not
        length = st.one_of(st.just(size), st.just(size), st.just(size), st.integers(0, 5))
    rows = []
    for _ in range(n):
        if draw(st.integers(0, 3)) == 0:
            rows.append(None)
        elif scalar:
            rows.append(draw(values))
        else:
            k = draw(length)
            rows.append(draw(st.lists(values, min_size=k, max_size=k)))
    typ = arrow if scalar else draw(st.sampled_from([pa.list_, pa.large_list]))(arrow)
    return pa.array(rows, typ), rows


@st.composite
def table_for(draw, features: tuple):
    n = draw(st.integers(1, 16))
    arrays, rows = {}, [dict() for _ in range(n)]
    for key, kind, dtype, shape in features:
        if draw(st.integers(0, 9)) == 0:
            continue  # no column at all: the feature is absent on every row
        arr, values = draw(column(kind, dtype, shape, n))
        arrays[key] = arr
        for r, v in zip(rows, values):
            r[key] = v
    arrays["row_id"] = pa.array(range(n), pa.int64())
    return pa.table(arrays), rows


# ------------------------------------------------------------------ the real scoring path


def batch_scorer(model, schema: pa.Schema, sample: pa.Table, feed: str) -> BatchScorer:
    """A BatchScorer planned as a RunV1Inference worker plans it (dofn): output ranks learnt
    from the batch, the plan on the example input, the feed strategy for columns with `feed`."""
    sig = model.signature("serving_default")
    scoring = ScoringOptions(keep_columns=["row_id"], example_feed=feed)
    unknown = columns.unknown_rank_outputs(sig, None)
    shapes = {}
    if unknown:
        found, _ = preflight.learn_output_shapes(model, sig, schema, sample, scoring, unknown)
        shapes = found or {k: (-1,) for k in unknown}
    plan = build_plan(model.prepared, sig, schema, scoring, shapes,
                      required_inputs=model.required_inputs(sig.key))
    feed_strategy = choose_feed(model, plan, schema, scoring)
    assert isinstance(feed_strategy, example_feeds.ExampleScorer)
    scorer = BatchScorer(model, plan, schema, feed_strategy)
    return scorer


def assert_agrees_with_tensorflow(b: Built, table: pa.Table, rows: list[dict]) -> dict:
    """Score `table` on both feed paths and hold each to TensorFlow's row-alone truth."""
    truth = b.truth.rows(rows, b.dtypes)
    tf_failed = {r for r, (_, error) in enumerate(truth) if error is not None}
    paths = {}
    absent = [k for k, kind, _, _ in b.features
              if kind == "required" and k not in table.schema.names]
    if absent:  # every row would fail: refused before the run, naming the feature
        assert tf_failed == set(range(table.num_rows))
        with pytest.raises(SchemaError, match=absent[0]):
            batch_scorer(b.model, table.schema, table, "auto")
        return {}
    for feed in ("auto", "serialize"):
        scorer = batch_scorer(b.model, table.schema, table, feed)
        result = scorer.score(table)
        scored_ids = result.scored.column("row_id").to_pylist()
        failed_ids = result.failed.column("row_id").to_pylist()
        reasons = dict(zip(failed_ids, result.failed.column("error").to_pylist()))
        assert sorted(scored_ids + failed_ids) == list(range(table.num_rows)), feed
        assert set(failed_ids) == tf_failed, (feed, scorer.feed.path, reasons,
                                              {r: truth[r][1] for r in tf_failed})
        for r in failed_ids:  # the reason names a feature, as TensorFlow's does
            assert any(key in reasons[r] for key in b.dtypes), reasons[r]
        for key in result.scored.column_names:
            if key == "row_id":
                continue
            got = result.scored.column(key).to_pylist()
            want = [np.asarray(truth[r][0][key])[0].tolist() for r in scored_ids]
            assert got == want, (feed, key, scored_ids, got, want)
        paths[feed] = scorer.feed.path
    return paths


@ORACLE
@given(spec=SPECS, data=st.data())
def test_both_feed_paths_score_what_tensorflow_scores(built, spec, data):
    b = built(spec)
    table, rows = data.draw(table_for(b.features))
    paths = assert_agrees_with_tensorflow(b, table, rows)
    if not paths:
        return
    assert paths["serialize"] == "serialize"
    # the direct feed is used wherever no feature needs the parse op's own handling
    sequence = any(kind == "sequence" for _, kind, _, _ in b.features)
    assert paths["auto"] == ("serialize" if sequence else "direct"), paths



# ------------------------------------------------------------------ the Example encoder


ENCODER = settings(max_examples=max(EXAMPLES * 3, 60), deadline=None)


@st.composite
def encoder_case(draw):
    """(ExampleSpec of var-len features, table, rows): keys sorted as deterministic protobuf
    serialization writes map entries."""
    n = draw(st.integers(1, 10))
    keys = sorted(draw(st.sets(st.text(min_size=1, max_size=6), min_size=1, max_size=4)))
    features, arrays, rows = {}, {}, [dict() for _ in range(n)]
    for key in keys:
        dtype = draw(st.sampled_from(DTYPES))
        features[key] = examples.FeatureSpec(key, "sparse", dtype)
        arr, values = draw(column("sparse", dtype, (), n))
        arrays[key] = arr
        for r, v in zip(rows, values):
            r[key] = v
    spec = examples.ExampleSpec("examples", "input:0", ("parse",), features)
    return spec, pa.table(arrays), rows


@ENCODER
@given(case=encoder_case())
def test_encoder_equals_tensorflow_protos(case):
    """The hand-written encoder's bytes parse with TensorFlow's proto to the column values, and
    equal TensorFlow's own deterministic serialization of the same Example."""
    spec, table, rows = case
    dtypes = {k: f.dtype for k, f in spec.features.items()}
    serialized, errors = example_feeds.serialize_columns(table, spec)
    assert errors == [None] * table.num_rows
    for data, row in zip(serialized, rows):
        parsed = tf.train.Example.FromString(data).features.feature
        assert set(parsed) == {k for k, v in row.items() if v is not None}
        for key, value in row.items():
            if value is None:
                continue
            kind = {"string": "bytes_list", "int64": "int64_list",
                    "float32": "float_list"}[dtypes[key]]
            assert parsed[key].WhichOneof("kind") == kind
            got = list(getattr(parsed[key], kind).value)
            value = value if isinstance(value, list) else [value]  # a scalar column's cell
            if dtypes[key] == "string":
                want = [v if isinstance(v, bytes) else v.encode() for v in value]
            elif dtypes[key] == "float32":
                want = np.asarray(value, np.float32).tolist()
            else:
                want = value
            assert got == want, (key, got, want)
        own = tf.train.Example.FromString(example_bytes(row, dtypes))
        assert data == own.SerializeToString(deterministic=True)
