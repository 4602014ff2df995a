"""`assign_variables`: TF1 weights into a native TF2/Keras 3 model (SPEC §2).

    import beam_v1, keras

    native = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    report = beam_v1.assign_variables(
        "/models/mnist_lr",                      # a SavedModel, or a variables dump
        native,
        mapping={"W": "dense/kernel", "b": "dense/bias"},
    )
    print(report)      # assigned pairs, and what was left unmatched on each side

Sources: a SavedModel directory (its checkpoint is read directly, without running the graph),
the output of `DumpVariables` / `beam-v1 dump-variables` (a `.parquet`/`.npz` file or the dump
prefix; `model=` picks one model in a multi-model dump), or a dict `{name: ndarray}`.

Targets: a Keras 3 model or layer (its variables are named by `variable.path`, e.g.
`dense/kernel`; `layer.name` prefixes are what `model.summary()` shows), a dict
`{name: tf.Variable | keras.Variable}`, or a list of variables (named by `.path`, else `.name`
without `:0`).

Mapping (source name -> target name):
- `None`: exact names;
- a dict `{source: target}`: only those pairs;
- a callable `f(source) -> target or None` (None skips the source variable);
- a list of `(regex, replacement)` pairs: the first pattern that fully matches a source name
  gives the target by `re.sub`-style expansion (`\\1`, `\\g<name>`).

Every pair is checked before anything is written (all or nothing): the shapes must be equal
(`ShapeMismatchError` otherwise; no transposing or reshaping is guessed) and the dtype must
cast safely (`numpy.can_cast(..., 'same_kind')`, e.g. float64 -> float32 yes, float -> int no).
Two sources mapped to one target, or a mapping that names a variable that does not exist
(dict mappings only), is an error. `strict=True` also fails when anything is left unmatched.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_v1 import dtypes
from beam_v1.errors import BeamV1Error, ModelFileError

Mapping_ = Mapping[str, str] | Callable[[str], str | None] | Sequence[tuple[str, str]] | None


class AssignError(BeamV1Error, ValueError):
    """The weights cannot be assigned as asked (mapping, dtype, duplicates, strict mode)."""


class ShapeMismatchError(AssignError):
    """A source variable and its target variable have different shapes."""


@dataclasses.dataclass
class AssignReport:
    """What `assign_variables` did."""

    assigned: list[tuple[str, str]]  # (source name, target name), in source name order
    unmatched_source: list[str]  # source variables that no target received
    unmatched_target: list[str]  # target variables that received nothing

    def __str__(self) -> str:
        lines = [f"assigned {len(self.assigned)} variable(s)"]
        lines += [f"  {s} -> {t}" for s, t in self.assigned]
        lines.append(f"unmatched in the source ({len(self.unmatched_source)}):")
        lines += [f"  {s}" for s in self.unmatched_source]
        lines.append(f"unmatched in the target ({len(self.unmatched_target)}):")
        lines += [f"  {t}" for t in self.unmatched_target]
        return "\n".join(lines)


def assign_variables(
    dump_or_model_path: str | Mapping[str, Any],
    target: Any,
    mapping: Mapping_ = None,
    *,
    tags: Sequence[str] | str | None = None,
    model: str | None = None,
    strict: bool = False,
) -> AssignReport:
    """Copy weights from a TF1 model or a variables dump into `target`; see the module doc.

    Returns an `AssignReport`; raises `ShapeMismatchError` / `AssignError` before writing
    anything when a pair does not fit.
    """
    source = read_source(dump_or_model_path, tags=tags, model=model)
    targets = target_variables(target)
    pairs = _pairs(source, targets, mapping)
    checked = []
    for src, dst in pairs:
        value = np.asarray(source[src])
        var = targets[dst]
        want_shape = tuple(int(d) for d in var.shape)
        if tuple(value.shape) != want_shape:
            raise ShapeMismatchError(
                f"Cannot assign {src!r} (shape {list(value.shape)}) to {dst!r} (shape "
                f"{list(want_shape)}): shapes differ. Map it to a variable of that shape, or "
                "reshape/transpose the value yourself and pass a dict as the source."
            )
        want_dtype = _np_dtype(var)
        if value.dtype != want_dtype:
            if value.dtype.kind in "OSU" or not np.can_cast(value.dtype, want_dtype, "same_kind"):
                raise AssignError(
                    f"Cannot assign {src!r} ({value.dtype}) to {dst!r} ({want_dtype}): the "
                    "dtype does not cast safely ('same_kind')."
                )
            value = value.astype(want_dtype)
        checked.append((src, dst, value))
    assigned_src = {s for s, _ in pairs}
    assigned_dst = {d for _, d in pairs}
    report = AssignReport(
        assigned=[(s, d) for s, d, _ in checked],
        unmatched_source=sorted(k for k in source if k not in assigned_src),
        unmatched_target=sorted(k for k in targets if k not in assigned_dst),
    )
    if strict and (report.unmatched_source or report.unmatched_target):
        raise AssignError(
            "strict=True and some variables were left unmatched; nothing was assigned.\n"
            + str(report)
        )
    for _, dst, value in checked:
        targets[dst].assign(value)
    return report


# ------------------------------------------------------------------ sources


def _is_saved_model_dir(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    from beam_v1.model import metadata as savedmodel  # deferred: it starts TensorFlow

    try:
        savedmodel.resolve_model_dir(path)
    except ModelFileError:
        return False
    return True


def read_source(
    source: str | Mapping[str, Any],
    tags: Sequence[str] | str | None = None,
    model: str | None = None,
) -> dict[str, np.ndarray]:
    """{variable name: ndarray} from a SavedModel, a variables dump, or a dict as is."""
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    from beam_v1.io import staging  # deferred, as the one below: Beam and TensorFlow start-up
    from beam_v1.variables import checkpoint, read

    with staging.staged_model(os.fspath(source)) as path:  # removed once the arrays are read
        if _is_saved_model_dir(path):
            return checkpoint.read_checkpoint(path, tags)
        return read.read_variables(path, model=model)


# ------------------------------------------------------------------ targets


def _var_name(var: Any) -> str:
    name = getattr(var, "path", None) or var.name
    return name[:-2] if name.endswith(":0") else name


def target_variables(target: Any) -> dict[str, Any]:
    """{name: variable} of a Keras model/layer, a dict of variables or a list of them."""
    if isinstance(target, Mapping):
        return dict(target)
    if hasattr(target, "weights") and not isinstance(target, (list, tuple)):
        variables = list(target.weights)
    elif isinstance(target, (list, tuple)):
        variables = list(target)
    else:
        raise AssignError(
            f"Cannot assign into a {type(target).__name__}: give a Keras model or layer, a "
            "dict {name: tf.Variable} or a list of variables."
        )
    out: dict[str, Any] = {}
    for var in variables:
        name = _var_name(var)
        if name in out and out[name] is not var:
            raise AssignError(
                f"The target has two variables named {name!r}; pass a dict {{name: variable}} "
                "to disambiguate."
            )
        out[name] = var
    prefix = f"{getattr(target, 'name', '')}/"
    if (
        not isinstance(target, (Mapping, list, tuple))
        and out
        and all(k.startswith(prefix) and len(k) > len(prefix) for k in out)
    ):
        # Keras prefixes Sequential/subclassed models' variable paths with the model's own
        # name: accept (and report) the names without it, e.g. "dense/kernel"
        out = _Aliased(
            {k[len(prefix) :]: v for k, v in out.items()}, {k: k[len(prefix) :] for k in out}
        )
    return out


class _Aliased(dict):
    """Target variables by short name, also reachable by their full path."""

    def __init__(self, items: dict[str, Any], aliases: dict[str, str]):
        super().__init__(items)
        self.aliases = aliases

    def canonical(self, name: str) -> str:
        return name if name in self else self.aliases.get(name, name)


def _np_dtype(var: Any) -> np.dtype:
    """The numpy dtype of a TensorFlow or Keras variable (its dtype's TensorFlow name)."""
    dtype = var.dtype
    return dtypes.numpy_dtype(str(getattr(dtype, "name", dtype)))


# ------------------------------------------------------------------ mapping


def _pairs(
    source: Mapping[str, Any], targets: Mapping[str, Any], mapping: Mapping_
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    canonical = getattr(targets, "canonical", lambda name: name)
    if mapping is None:
        pairs = [(k, k) for k in sorted(source) if k in targets]
    elif isinstance(mapping, Mapping):
        missing_src = [s for s in mapping if s not in source]
        mapping = {s: canonical(t) for s, t in mapping.items()}
        missing_dst = [t for t in mapping.values() if t not in targets]
        if missing_src or missing_dst:
            raise AssignError(
                "The mapping names variables that do not exist: "
                + (
                    f"source {missing_src} (the source has {sorted(source)}); "
                    if missing_src
                    else ""
                )
                + (
                    f"target {missing_dst} (the target has {sorted(targets)})."
                    if missing_dst
                    else ""
                )
            )
        pairs = [(s, mapping[s]) for s in sorted(mapping)]
    elif callable(mapping):
        for s in sorted(source):
            t = mapping(s)
            if t is not None:
                pairs.append((s, _existing(s, canonical(t), targets)))
    else:
        rules = [(re.compile(p), r) for p, r in mapping]
        for s in sorted(source):
            for pattern, replacement in rules:
                m = pattern.fullmatch(s)
                if m:
                    pairs.append((s, _existing(s, canonical(m.expand(replacement)), targets)))
                    break
    seen: dict[str, str] = {}
    for s, t in pairs:
        if t in seen:
            raise AssignError(
                f"Source variables {seen[t]!r} and {s!r} are both mapped to target {t!r}."
            )
        seen[t] = s
    return pairs


def _existing(source: str, target: str, targets: Mapping[str, Any]) -> str:
    if target not in targets:
        raise AssignError(
            f"The mapping sends {source!r} to {target!r}, which the target does not have; "
            f"its variables are {sorted(targets)}."
        )
    return target
