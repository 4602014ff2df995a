"""`V1Layer`: a TF1 SavedModel signature as a Keras 3 layer (SPEC §2).

    import keras
    from beam_v1.keras import V1Layer

    layer = V1Layer("/models/multi_input", signature="serving_default")
    out = layer({"a": a, "b": b, "c": c})              # eager: {"total": ..., "a_scaled": ...}

    a = keras.Input((3,))
    b = keras.Input((), dtype="int64")
    c = keras.Input((1,), dtype="float64")
    outs = layer({"a": a, "b": b, "c": c})   # or layer([a, b, c]), in `layer.input_keys` order
    model = keras.Model([a, b, c], outs)
    model.predict([...])

How it runs (the choice, measured in benchmarks/RESULTS.md, Interop section): the MetaGraph is
imported once into a `tf.compat.v1.wrap_function` graph (TensorFlow's own v1-in-v2 loader
machinery, `load_v1_in_v2._EagerSavedModelLoader`, with its signature step skipped), the
variables are restored from the checkpoint and lifted into eager resource variables, the init
op (`main_op`/`legacy_init_op`, else the local/table initialisers) runs with the asset paths
of the model's own `assets/` folder, and the signature becomes one pruned ConcreteFunction
(`wrapped.prune(feeds, fetches)`) with one feed per distinct input tensor. That function is a
graph function: it runs inside `tf.function`, `keras.Model` functional graphs and
`model.predict` with no Python in the loop and no Session, unlike a `tf.py_function` bridge
around `V1Model.predict` (which we measured as the alternative: same results, more per-call
overhead, and not serialisable into a graph). Skipping `tf.saved_model.load`'s signature step
is what lets models it rejects load here: several signature keys aliasing one tensor
(`mlnet__model_types_test`), `float_ref` outputs (`serving__saved_model_counter`, fetched
through an identity), malformed old signatures (`serving__saved_model_half_plus_three`).

What is supported:
- inputs: a dict `{input_key: tensor}`, a list/tuple in `layer.input_keys` order, or one tensor
  when the signature has one input; keys that alias one tensor may be given once. Inputs are
  cast to the signature's dtype (as Keras casts layer inputs). Dense inputs only (no
  `coo_sparse`/composite signature inputs).
- outputs: a dict `{output_key: tensor}`, or the tensor itself when one output is fetched
  (`outputs=` picks). Shapes and dtypes in a functional model come from the signature.
- fixed batch size 1 (e.g. `[1,10]`): larger batches are run row by row with `tf.map_fn`.
  Other fixed batch sizes must be fed at exactly that size.
- ops TensorFlow 2 lost are replaced as `beam_v1.load` does (`beam_v1.model.rewrites`; e.g. the TFX
  Chicago-taxi Estimator exports); `rewrites=False` turns that off. Custom-op libraries must be
  loaded before building the layer (`tf.load_op_library`), there is no `op_libraries=` here.
- string inputs (e.g. serialized tf.Example): Keras' `model.predict` refuses numpy object
  arrays, so give strings to it as a `tf.constant`.
- not trainable: the imported variables are not Keras weights and receive no gradients
  (`trainable=True` is refused). To fine-tune, rebuild the model natively and copy the weights
  in with `beam_v1.assign_variables`.
- save/load: `get_config()` holds `path`, `signature`, `tags` and `outputs`; a model saved
  with `model.save("m.keras")` stores only that config (no weights of the v1 model), and
  `keras.saving.load_model("m.keras")` re-imports the SavedModel from `path`, which must still
  be readable there. The class is registered as `beam_v1>V1Layer`.
- prepared like `beam_v1.load` (`beam_v1.model.prepared`): the same op check, rewrites, audit
  (SPEC §7: a graph whose run would touch files, processes or Python is refused before
  anything is imported or run, unless `allow_unsafe_ops=True`) and file checks (a missing
  checkpoint index or data shard is refused with ModelFileError).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from tensorflow.python.saved_model import load_v1_in_v2, path_helpers

from beam_v1.errors import FeedError, SignatureNotFoundError
from beam_v1.model import metadata as savedmodel
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import PreparedModel, prepare

_log = logging.getLogger(__name__)


class _Imported:
    """Holds the imported graph; not tracked by Keras (its variables are not layer weights)."""

    def __init__(self, root, fn, feed_keys, output_keys):
        self.root = root
        self.fn = fn
        self.feed_keys = feed_keys
        self.output_keys = output_keys
        self.eager = None  # a tf.function around the pruned call, made on first eager use


class _Loader(load_v1_in_v2._EagerSavedModelLoader):
    """TensorFlow's v1-in-v2 loader on a PreparedModel's MetaGraph, signatures skipped."""

    def __init__(self, prepared: PreparedModel):
        # SavedModelLoader.__init__ would parse saved_model.pb again: `prepared` holds it
        self._export_dir = prepared.local_dir
        self._variables_path = path_helpers.get_variables_path(prepared.local_dir)
        self._saved_model = None
        self.chosen = prepared.meta_graph

    def get_meta_graph_def_from_tags(self, tags):
        copy = type(self.chosen)()
        copy.CopyFrom(self.chosen)  # load() edits it in place
        return copy

    def _extract_signatures(self, wrapped, meta_graph_def):
        return {}  # we prune only the signature asked for, our way


def _import(prepared: PreparedModel, outputs: Sequence[str] | None):
    """Import `prepared`'s (rewritten, audited) MetaGraph and prune its chosen signature."""
    sig = prepared.signature()
    key = sig.key
    chosen_tags = list(prepared.tags)
    for spec in sig.inputs.values():
        if spec.encoding != "dense":
            raise FeedError(
                f"Input {spec.key!r} of signature {key!r} is {spec.encoding}; V1Layer feeds "
                "dense inputs only (use beam_v1.load(...).predict for sparse inputs)."
            )
    if outputs is None:
        output_keys = tuple(sig.outputs)
    else:
        output_keys = tuple(outputs)
        unknown = [k for k in output_keys if k not in sig.outputs]
        if unknown:
            raise SignatureNotFoundError(
                f"Output(s) {unknown} are not in signature {key!r}; its outputs are "
                f"{list(sig.outputs)}."
            )
    root = _Loader(prepared).load(tags=chosen_tags)
    graph = root.graph
    feed_keys: list[str] = []
    feed_tensors = []
    seen: dict[str, str] = {}
    for k, spec in sig.inputs.items():
        if spec.tensor_name in seen:
            continue
        seen[spec.tensor_name] = k
        feed_keys.append(k)
        feed_tensors.append(graph.as_graph_element(spec.tensor_name))
    fetches = {}
    with graph.as_default():
        for k in output_keys:
            t = graph.as_graph_element(sig.outputs[k].tensor_name)
            if t.dtype._is_ref_dtype:
                t = tf.identity(t, name=f"beam_v1_read_{len(fetches)}")
            fetches[k] = t
    fn = root.prune(feeds=feed_tensors, fetches=fetches)
    return sig, chosen_tags, _Imported(root, fn, tuple(feed_keys), output_keys)


@keras.saving.register_keras_serializable(package="beam_v1")
class V1Layer(keras.layers.Layer):
    """A TF1 SavedModel signature as a (non-trainable) Keras 3 layer. See the module docstring.

    Args:
      path: SavedModel directory (local, or any filesystem Beam knows: staged locally once).
      signature: signature key (default: `serving_default`, else the only one).
      tags: MetaGraph tag set (default: the model's only tag set, else `serve`).
      outputs: output keys to return (default: all); one key returns a bare tensor.
      allow_unsafe_ops: skip the graph-op audit of SPEC §7 (`beam_v1.model.audit`) for a
        trusted model.
      rewrites: replace ops TensorFlow 2 lost (`beam_v1.model.rewrites`), as `beam_v1.load` does.
    """

    def __init__(
        self,
        path: str,
        signature: str | None = None,
        tags: Sequence[str] | str | None = None,
        outputs: Sequence[str] | str | None = None,
        trainable: bool = False,
        allow_unsafe_ops: bool = False,
        rewrites: bool = True,
        **kwargs: Any,
    ):
        if trainable:
            raise ValueError(
                "V1Layer is not trainable: the v1 graph's variables are not Keras weights. "
                "Rebuild the model natively and use beam_v1.assign_variables to fine-tune."
            )
        super().__init__(trainable=False, **kwargs)
        if isinstance(outputs, str):
            outputs = [outputs]
        if isinstance(tags, str):
            tags = savedmodel.parse_tags(tags)
        self.model_path = path
        self.signature_key_arg = signature
        self.tags_arg = list(tags) if tags is not None else None
        self.outputs_arg = list(outputs) if outputs is not None else None
        self.allow_unsafe_ops = bool(allow_unsafe_ops)
        self.rewrites = bool(rewrites)
        options = LoadOptions(allow_unsafe_ops=self.allow_unsafe_ops, rewrites=self.rewrites)
        sig, chosen_tags, imported = _import(prepare(path, tags, signature, options), outputs)
        self.signature_info = sig
        self.signature_key = sig.key
        self.model_tags = tuple(chosen_tags)
        # a list keeps Keras' tracker away from the TF objects inside
        self._v1 = [imported]
        self.input_keys: tuple[str, ...] = imported.feed_keys
        self.output_keys: tuple[str, ...] = imported.output_keys
        self._fixed_batch = self._fixed_batch_size()

    # ------------------------------------------------------------------ Keras API

    def build(self, input_shape=None):
        self.built = True

    def call(self, inputs):
        feeds = self._feeds(inputs)
        imported = self._v1[0]
        if tf.executing_eagerly():
            # a pruned function called eagerly pays its argument handling every call; one
            # tf.function around it costs about half (see benchmarks/RESULTS.md)
            if imported.eager is None:
                imported.eager = tf.function(self._run, reduce_retracing=True)
            out = imported.eager(*feeds)
        else:
            out = self._run(*feeds)
        return self._result(out)

    def _run(self, *feeds):
        fn = self._v1[0].fn
        if self._fixed_batch == 1:
            return self._map_rows(fn, list(feeds))
        return fn(*feeds)

    def compute_output_spec(self, inputs):
        feeds = self._named_inputs(inputs)
        batch = None
        for t in feeds.values():
            shape = getattr(t, "shape", None)
            if shape is not None and len(shape):
                batch = shape[0]
                break
        specs = {}
        for k in self.output_keys:
            spec = self.signature_info.outputs[k]
            shape = spec.shape
            if shape is None:
                shape = (batch,)
                _log.warning(
                    "Output %r of signature %r has unknown rank; V1Layer declares it as a "
                    "batch of scalars in functional models.",
                    k,
                    self.signature_key,
                )
            shape = tuple(None if d < 0 else d for d in shape)
            if shape and self._fixed_batch == 1 and shape[0] == 1:
                shape = (batch, *shape[1:])
            dtype = tf.dtypes.as_dtype(spec.base_dtype).name
            specs[k] = keras.KerasTensor(shape, dtype=dtype)
        return self._result(specs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            path=self.model_path,
            signature=self.signature_key_arg or self.signature_key,
            tags=self.tags_arg or list(self.model_tags),
            outputs=self.outputs_arg,
            allow_unsafe_ops=self.allow_unsafe_ops,
            rewrites=self.rewrites,
        )
        return config

    # ------------------------------------------------------------------ helpers

    def _fixed_batch_size(self) -> int | None:
        dims = {
            self.signature_info.inputs[k].shape[0]
            for k in self.input_keys
            if self.signature_info.inputs[k].shape
        }
        return dims.pop() if len(dims) == 1 and next(iter(dims)) > 0 else None

    def _named_inputs(self, inputs) -> dict[str, Any]:
        keys = self.input_keys
        if isinstance(inputs, Mapping):
            named = {}
            for k, v in inputs.items():
                spec = self.signature_info.inputs.get(k)
                if spec is None:
                    raise FeedError(
                        f"Input {k!r} is not in signature {self.signature_key!r}; its inputs "
                        f"are {list(self.signature_info.inputs)}."
                    )
                # an alias of a fed tensor maps back to the key we feed
                canonical = next(
                    c for c in keys if self.signature_info.inputs[c].tensor_name == spec.tensor_name
                )
                named[canonical] = v
            missing = [k for k in keys if k not in named]
            if missing:
                raise FeedError(
                    f"Signature {self.signature_key!r} needs input(s) {missing}; got "
                    f"{sorted(inputs)}."
                )
            return named
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(keys):
                raise FeedError(
                    f"Signature {self.signature_key!r} takes {len(keys)} input(s) {list(keys)} "
                    f"(in that order); got {len(inputs)}."
                )
            return dict(zip(keys, inputs))
        if len(keys) != 1:
            raise FeedError(
                f"Signature {self.signature_key!r} takes inputs {list(keys)}; pass a dict or a "
                "list in that order."
            )
        return {keys[0]: inputs}

    def _feeds(self, inputs) -> list[tf.Tensor]:
        named = self._named_inputs(inputs)
        feeds = []
        for k in self.input_keys:
            dtype = tf.dtypes.as_dtype(self.signature_info.inputs[k].base_dtype)
            t = tf.convert_to_tensor(named[k])
            if t.dtype != dtype:
                if dtype == tf.string or t.dtype == tf.string:
                    raise FeedError(
                        f"Input {k!r} expects {dtype.name} but was given {t.dtype.name}."
                    )
                t = tf.cast(t, dtype)
            feeds.append(t)
        return feeds

    def _map_rows(self, fn, feeds):
        fetches = self._v1[0].fn.structured_outputs
        signature = {
            k: tf.TensorSpec(shape=v.shape[1:] if v.shape.rank else None, dtype=v.dtype)
            for k, v in fetches.items()
        }

        def one(row):
            out = fn(*[tf.expand_dims(r, 0) for r in row])
            return {k: v[0] if v.shape.rank else v for k, v in out.items()}

        return tf.map_fn(one, tuple(feeds), fn_output_signature=signature)

    def _result(self, out: Mapping[str, Any]):
        if len(self.output_keys) == 1:
            return out[self.output_keys[0]]
        return {k: out[k] for k in self.output_keys}
