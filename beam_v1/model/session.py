"""V1Model: one graph, one tf.compat.v1 Session, init ops run, C++ callables per signature."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from beam_v1 import dtypes
from beam_v1.errors import BeamV1Error, FeedError, ModelFileError, SignatureNotFoundError
from beam_v1.model import metadata as savedmodel
from beam_v1.model.metadata import SignatureInfo, TensorSpec
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import PreparedModel, prepare
from beam_v1.text import first_line

_log = logging.getLogger(__name__)

_OPTIONAL_INPUT_OPS = {"PlaceholderWithDefault"}
# Callables must be released while TensorFlow is still importable: at interpreter exit their
# __del__ would otherwise run after TensorFlow's C bindings are gone and print a traceback.
_live_models: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_models() -> None:
    for model in list(_live_models):
        model.close()


def numpy_dtype(spec: TensorSpec) -> np.dtype:
    """The numpy dtype a tensor of `spec` is fed and fetched as (strings as object)."""
    return dtypes.numpy_dtype(spec.base_dtype)


class V1Model:
    """A loaded TF1 SavedModel. Thread-safe; use `beam_v1.load` to make one."""

    def __init__(self, prepared: PreparedModel):
        """Build the session of a model `prepared` with `beam_v1.model.prepared.prepare`."""
        if not prepared.strict:
            raise ValueError(
                "V1Model needs a model prepared with strict=True (its checks refuse, not record)."
            )
        started = time.perf_counter()
        self.prepared = prepared
        self.options = prepared.options
        self.path = prepared.local_dir
        self.tags = prepared.tags
        self.signatures: dict[str, SignatureInfo] = dict(prepared.signatures)
        self.default_signature = prepared.signature(None).key
        self.rewritten: dict[str, list[str]] = dict(prepared.rewritten)
        meta_graph = prepared.meta_graph

        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph, config=self.options.session_config())
        try:
            with self.graph.as_default():
                saver = tf.compat.v1.train.import_meta_graph(meta_graph)
                self._restore(saver)
                self._run_init_ops(meta_graph)
                self._variable_reads = {
                    v.op.name: v.value() for v in tf.compat.v1.global_variables()
                }
            self._check_signature(self.default_signature)
            self.graph.finalize()
        except BaseException:
            self.session.close()
            raise
        self._callables: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        _live_models.add(self)
        self.load_seconds = time.perf_counter() - started
        _log.info("Loaded %s (tags %s) in %.2fs", self.path, ",".join(self.tags), self.load_seconds)

    # ------------------------------------------------------------------ loading

    def _restore(self, saver) -> None:
        prefix = savedmodel.checkpoint_prefix(self.path)
        has_variables = bool(tf.compat.v1.global_variables())
        index = prefix + ".index"
        if not os.path.isfile(index):
            if has_variables:
                raise ModelFileError(
                    f"The graph has variables but their checkpoint {index} is missing."
                )
            return
        if saver is None:
            if not has_variables:
                return
            saver = tf.compat.v1.train.Saver()
        try:
            saver.restore(self.session, prefix)
        except (tf.errors.OpError, ValueError) as e:
            raise ModelFileError(
                f"Restoring variables from {prefix}.index and its data files failed: "
                f"{first_line(e)}"
            ) from e

    def _run_init_ops(self, meta_graph) -> None:
        asset_dir = os.path.join(self.path, "assets")
        feeds = {
            self.graph.get_tensor_by_name(asset.tensor_name): os.path.join(
                asset_dir, asset.filename
            )
            for asset in savedmodel.assets(meta_graph)
        }
        found = savedmodel.init_ops(meta_graph)
        names = (
            found.get(savedmodel.INIT_OP_SIGNATURE_KEY)
            or found.get("saved_model_main_op")
            or found.get("main_op")
            or found.get("legacy_init_op")
            # no init op: TF Transform exports still need their tables filled
            or found.get("table_initializer")
            or []
        )
        if not names:
            return
        targets = [self.graph.as_graph_element(name) for name in names]
        try:
            self.session.run(targets, feed_dict=feeds)
        except tf.errors.OpError as e:
            raise ModelFileError(
                f"The model's init op ({', '.join(names)}) failed: {first_line(e)}"
            ) from e

    def _check_signature(self, key: str) -> SignatureInfo:
        sig = self.signature(key)
        for spec in (*sig.inputs.values(), *sig.outputs.values()):
            for name in spec.components.values() or [spec.tensor_name]:
                try:
                    self.graph.get_tensor_by_name(name)
                except (KeyError, ValueError) as e:
                    raise ModelFileError(
                        f"Signature {key!r} names tensor {name!r} for {spec.key!r}, "
                        f"but the graph has no such tensor."
                    ) from e
        return sig

    # ------------------------------------------------------------------ public

    def signature(self, key: str | None = None) -> SignatureInfo:
        """The signature `key` (default: the model's default signature); raises
        SignatureNotFoundError naming the model's signatures."""
        return self.prepared.signature(self.default_signature if key is None else key)

    def required_inputs(self, signature: str | None = None) -> list[str]:
        """Input keys that must be fed: all but placeholders with a default, one key per tensor."""
        sig = self.signature(signature)
        seen: set[str] = set()
        required = []
        for key, spec in sig.inputs.items():
            if spec.encoding != "dense":
                required.append(key)
                continue
            op = self.graph.get_tensor_by_name(spec.tensor_name).op
            if op.type not in _OPTIONAL_INPUT_OPS and spec.tensor_name not in seen:
                required.append(key)
            seen.add(spec.tensor_name)
        return required

    def predict(
        self,
        feeds: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        signature: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `signature` on `feeds` ({input key: array}) and return {output key: ndarray}."""
        if self._closed:
            raise BeamV1Error(f"{self!r} is closed; load the model again to predict.")
        sig = self.signature(signature)
        output_keys = self.output_keys(sig, outputs)
        tensor_values = self._check_feeds(sig, feeds)
        run = self.callable(sig.key, tuple(tensor_values), output_keys)
        results = run(*tensor_values.values())
        # rank-0 outputs come back as numpy scalars; the contract is ndarray
        return {key: np.asarray(value) for key, value in zip(output_keys, results)}

    def variables(self) -> dict[str, np.ndarray]:
        """Current values of the graph's global variables, by variable name."""
        if not self._variable_reads:
            return {}
        names = list(self._variable_reads)
        values = self.session.run([self._variable_reads[n] for n in names])
        return dict(zip(names, values))

    def close(self) -> None:
        self._closed = True
        self._callables.clear()
        self.session.close()

    def __enter__(self) -> V1Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"V1Model({self.path!r}, tags={','.join(self.tags)!r}, "
            f"signatures={list(self.signatures)})"
        )

    # ------------------------------------------------------------------ feeding

    def output_keys(self, sig: SignatureInfo, outputs: Sequence[str] | None) -> tuple[str, ...]:
        """`outputs` checked against `sig` (default: all its outputs)."""
        if outputs is None:
            return tuple(sig.outputs)
        unknown = [k for k in outputs if k not in sig.outputs]
        if unknown:
            raise SignatureNotFoundError(
                f"Output(s) {unknown} are not in signature {sig.key!r}; its outputs are "
                f"{list(sig.outputs)}."
            )
        return tuple(outputs)

    def _check_feeds(self, sig: SignatureInfo, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate and cast feeds; return {tensor name: array} in a stable order."""
        unknown = [k for k in feeds if k not in sig.inputs]
        if unknown:
            raise FeedError(
                f"Input(s) {unknown} are not in signature {sig.key!r}; its inputs are "
                f"{_describe(sig.inputs)}."
            )
        missing = [
            k
            for k in self.required_inputs(sig.key)
            if k not in feeds and not _fed_by_alias(sig, k, feeds)
        ]
        if missing:
            raise FeedError(
                f"Signature {sig.key!r} needs input(s) {missing} that were not given; "
                f"its inputs are {_describe(sig.inputs)}."
            )
        by_tensor: dict[str, np.ndarray] = {}
        for key in sorted(feeds):
            spec = sig.inputs[key]
            if spec.encoding == "coo_sparse":
                values = _sparse_components(key, spec, feeds[key])
            elif spec.encoding == "dense":
                values = {spec.tensor_name: cast_feed(key, spec, feeds[key])}
            else:
                raise FeedError(
                    f"Input {key!r} of signature {sig.key!r} is a composite tensor, "
                    "which beam-v1 cannot feed yet."
                )
            for name, array in values.items():
                if name in by_tensor and not _same(by_tensor[name], array):
                    raise FeedError(
                        f"Inputs of signature {sig.key!r} that share tensor {name!r} were "
                        "given different values; give only one of them."
                    )
                by_tensor[name] = array
        return by_tensor

    def callable(self, signature: str, feed_names: tuple[str, ...], output_keys: tuple[str, ...]):
        """The session's callable feeding tensors `feed_names` and fetching outputs
        `output_keys` of `signature` (made once per model and kept: the one cache)."""
        cache_key = (signature, feed_names, output_keys)
        run = self._callables.get(cache_key)
        if run is not None:
            return run
        with self._lock:
            run = self._callables.get(cache_key)
            if run is None:
                sig = self.signature(signature)
                options = config_pb2.CallableOptions(
                    feed=list(feed_names),
                    fetch=[sig.outputs[k].tensor_name for k in output_keys],
                )
                run = self.session._make_callable_from_options(options)
                self._callables[cache_key] = run
        return run


# ---------------------------------------------------------------------- helpers


def _describe(specs: Mapping[str, TensorSpec]) -> str:
    return ", ".join(f"{k} ({s.dtype} {s.shape_str()})" for k, s in specs.items()) or "none"


def _fed_by_alias(sig: SignatureInfo, key: str, feeds: Mapping[str, Any]) -> bool:
    tensor = sig.inputs[key].tensor_name
    return any(sig.inputs[k].tensor_name == tensor for k in feeds)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def cast_feed(key: str, spec: TensorSpec, value: Any) -> np.ndarray:
    """`value` as an array of `spec`'s dtype; only casts numpy calls safe ('same_kind')."""
    target = numpy_dtype(spec)
    array = np.asarray(value)
    if target.kind == "O":
        if array.dtype.kind not in "OSU":
            raise FeedError(
                f"Input {key!r} expects strings ({spec.dtype} {spec.shape_str()}) but was "
                f"given {array.dtype} values."
            )
    elif array.dtype != target:
        if array.dtype.kind in "OSU" or not np.can_cast(array.dtype, target, "same_kind"):
            raise FeedError(
                f"Input {key!r} expects {spec.dtype} {spec.shape_str()} but was given "
                f"{array.dtype} values, which do not cast safely ('same_kind') to {target}."
            )
        array = array.astype(target)
    _check_shape(key, spec, array.shape)
    return array


def _check_shape(key: str, spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if spec.shape is None:
        return
    ok = len(shape) == len(spec.shape) and all(
        want < 0 or want == got for want, got in zip(spec.shape, shape)
    )
    if not ok:
        raise FeedError(
            f"Input {key!r} expects shape {spec.shape_str()} ({spec.dtype}) but was given "
            f"shape [{','.join(map(str, shape))}]."
        )


def _sparse_components(key: str, spec: TensorSpec, value: Any) -> dict[str, np.ndarray]:
    if isinstance(value, Mapping):
        indices, values, dense_shape = value["indices"], value["values"], value["dense_shape"]
    elif hasattr(value, "indices") and hasattr(value, "dense_shape"):
        indices, values, dense_shape = value.indices, value.values, value.dense_shape
    else:
        raise FeedError(
            f"Input {key!r} is a sparse tensor: give a tf.compat.v1.SparseTensorValue or a dict "
            "with 'indices', 'values' and 'dense_shape'."
        )
    values_spec = dataclasses.replace(spec, shape=(-1,), encoding="dense")
    return {
        spec.components["indices"]: np.asarray(indices, dtype=np.int64),
        spec.components["values"]: cast_feed(key, values_spec, values),
        spec.components["dense_shape"]: np.asarray(dense_shape, dtype=np.int64),
    }


def load(
    path: str,
    tags: Sequence[str] | str | None = None,
    signature: str | None = None,
    **options: Any,
) -> V1Model:
    """Load a TF1 SavedModel into one session (SPEC §2).

    Options (`LoadOptions`): intra_op_threads, inter_op_threads, op_libraries,
    import_modules, rewrites, allow_unsafe_ops (skip the refusal of the graph-op audit;
    see beam_v1.model.audit).

    Raises:
      TypeError: an unknown option (naming the known ones); ValueError: a bad option value.
      BeamV1Error subclasses: see `beam_v1.model.prepared.prepare`, and a failed restore or
      init op (ModelFileError).
    """
    started = time.perf_counter()
    staged = contextlib.nullcontext(path)
    if "://" in str(path):
        from beam_v1.io import (
            staging,  # deferred: Beam's filesystems, which local models never load
        )

        staged = staging.staged_model(path)
    with staged as local:  # a remote model's copy is removed once the session holds the model
        prepared = prepare(local, tags, signature, LoadOptions.of(**options))
        prepare_seconds = time.perf_counter() - started
        model = V1Model(prepared)
    model.load_seconds += prepare_seconds
    return model
