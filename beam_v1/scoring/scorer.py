"""Score one Arrow batch with a V1Model and a FeedPlan: nothing lost (SPEC §5). No Beam here.

Bad values are set aside before the run by `columns.to_feeds`; when the session fails
on a batch, the batch is bisected until the failing rows are found and the rest scored.
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
from beam_v1.scoring.columns import ERROR_COLUMN, FeedPlan
from beam_v1.text import first_line


@dataclasses.dataclass
class BatchResult:
    scored: pa.Table
    failed: pa.Table
    session_seconds: float
    session_runs: int


class _RunFailed(Exception):
    pass


class BatchScorer:
    """Scores Arrow batches of one schema with one plan."""

    def __init__(self, model: V1Model, plan: FeedPlan, input_schema: pa.Schema):
        self.model = model
        self.plan = plan
        self.input_schema = input_schema
        self.output_schema = plan.output_schema(input_schema)
        self.failed_schema = columns.failed_schema(input_schema)
        self._signature = plan.signature.key
        self._outputs = list(plan.output_keys)
        self._seconds = 0.0  # `_run` may be called before any `score` (output shape probes)
        self._runs = 0
        self.examples = None  # examples.ExampleScorer: tf.Example signature fed from columns

    def score(self, batch: pa.Table | pa.RecordBatch) -> BatchResult:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        n = batch.num_rows
        if self.examples is not None:
            return self._score_examples(batch, n)
        feeds = columns.to_feeds(batch, self.plan)
        failures: dict[int, str] = dict(zip(feeds.bad_rows.tolist(), feeds.bad_reasons))
        parts: list[tuple[np.ndarray, list[pa.Array]]] = []
        self._seconds = 0.0
        self._runs = 0
        for rows, group_feeds in feeds.groups:
            for positions, fetched in self._run_or_bisect(group_feeds, len(rows), failures, rows):
                try:
                    arrays = columns.from_fetches(fetched, self.plan, len(positions))
                except ValueError as e:
                    for r in rows[positions]:
                        failures[int(r)] = f"model output does not fit its column: {e}"
                    continue
                parts.append((rows[positions], arrays))
        scored = self._scored_table(batch, parts, n)
        failed = self._failed_table(batch, failures)
        return BatchResult(scored, failed, self._seconds, self._runs)

    def _score_examples(self, batch: pa.Table, n: int) -> BatchResult:
        rows, outputs, failures = self.examples.score(batch)
        parts = []
        if len(rows):
            try:
                parts.append((rows, columns.from_fetches(outputs, self.plan, len(rows))))
            except ValueError as e:
                failures.update({int(r): f"model output does not fit its column: {e}"
                                 for r in rows})
        return BatchResult(self._scored_table(batch, parts, n),
                           self._failed_table(batch, failures),
                           self.examples.session_seconds, self.examples.session_runs)

    # -------------------------------------------------------------- running

    def _run_or_bisect(self, feeds, n, failures, rows, offset=0):
        """Yield (positions, outputs) for the parts that ran; record rows that fail alone."""
        try:
            yield np.arange(offset, offset + n), self._run(feeds, n)
            return
        except _RunFailed as e:
            if n == 1:
                failures[int(rows[offset])] = f"the model failed on this row: {e}"
                return
        half = n // 2
        for start, stop in ((0, half), (half, n)):
            part = {k: v[start:stop] for k, v in feeds.items()}
            yield from self._run_or_bisect(part, stop - start, failures, rows, offset + start)

    def _run(self, feeds: dict[str, columns.Feed], n: int) -> dict[str, np.ndarray]:
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
            raise _RunFailed(first_line(e)) from e
        finally:
            self._seconds += time.perf_counter() - started
            self._runs += 1

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
