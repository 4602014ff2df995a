"""Score one Arrow batch with a V1Model and a FeedPlan: nothing lost (SPEC §5). No Beam here.

One `BatchScorer` with feed strategies (`ColumnFeed`; `example_feeds.ExampleScorer` for
tf.Example signatures fed from feature columns, direct or serialized), chosen once per
model, signature and schema by `choose_feed`. Bad values are set aside before the run by
the strategy; when the session fails on a batch, the batch is bisected until the failing
rows are found and the rest scored.
Feeds are sliced by rows (`v[start:stop]`, `v[index_array]`): ndarrays, and
`columns.SparseFeed` for sparse inputs, which re-derives its indices and dense_shape.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pyarrow as pa
import tensorflow as tf

from beam_v1.errors import BeamV1Error
from beam_v1.model.session import V1Model
from beam_v1.scoring import columns
from beam_v1.scoring.bisection import ModelRunError, run_or_bisect
from beam_v1.scoring.columns import ERROR_COLUMN, FeedPlan
from beam_v1.scoring.example_feeds import ExampleScorer
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.plan import example_spec_for_columns
from beam_v1.text import first_line

__all__ = ["BatchResult", "BatchScorer", "ColumnFeed", "ModelRunError", "choose_feed"]


@dataclasses.dataclass
class BatchResult:
    scored: pa.Table
    failed: pa.Table
    session_seconds: float
    session_runs: int


class ColumnFeed:
    """The feed strategy of a signature fed from columns, one column per input
    (`columns.to_feeds`): runs by input key through `V1Model.predict`, row by row for
    non-batched inputs, in chunks padded to a static batch size."""

    path = "columns"

    def __init__(self, model: V1Model, plan: FeedPlan):
        self.model = model
        self.plan = plan
        self._signature = plan.signature.key
        self._outputs = list(plan.output_keys)
        self.session_seconds, self.session_runs = 0.0, 0  # of session calls, until reset

    def groups(self, batch: pa.Table):
        """([(rows, feeds_for(start, stop))] per group of rows fed alike, {bad row: why})."""
        feeds = columns.to_feeds(batch, self.plan)
        failures: dict[int, str] = dict(zip(feeds.bad_rows.tolist(), feeds.bad_reasons))

        def slicer(group, n: int):
            def feeds_for(start: int, stop: int):
                if start == 0 and stop == n:  # the whole group: no copy of sparse feeds
                    return group
                return {k: v[start:stop] for k, v in group.items()}

            return feeds_for

        return [(rows, slicer(group, len(rows))) for rows, group in feeds.groups], failures

    def run(self, feeds: dict[str, columns.Feed], n: int) -> dict[str, np.ndarray]:
        """The outputs for `feeds` ({input key: n rows}); ModelRunError if the session fails."""
        if self.plan.row_by_row:
            per_row = [self._predict({k: v[i] for k, v in feeds.items()}) for i in range(n)]
            return {k: np.stack([r[k] for r in per_row]) for k in self._outputs}
        size = self.plan.fixed_batch
        if size is None or size == n:
            return self._predict(feeds)
        chunks = []
        for start in range(0, n, size):
            chunk = {k: v[start : start + size] for k, v in feeds.items()}
            rows = min(size, n - start)
            if rows < size:  # pad to the fixed batch with copies of the last row
                pad = np.concatenate([np.arange(rows), np.full(size - rows, rows - 1)])
                chunk = {k: v[pad] for k, v in chunk.items()}
            out = self._predict(chunk)
            chunks.append({k: v[:rows] for k, v in out.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in self._outputs}

    def _predict(self, feeds: dict[str, columns.Feed]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self.model.predict(feeds, outputs=self._outputs, signature=self._signature)
        except (tf.errors.OpError, BeamV1Error) as e:
            raise ModelRunError(first_line(e)) from e
        finally:
            self.session_seconds += time.perf_counter() - started
            self.session_runs += 1


Feed = ColumnFeed | ExampleScorer


def choose_feed(model: V1Model, plan: FeedPlan, schema: pa.Schema, scoring: ScoringOptions) -> Feed:
    """The feed strategy for batches of `schema` (chosen once per model, signature, schema):
    an `ExampleScorer` when the signature parses tf.Examples and is fed from feature columns
    (`scoring.example_feed` picks its path), else a `ColumnFeed`."""
    spec = example_spec_for_columns(model.prepared, plan.signature, schema, scoring)
    if spec is None:
        return ColumnFeed(model, plan)
    return ExampleScorer(
        model, plan.signature.key, spec.input_key, mode=scoring.example_feed,
        outputs=plan.output_keys,
    )


class BatchScorer:
    """Scores Arrow batches of one schema with one plan and one feed strategy.

    The template: the strategy (`feed`) sets aside the rows it cannot feed and gives feeds
    for the others; the scorer runs them, bisects a batch the model fails on (one
    `bisection.run_or_bisect`), and builds the scored and dead-letter tables. `feed`
    defaults to a ColumnFeed.
    """

    def __init__(
        self, model: V1Model, plan: FeedPlan, input_schema: pa.Schema, feed: Feed | None = None
    ):
        self.model = model
        self.plan = plan
        self.feed = feed if feed is not None else ColumnFeed(model, plan)
        self.input_schema = input_schema
        self.output_schema = plan.output_schema(input_schema)
        self.failed_schema = columns.failed_schema(input_schema)

    def score(self, batch: pa.Table | pa.RecordBatch) -> BatchResult:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        groups, failures = self.feed.groups(batch)
        parts: list[tuple[np.ndarray, list[pa.Array]]] = []
        self.feed.session_seconds, self.feed.session_runs = 0.0, 0
        for rows, feeds_for in groups:

            def run(start: int, stop: int, feeds_for=feeds_for) -> dict[str, np.ndarray]:
                return self.run(feeds_for(start, stop), stop - start)

            for start, stop, fetched in run_or_bisect(run, rows, failures):
                try:
                    arrays = columns.from_fetches(fetched, self.plan, stop - start)
                except ValueError as e:
                    for r in rows[start:stop]:
                        failures[int(r)] = f"model output does not fit its column: {e}"
                    continue
                parts.append((rows[start:stop], arrays))
        scored = self._scored_table(batch, parts, batch.num_rows)
        failed = self._failed_table(batch, failures)
        return BatchResult(scored, failed, self.feed.session_seconds, self.feed.session_runs)

    def run(self, feeds: dict, n: int) -> dict[str, np.ndarray]:
        """One run of the feed strategy on `feeds` (`n` rows), no bisection.

        Raises:
          ModelRunError: the session failed on these rows.
        """
        return self.feed.run(feeds, n)

    # -------------------------------------------------------------- tables

    def _scored_table(self, batch: pa.Table, parts, n: int) -> pa.Table:
        if not parts:
            return self.output_schema.empty_table()
        if len(parts) == 1:
            rows, outputs = parts[0]
        else:
            rows = np.concatenate([p[0] for p in parts])
            order = np.argsort(rows, kind="stable")
            rows = rows[order]
            outputs = [
                pa.concat_arrays([p[1][i] for p in parts]).take(pa.array(order))
                for i in range(len(parts[0][1]))
            ]
        kept = batch.select(list(self.plan.keep_columns))
        if len(rows) != n:
            kept = kept.take(pa.array(rows))
        arrays = [kept.column(name) for name in self.plan.keep_columns] + list(outputs)
        table = pa.Table.from_arrays(arrays, names=self.output_schema.names)
        return table if table.schema == self.output_schema else table.cast(self.output_schema)

    def _failed_table(self, batch: pa.Table, failures: dict[int, str]) -> pa.Table:
        if not failures:
            return self.failed_schema.empty_table()
        rows = sorted(failures)
        taken = batch.take(pa.array(rows, type=pa.int64()))
        taken = taken.append_column(
            ERROR_COLUMN, pa.array([failures[r] for r in rows], type=pa.string())
        )
        return taken.cast(self.failed_schema) if taken.schema != self.failed_schema else taken
