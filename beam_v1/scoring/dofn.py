"""The Beam DoFn: model loading per worker, re-batching, tagged outputs, metrics, progress."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from beam_v1.io import staging
from beam_v1.model import threads
from beam_v1.model.options import LoadOptions
from beam_v1.scoring import latency
from beam_v1.scoring.options import DEFAULT_MAX_BATCH_BYTES, ScoringOptions

__all__ = ["DEFAULT_MAX_BATCH_BYTES", "RunV1InferenceDoFn", "ScoringConfig"]

NAMESPACE = "beam_v1"
SCORED = "scored"
FAILED = "failed"
# batches scored while the DoFn's thread reads, converts and writes around them: the
# session and pyarrow both release the GIL, so the three overlap
IN_FLIGHT = 1

_log = logging.getLogger(__name__)
_progress_log = logging.getLogger("beam_v1.progress")  # INFO: shown by the CLI unless --quiet


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoringConfig:
    """Everything a worker needs to load the model and plan its batches (picklable).

    `model`, `tags` and `signature` name the model; `load` says how to load it and `scoring`
    how to cut, feed and write back its batches."""

    model: str
    tags: tuple[str, ...] | None = None
    signature: str | None = None
    load: LoadOptions = LoadOptions()
    scoring: ScoringOptions = ScoringOptions()
    # SDK processes on one machine as the pipeline options say (None: found on the worker);
    # sizes the session's thread pools (beam_v1.model.threads)
    processes_per_machine: int | None = None
    share_tag: str = ""  # names the shared copies of one transform (model_server.copy_tags)

    def cache_key(self) -> str:
        return repr((self.model, self.tags, self.signature, self.load))


class _SharedModel:
    """Weak-referenceable holder for the per-process model (`Shared.acquire` needs one)."""

    def __init__(self, model, load_ms: int, threads=None):
        self.model = model
        self.load_ms = load_ms
        self.threads = threads  # beam_v1.model.threads.ThreadBudget the session got
        self._unreported = True
        self._lock = threading.Lock()

    def take_load_report(self) -> int | None:
        """The load time, to the first caller only (metrics need a running bundle)."""
        with self._lock:
            if self._unreported:
                self._unreported = False
                return self.load_ms
        return None


def load_shared_model(config: ScoringConfig):
    from beam_v1.model.session import load  # deferred to the worker: TensorFlow start-up

    started = time.perf_counter()
    local = config.model  # load stages a remote model; setup..teardown holds the machine's copy
    options, budget = budgeted_load_options(config)
    model = load(local, tags=config.tags, signature=config.signature, **options)
    _log.info("beam-v1 worker %d loaded %s", os.getpid(), config.model)
    return _SharedModel(model, int((time.perf_counter() - started) * 1000), budget)


def budgeted_load_options(config: ScoringConfig):
    """The config's load options with the thread budget of this worker applied."""
    options = config.load.as_kwargs()
    budget = threads.budget_for_worker(
        config.processes_per_machine,
        config.load.intra_op_threads,
        config.load.inter_op_threads,
        model_copies=config.scoring.model_copies,
    )
    options.update(intra_op_threads=budget.intra_op_threads,
                   inter_op_threads=budget.inter_op_threads)
    return options, budget


def _serve_model(config: ScoringConfig):
    """The constructor of a shared copy (runs in the process that serves it)."""
    from beam_v1.scoring.model_server import ModelServer  # deferred: only with model_copies

    holder = load_shared_model(config)
    return ModelServer(holder.model, holder.load_ms, holder.threads)


def _acquire_model(config: ScoringConfig, handle: shared.Shared):
    if not config.scoring.model_copies:
        return handle.acquire(lambda: load_shared_model(config), tag=config.cache_key())
    from beam_v1.scoring import model_server  # deferred: only with model_copies

    # one client per process too: its proxies' connections are per thread already
    return handle.acquire(
        lambda: model_server.acquire(
            config.share_tag, config.scoring.model_copies, lambda: _serve_model(config)
        ),
        tag=config.cache_key() + "/shared",
    )


class RunV1InferenceDoFn(beam.DoFn):
    """Scores Arrow tables; main output `scored`, tagged output `failed`.

    Input tables are merged and split into batches of at most `batch_size` rows and
    `max_batch_bytes` Arrow bytes (a single larger row is scored alone), so wide rows never
    pile up into one huge batch. Each batch is scored on a thread of the DoFn's own while the
    bundle goes on (at most `IN_FLIGHT` batches ahead); its outputs are emitted from a later
    `process` call or from `finish_bundle`. Batches merge across elements, so outputs carry
    the global window.
    """

    def __init__(self, config: ScoringConfig, shared_handle: shared.Shared):
        self._config = config
        self._shared = shared_handle
        self._progress_seconds = config.scoring.progress_seconds
        self._rows_in = Metrics.counter(NAMESPACE, "rows_in")
        self._rows_scored = Metrics.counter(NAMESPACE, "rows_scored")
        self._rows_failed = Metrics.counter(NAMESPACE, "rows_failed")
        self._batches = Metrics.counter(NAMESPACE, "batches")
        self._batch_size = Metrics.distribution(NAMESPACE, "batch_size")
        self._batch_bytes = Metrics.distribution(NAMESPACE, "batch_bytes")
        self._batch_latency = Metrics.distribution(NAMESPACE, "batch_latency_ms")

    def setup(self) -> None:
        self._staged = staging.acquire(self._config.model)  # other processes here reuse the copy
        self._holder = _acquire_model(self._config, self._shared)
        self._model = getattr(self._holder, "model", self._holder)
        self._scorers: dict[pa.Schema, Any] = {}
        self._started = time.monotonic()
        self._last_progress = self._started
        self._worker_rows = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="beam-v1-score"
        )

    def teardown(self) -> None:
        if getattr(self, "_staged", None) is not None:
            self._staged = None
            staging.release(self._config.model)
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def start_bundle(self) -> None:
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._pending: collections.deque = collections.deque()
        load_ms = self._holder.take_load_report()
        if load_ms is not None:
            loads = getattr(self._holder, "reported_loads", 1)  # shared copies: maybe several
            Metrics.counter(NAMESPACE, "model_loads").inc(loads)
            Metrics.distribution(NAMESPACE, "model_load_ms").update(load_ms)
            if self._holder.threads is not None:  # what the session got, per load
                budget = self._holder.threads
                Metrics.distribution(NAMESPACE, "session_intra_op_threads").update(
                    budget.intra_op_threads)
                Metrics.distribution(NAMESPACE, "session_inter_op_threads").update(
                    budget.inter_op_threads)

    def process(self, element: pa.Table | pa.RecordBatch):
        table = pa.Table.from_batches([element]) if isinstance(element, pa.RecordBatch) else element
        if table.num_rows == 0:
            return
        if self._buffer and table.schema != self._buffer[0].schema:
            yield from self._flush(self._take_buffer())
        self._buffer.append(table)
        self._buffered += table.num_rows
        size = self._config.scoring.batch_size
        limit = self._config.scoring.max_batch_bytes
        while self._buffered >= size or (
            self._buffered and sum(t.nbytes for t in self._buffer) > limit
        ):
            merged = self._take_buffer()
            take = rows_within_bytes(merged, min(size, merged.num_rows), limit)
            yield from self._flush(merged.slice(0, take))
            if merged.num_rows > take:
                self._buffer = [merged.slice(take)]
                self._buffered = merged.num_rows - take

    def finish_bundle(self):
        outputs = list(self._flush(self._take_buffer())) if self._buffer else []
        while self._pending:
            outputs.extend(self._emit(self._pending.popleft()))
        for output in outputs:
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, _global(output.value))
            else:
                yield _global(output)

    def _take_buffer(self) -> pa.Table:
        merged = self._buffer[0] if len(self._buffer) == 1 else pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        return merged

    def _flush(self, batch: pa.Table):
        """Start scoring `batch`; emit the outputs of the batches now more than IN_FLIGHT old."""
        scorer = self._scorer(batch)  # here: it may run the model to learn output shapes
        future = self._executor.submit(_timed_score, scorer, batch)
        self._pending.append((batch.num_rows, batch.nbytes, future))
        while len(self._pending) > IN_FLIGHT:
            yield from self._emit(self._pending.popleft())

    def _emit(self, pending):
        rows, nbytes, future = pending
        result, latency_ms = future.result()  # metrics are per thread: counted here
        self._rows_in.inc(rows)
        self._rows_scored.inc(result.scored.num_rows)
        self._rows_failed.inc(result.failed.num_rows)
        self._batches.inc()
        self._batch_size.update(rows)
        self._batch_bytes.update(nbytes)
        self._batch_latency.update(int(latency_ms))
        Metrics.counter(NAMESPACE, latency.bucket_name(latency_ms)).inc()
        self._progress(rows)
        if result.scored.num_rows:
            yield result.scored
        if result.failed.num_rows:
            yield beam.pvalue.TaggedOutput(FAILED, result.failed)

    def _scorer(self, batch: pa.Table):
        schema = batch.schema
        scorer = self._scorers.get(schema)
        if scorer is None:
            # deferred to the worker: TensorFlow start-up
            from beam_v1.scoring import columns, preflight
            from beam_v1.scoring.plan import build_plan
            from beam_v1.scoring.scorer import BatchScorer, choose_feed

            c, o = self._config, self._config.scoring
            sig = self._model.signature(c.signature)
            shapes = dict(o.output_shapes)
            unknown = [k for k in columns.unknown_rank_outputs(sig, o.outputs) if k not in shapes]
            learnt = True
            if unknown:  # outputs of unknown rank: learn it from this batch's first rows
                found, _ = preflight.learn_output_shapes(
                    self._model, sig, schema, batch, o, unknown
                )
                learnt = found is not None
                shapes.update(found or {k: (-1,) for k in unknown})
            plan = build_plan(
                self._model.prepared, sig, schema, o, shapes,
                required_inputs=self._model.required_inputs(sig.key),
            )
            feed = choose_feed(self._model, plan, schema, o)  # columns or tf.Example
            scorer = BatchScorer(self._model, plan, schema, feed)
            if learnt:  # else no row could tell the shapes: try again with the next batch
                self._scorers[schema] = scorer
        return scorer

    def _progress(self, rows: int) -> None:
        self._worker_rows += rows
        if not self._progress_seconds:
            return
        now = time.monotonic()
        if now - self._last_progress >= self._progress_seconds:
            self._last_progress = now
            rate = self._worker_rows / max(now - self._started, 1e-9)
            _progress_log.info(
                "beam-v1: worker %d: %s rows, %s rows/s",
                os.getpid(), f"{self._worker_rows:,}", f"{rate:,.0f}",
            )


def _timed_score(scorer, batch: pa.Table):
    started = time.perf_counter()
    result = scorer.score(batch)
    return result, (time.perf_counter() - started) * 1000


def rows_within_bytes(table: pa.Table, rows: int, limit: int) -> int:
    """The most leading rows (<= `rows`, >= 1) of `table` whose Arrow size is <= `limit`."""
    if table.slice(0, rows).nbytes <= limit:
        return rows
    low, high = 1, rows  # low always fits unless it is the single oversized row
    while low < high:
        mid = (low + high + 1) // 2
        if table.slice(0, mid).nbytes <= limit:
            low = mid
        else:
            high = mid - 1
    return low


def _global(value) -> WindowedValue:
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])
