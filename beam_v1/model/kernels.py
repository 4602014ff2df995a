"""Which ops a graph needs that this TensorFlow cannot run, and loading extra op libraries.

A leaf: it knows TensorFlow's registries, not the rest of beam-v1 (rewrites pass in the ops
they replace).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Collection, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.framework import kernels as tf_kernels
from tensorflow.python.framework import op_def_registry

from beam_v1.errors import BeamV1Error, MissingOpsError

_log = logging.getLogger(__name__)
_loaded: set[tuple[str, str]] = set()


def register_extra_ops(
    op_libraries: Sequence[str] = (), import_modules: Sequence[str] = ()
) -> None:
    """Load op libraries (`tf.load_op_library`) and import op-registering modules, once each."""
    for module in import_modules:
        if ("module", module) in _loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise BeamV1Error(f"Cannot import module {module!r} given with --import: {e}") from e
        _loaded.add(("module", module))
    for library in op_libraries:
        if ("library", library) in _loaded:
            continue
        try:
            tf.load_op_library(library)
        except Exception as e:  # tf raises NotFoundError or a generic error for a bad .so
            raise BeamV1Error(
                f"Cannot load op library {library!r} given with --op-library: {e}"
            ) from e
        _loaded.add(("library", library))


def op_status(op: str) -> str | None:
    """None when this TensorFlow can run `op` on CPU, else why not."""
    if op_def_registry.get(op) is None:
        return "no op registered"
    kernel_list = tf_kernels.get_registered_kernels_for_op(op)
    if not any(k.device_type in ("CPU", "DEFAULT") for k in kernel_list.kernel):
        return "registered, but no CPU kernel"
    return None


def missing_ops(
    graph_def: graph_pb2.GraphDef, replaceable: Collection[str] = ()
) -> dict[str, tuple[list[str], str]]:
    """Ops of the graph and its function library that cannot run here: op -> (nodes, reason).

    An op in `replaceable` (one a rewrite will replace in top-level nodes; see
    `beam_v1.model.rewrites.missing_ops`) is not counted as missing unless a function of the
    library uses it, since rewrites reach top-level nodes only.
    """
    rewritable = set(replaceable)
    functions = {f.signature.name for f in graph_def.library.function}
    users: dict[str, list[str]] = {}
    for node in graph_def.node:
        users.setdefault(node.op, []).append(node.name)
    for function in graph_def.library.function:
        for node in function.node_def:
            users.setdefault(node.op, []).append(f"{function.signature.name}/{node.name}")
    missing = {}
    for op in sorted(users):
        if op in functions:
            continue
        reason = op_status(op)
        in_functions = any(n.startswith(f + "/") for n in users[op] for f in functions)
        if reason is not None and not (op in rewritable and not in_functions):
            missing[op] = (users[op], reason)
    return missing


def missing_ops_error(model_dir: str, missing: dict[str, tuple[list[str], str]]) -> MissingOpsError:
    parts = []
    for op, (nodes, reason) in missing.items():
        shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
        parts.append(f"{op} ({reason}; used by {shown})")
    return MissingOpsError(
        f"The model at {model_dir} uses ops this TensorFlow cannot run: {'; '.join(parts)}. "
        "If they are custom ops, load their library first with --op-library PATH "
        "(API: op_libraries=[...]) or import the module that registers them with "
        "--import MODULE (API: import_modules=[...], e.g. tensorflow_text).",
        missing={op: nodes for op, (nodes, _) in missing.items()},
    )
