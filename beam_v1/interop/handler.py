"""`V1ModelHandler`: a TF1 SavedModel behind Apache Beam's `RunInference` (SPEC §2).

    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from beam_v1 import V1ModelHandler

    handler = V1ModelHandler("/models/mlp", signature="serving_default", max_batch_size=256)
    preds = examples | RunInference(handler)                       # PredictionResult per element
    keyed = keyed_examples | RunInference(KeyedModelHandler(handler))

An element is a dict `{input_key: value}` (one row: the value has the input's shape without its
batch dimension), or, for a signature with one required input, that input's value on its own
(a numpy array or a scalar). `run_inference` stacks a batch with numpy, runs
`V1Model.predict` once, and yields `PredictionResult(example, {output_key: row_value},
model_id)`. Outputs whose first dimension is not the batch size are given whole to every row.

Beam does the rest: `load_model` runs once per worker process (or once per machine with
`large_model=True` / `model_copies=N`, which turn on `share_model_across_processes`),
`RunInference(..., model_metadata_pcoll=...)` swaps to a new model path mid-pipeline
(`update_model_path`), `.with_exception_handling()` sends a batch whose inference raised to
the failed output (Beam fails whole batches: use `max_batch_size=1` to isolate rows), and the
standard RunInference metrics (`num_inferences`, `inference_batch_latency_micro_secs`,
`load_model_latency_milli_secs`, ...) are reported under `get_metrics_namespace()`.

Signatures with a fixed batch dimension (`[4,3]`) run in chunks of that size (the last one
padded with copies of its final row, the padding dropped); signatures with a non-batched
(rank-0) input run element by element.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from beam_v1.errors import FeedError
from beam_v1.io import staging
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import prepare
from beam_v1.model.session import V1Model

_BATCHING_KEYS = (
    "min_batch_size",
    "max_batch_size",
    "max_batch_duration_secs",
    "max_batch_weight",
    "element_size_fn",
    "large_model",
    "model_copies",
    "env_vars",
)


class V1ModelHandler(ModelHandler[Any, PredictionResult, V1Model]):
    """Runs a TF1 SavedModel signature for Beam's `RunInference`.

    Args:
      model: SavedModel directory, local or on any filesystem Beam knows (staged to local disk
        once per worker process); a TF Serving base folder resolves to its highest version.
      signature: signature key (default: `serving_default`, else the only one).
      tags: MetaGraph tag set (default: the model's only tag set, else `serve`).
      outputs: output keys to fetch (default: all outputs of the signature).
      min_batch_size, max_batch_size, max_batch_duration_secs, max_batch_weight,
      element_size_fn, large_model, model_copies, env_vars: Beam's ModelHandler arguments.
      **load_options: `beam_v1.load` options (intra_op_threads, inter_op_threads,
        op_libraries, import_modules).
    """

    def __init__(
        self,
        model: str,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        outputs: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        beam_kwargs = {k: kwargs.pop(k) for k in _BATCHING_KEYS if k in kwargs}
        options = LoadOptions.of(**kwargs)  # unknown options fail here, not on a worker
        super().__init__(**beam_kwargs)
        self._model_path = model
        self._signature = signature
        self._tags = tags
        self._outputs = tuple(outputs) if outputs is not None else None
        self._load_options = options

    # ------------------------------------------------------------ ModelHandler API

    def load_model(self) -> V1Model:
        with staging.staged_model(self._model_path) as local:  # the session needs no files after
            model = V1Model(prepare(local, self._tags, self._signature, self._load_options))
        model.signature(self._signature)  # an unknown signature fails at load time
        if self._outputs is not None:
            model.output_keys(model.signature(self._signature), self._outputs)
        return model

    def run_inference(
        self,
        batch: Sequence[Any],
        model: V1Model,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        if not batch:
            return []
        sig = model.signature(self._signature)
        feeds = [self._as_feed(model, element) for element in batch]
        keys = list(feeds[0])
        for i, feed in enumerate(feeds):
            if list(feed) != keys:
                raise FeedError(
                    f"Element {i} of the batch has inputs {sorted(feed)} but element 0 has "
                    f"{sorted(keys)}; every element of a batch must give the same inputs."
                )
        specs = {k: sig.inputs[k] for k in keys}
        if any(s.shape is not None and len(s.shape) == 0 for s in specs.values()):
            # a non-batched input: one run per element
            rows = [model.predict(f, outputs=self._outputs, signature=sig.key) for f in feeds]
            return [
                PredictionResult(element, row, self._model_path)
                for element, row in zip(batch, rows)
            ]
        stacked = {k: _stack(k, specs[k], [f[k] for f in feeds]) for k in keys}
        fixed = _fixed_batch(specs)
        if fixed is None:
            out = model.predict(stacked, outputs=self._outputs, signature=sig.key)
        else:
            out = _predict_fixed(model, stacked, fixed, len(batch), self._outputs, sig.key)
        return [
            PredictionResult(element, _row(out, i, len(batch)), self._model_path)
            for i, element in enumerate(batch)
        ]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        total = 0
        for element in batch:
            values = element.values() if isinstance(element, Mapping) else [element]
            total += sum(np.asarray(v).nbytes for v in values)
        return total

    def get_metrics_namespace(self) -> str:
        return "BeamML_V1"

    def update_model_path(self, model_path: str | None = None) -> None:
        if model_path:
            self._model_path = model_path

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(
                f"V1ModelHandler takes no inference_args (got {sorted(inference_args)}); "
                "choose the signature and outputs when building the handler."
            )

    # ------------------------------------------------------------ helpers

    def _as_feed(self, model: V1Model, element: Any) -> dict[str, Any]:
        if isinstance(element, Mapping):
            return dict(element)
        required = model.required_inputs(self._signature)
        if len(required) != 1:
            raise FeedError(
                f"Signature {model.signature(self._signature).key!r} needs inputs {required}; "
                f"give each element as a dict {{input_key: value}}, not a bare "
                f"{type(element).__name__}."
            )
        return {required[0]: element}

    def __repr__(self) -> str:
        return (
            f"V1ModelHandler({self._model_path!r}, signature={self._signature!r}, "
            f"tags={self._tags!r}, outputs={self._outputs!r})"
        )


def _stack(key: str, spec, values: list[Any]) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    first = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != first:
            raise FeedError(
                f"Input {key!r}: element {i} has shape {list(a.shape)} but element 0 has "
                f"{list(first)}; the rows of a batch must have the same shape."
            )
    stacked = np.stack(arrays)
    if spec.shape is not None and len(spec.shape) == stacked.ndim + 1 and spec.shape[-1] == 1:
        stacked = stacked[..., None]  # scalars feeding a [-1,1] input
    return stacked


def _fixed_batch(specs) -> int | None:
    sizes = {s.shape[0] for s in specs.values() if s.shape and s.shape[0] > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _predict_fixed(model, stacked, size, n, outputs, signature):
    """Run in chunks of the signature's fixed batch `size`; pad the last, drop the padding."""
    parts: dict[str, list[np.ndarray]] = {}
    whole: dict[str, np.ndarray] = {}
    for start in range(0, n, size):
        chunk = {}
        for k, v in stacked.items():
            piece = v[start : start + size]
            if len(piece) < size:
                pad = np.repeat(piece[-1:], size - len(piece), axis=0)
                piece = np.concatenate([piece, pad])
            chunk[k] = piece
        got = model.predict(chunk, outputs=outputs, signature=signature)
        keep = min(size, n - start)
        for k, v in got.items():
            if v.ndim and v.shape[0] == size:
                parts.setdefault(k, []).append(v[:keep])
            else:  # not batch-aligned: every row gets the first chunk's value
                whole.setdefault(k, v)
    return {**whole, **{k: np.concatenate(v) for k, v in parts.items()}}


def _row(out: Mapping[str, np.ndarray], i: int, n: int) -> dict[str, Any]:
    return {k: (v[i] if v.ndim and v.shape[0] == n else v) for k, v in out.items()}
