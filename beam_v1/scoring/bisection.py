"""The one bisection: run a batch; when the model fails on it, halve until the rows that fail
alone are found, and score the rest (SPEC §5). No Beam or TensorFlow here."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

import numpy as np

from beam_v1.errors import BeamV1Error

Outputs = dict[str, np.ndarray]


class ModelRunError(BeamV1Error):
    """The session failed on a batch (the message is TensorFlow's first line)."""


def run_or_bisect(
    run: Callable[[int, int], Outputs],
    rows: np.ndarray,
    failures: MutableMapping[int, str],
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[int, int, Outputs]]:
    """Yield (start, stop, outputs) for each part of `rows[start:stop]` that ran.

    `run(start, stop)` runs the model on those positions or raises ModelRunError; a single
    row that fails is recorded in `failures` under its id `rows[position]`.
    """
    stop = len(rows) if stop is None else stop
    try:
        yield start, stop, run(start, stop)
        return
    except ModelRunError as e:
        if stop - start == 1:
            failures[int(rows[start])] = f"the model failed on this row: {e}"
            return
    half = start + (stop - start) // 2
    yield from run_or_bisect(run, rows, failures, start, half)
    yield from run_or_bisect(run, rows, failures, half, stop)
