"""Batch-latency histogram as fixed log-scale buckets, kept in plain counters. No Beam here.

Beam counters are the one metric every runner aggregates and reports, so a histogram
of batch latencies is a counter per bucket (`batch_latency_ms_le_<bound>`). Quantiles
read from it are estimates: linear within the bucket, clamped to the observed min/max.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping

PREFIX = "batch_latency_ms_le_"
# upper bounds in ms, about 1.5x apart, up to ~12 minutes; one more bucket holds the rest
BOUNDS: tuple[int, ...] = (1, 2, 3, 5, 7) + tuple(
    m * 10**e for e in range(5) for m in (10, 15, 20, 30, 50, 70)
)
OVERFLOW = "inf"


def bucket_name(latency_ms: float) -> str:
    """The counter name of the bucket that holds `latency_ms` (bound is inclusive)."""
    i = bisect.bisect_left(BOUNDS, math.ceil(latency_ms))
    return PREFIX + (str(BOUNDS[i]) if i < len(BOUNDS) else OVERFLOW)


def quantile(
    counts: Mapping[str, int], q: float, low: float | None = None, high: float | None = None
) -> float | None:
    """Estimate the `q` quantile from bucket counters named as `bucket_name` names them.

    `low`/`high` (the observed min and max, from a distribution) clamp the estimate.
    Names that are not buckets are ignored; returns None when no batch was counted.
    """
    buckets = []
    for name, count in counts.items():
        if not name.startswith(PREFIX) or not count:
            continue
        bound = name[len(PREFIX):]
        buckets.append((math.inf if bound == OVERFLOW else float(bound), count))
    total = sum(c for _, c in buckets)
    if not total:
        return None
    buckets.sort()
    rank = q * total
    seen = 0
    for bound, count in buckets:
        if seen + count >= rank:
            lower = _lower_bound(bound)
            upper = bound if math.isfinite(bound) else (high if high is not None else lower)
            estimate = lower + (upper - lower) * ((rank - seen) / count)
            break
        seen += count
    if low is not None:
        estimate = max(estimate, low)
    if high is not None:
        estimate = min(estimate, high)
    return estimate


def _lower_bound(bound: float) -> float:
    if not math.isfinite(bound):
        return float(BOUNDS[-1])
    i = BOUNDS.index(int(bound))
    return float(BOUNDS[i - 1]) if i else 0.0
