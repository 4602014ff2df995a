"""Batch-latency buckets: bucket names and quantile estimates against numpy's quantiles."""

import collections

import numpy as np
import pytest

from beam_v1.scoring import latency


def test_bucket_bounds_are_inclusive_and_increasing():
    assert list(latency.BOUNDS) == sorted(set(latency.BOUNDS))
    assert latency.bucket_name(0.0) == "batch_latency_ms_le_1"
    assert latency.bucket_name(1.0) == "batch_latency_ms_le_1"
    assert latency.bucket_name(1.001) == "batch_latency_ms_le_2"
    assert latency.bucket_name(150) == "batch_latency_ms_le_150"
    assert latency.bucket_name(151) == "batch_latency_ms_le_200"
    assert latency.bucket_name(10**9) == "batch_latency_ms_le_inf"


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("q", [0.5, 0.95])
def test_quantile_lies_in_the_bucket_of_the_true_quantile(seed, q):
    values = np.random.default_rng(seed).lognormal(mean=4, sigma=1, size=500)
    counts = collections.Counter(latency.bucket_name(v) for v in values)
    counts["rows_in"] = 12345  # other counters are ignored
    estimate = latency.quantile(counts, q, low=values.min(), high=values.max())
    true = float(np.quantile(values, q))
    bounds = (0,) + latency.BOUNDS
    i = np.searchsorted(latency.BOUNDS, np.ceil(true))
    assert bounds[i] <= estimate <= latency.BOUNDS[i]


def test_quantile_is_clamped_and_none_without_batches():
    assert latency.quantile({}, 0.5) is None
    assert latency.quantile({"batch_latency_ms_le_150": 0}, 0.5) is None
    counts = {"batch_latency_ms_le_150": 4}
    assert latency.quantile(counts, 0.5, low=120, high=130) == 125
    assert latency.quantile(counts, 1.0, low=120, high=130) == 130
    assert latency.quantile({"batch_latency_ms_le_inf": 2}, 0.5, high=900_000) > 700_000
