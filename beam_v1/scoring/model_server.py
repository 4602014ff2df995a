"""One model per machine: a session shared by every SDK process through a proxy.

With `model_copies=N` (N >= 1) the worker processes of a machine share N sessions instead of
loading one each, as Beam's RunInference does with `model_copies` / `large_model`: through
`apache_beam.utils.multi_process_shared.MultiProcessShared(..., always_proxy=True)`. The first
process to ask for copy i loads it and serves it from a thread of its own; every process,
that one included, calls it through a `multiprocessing` proxy, so arrays travel pickled over a
local socket (a cost per batch, worth it when the model is big and the batch cheap to copy).

A proxy can only call methods, so the shared object is a `ModelServer` (predict, raw tensor
runs, metadata fetched once) and each process wraps its proxies in a `SharedModelClient`,
which offers what `BatchScorer`, the plan and the tf.Example scorer use of a `V1Model`.
Batches go round-robin over the copies.

Limits (Beam's MultiProcessShared, as for RunInference): the serving process is one of the
SDK workers, so it must live as long as the others use it (it does when workers live for the
whole job: DirectRunner, Dask, portable workers); its `<tag>.address`/`.lock` files stay in
the temp directory. Each transform instance gets its own tag, so runs never share copies.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)


class ModelServer:
    """The shared side: one loaded V1Model, served to every process of the machine."""

    def __init__(self, model, load_ms: int, threads):
        self._model = model
        self._load_ms = load_ms
        self._threads = threads
        self._unreported = True
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """Everything a client needs besides running the model (picklable)."""
        m = self._model
        return {
            "path": m.path,
            "tags": m.tags,
            "signatures": m.signatures,
            "default_signature": m.default_signature,
            "required_inputs": {key: m.required_inputs(key) for key in m.signatures},
            "prepared": m.prepared,
            "threads": self._threads,
            "pid": os.getpid(),
        }

    def predict(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None,
                signature: str | None = None) -> dict[str, np.ndarray]:
        return self._model.predict(feeds, outputs=outputs, signature=signature)

    def run_callable(self, signature: str, feed_names: Sequence[str],
                     output_keys: Sequence[str], values: Sequence[Any]) -> list[np.ndarray]:
        """Run `V1Model.callable` (tensors fed by name: the tf.Example scorer's feeds)."""
        run = self._model.callable(signature, tuple(feed_names), tuple(output_keys))
        return [np.asarray(v) for v in run(*values)]

    def take_load_report(self) -> int | None:
        """The load time, to the first caller on the machine only."""
        with self._lock:
            if self._unreported:
                self._unreported = False
                return self._load_ms
        return None


class SharedModelClient:
    """This process's view of the shared copies: a V1Model for the scorer, run remotely."""

    def __init__(self, proxies: list):
        if not proxies:
            raise ValueError("SharedModelClient needs at least one proxy")
        self._proxies = proxies
        self._next = itertools.cycle(range(len(proxies)))
        self._cycle_lock = threading.Lock()
        info = proxies[0].describe()
        self.path: str = info["path"]
        self.tags: tuple[str, ...] = tuple(info["tags"])
        self.signatures = info["signatures"]
        self.default_signature: str = info["default_signature"]
        self.threads = info["threads"]
        self.server_pid: int = info["pid"]
        self._required = info["required_inputs"]
        self.prepared = info["prepared"]  # what plans and tf.Example feeds read
        self.reported_loads = 0

    def server(self):
        with self._cycle_lock:
            return self._proxies[next(self._next)]

    def signature(self, key: str | None = None):
        """As `V1Model.signature`: read from the served model's PreparedModel."""
        return self.prepared.signature(self.default_signature if key is None else key)

    def required_inputs(self, signature: str | None = None) -> list[str]:
        return list(self._required[self.signature(signature).key])

    def callable(self, signature: str, feed_names: tuple[str, ...],
                 output_keys: tuple[str, ...]):
        """As `V1Model.callable`, run on a shared copy."""
        feeds, keys = list(feed_names), list(output_keys)

        def run(*values):
            return self.server().run_callable(signature, feeds, keys, list(values))

        return run

    def predict(self, feeds: Mapping[str, Any], outputs: Sequence[str] | None = None,
                signature: str | None = None) -> dict[str, np.ndarray]:
        return self.server().predict(dict(feeds), outputs, signature)

    def take_load_report(self) -> int | None:
        """The longest load time of the copies not reported yet on this machine (None: all
        were); `reported_loads` says how many copies that covers."""
        reports = [p.take_load_report() for p in self._proxies]
        loaded = [r for r in reports if r is not None]
        self.reported_loads = len(loaded)
        return max(loaded) if loaded else None


def copy_tags(share_tag: str, copies: int) -> list[str]:
    """The MultiProcessShared tag of each copy (file names under the temp dir)."""
    return [f"beam-v1-{share_tag}-copy{i}" for i in range(copies)]


def _load_and_clean_up_at_exit(load, tag: str):
    """Runs in the serving process: load, and remove the tag's address and lock files (which
    MultiProcessShared leaves in the temp dir) when this process exits."""

    server = load()
    base = os.path.join(tempfile.gettempdir(), tag)

    def remove() -> None:
        for path in (base + ".address", base + ".lock"):
            with contextlib.suppress(OSError):
                os.remove(path)

    atexit.register(remove)
    return server


def acquire(share_tag: str, copies: int, load) -> SharedModelClient:
    """Connect to (or become the server of) each of `copies` shared copies.

    `load()` returns a `ModelServer`; it runs in the first process that asks for a copy."""
    # deferred: only with model_copies
    from apache_beam.utils.multi_process_shared import MultiProcessShared

    started = time.perf_counter()
    proxies = [
        MultiProcessShared(
            functools.partial(_load_and_clean_up_at_exit, load, tag), tag=tag, always_proxy=True
        ).acquire()
        for tag in copy_tags(share_tag, copies)
    ]
    client = SharedModelClient(proxies)
    _log.info(
        "beam-v1 worker %d: using %d shared model copy(ies) of %s (copy 0 served by process %d), "
        "ready in %.2fs", os.getpid(), copies, client.path, client.server_pid,
        time.perf_counter() - started,
    )
    return client
