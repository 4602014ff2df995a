"""`beam_v1.inspect`: describe a TF1 SavedModel without running it (SPEC §2, §6).

Runs `beam_v1.model.prepared.prepare` with `strict=False`: the same steps, in the same order,
as a load, but missing ops, audit findings and file problems are reported as data instead of
refusing the model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from beam_v1.model import example_spec, metadata
from beam_v1.model.audit import Finding
from beam_v1.model.metadata import AssetInfo, SignatureInfo, VariableInfo
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import prepare


@dataclasses.dataclass
class ModelInfo:
    """What `beam_v1.inspect` returns."""

    path: str
    tags: tuple[str, ...]
    tag_sets: list[tuple[str, ...]]
    tensorflow_version: str
    signatures: dict[str, SignatureInfo]
    variables: list[VariableInfo]
    assets: list[AssetInfo]
    init_ops: dict[str, list[str]]
    missing_ops: dict[str, list[str]]
    missing_op_reasons: dict[str, str]
    warnings: list[str] = dataclasses.field(default_factory=list)
    # graph-op audit (beam_v1.model.audit): ops touching files/processes/Python, assets outside
    unsafe_ops: list[Finding] = dataclasses.field(default_factory=list)
    # ops this TensorFlow lost that beam_v1.model.rewrites replaces at load time: op -> nodes
    rewrites: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    # tf.Example feature spec behind each serialized-example input (beam_v1.model.example_spec)
    example_specs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        return format_model_info(self)


def inspect(
    path: str,
    tags: Sequence[str] | str | None = None,
    *,
    op_libraries: Sequence[str] = (),
    import_modules: Sequence[str] = (),
    rewrites: bool = True,
) -> ModelInfo:
    """Describe a TF1 SavedModel without running it (SPEC §2).

    `rewrites=False`: ops `beam_v1.model.rewrites` could replace count as missing.

    Raises:
      ModelFileError, TagsNotFoundError: no readable model, or no MetaGraph with `tags`.
    """
    options = LoadOptions(
        op_libraries=tuple(op_libraries), import_modules=tuple(import_modules), rewrites=rewrites
    )
    prepared = prepare(path, tags, options=options, strict=False)
    mg = prepared.meta_graph
    warnings: list[str] = []
    found_variables = metadata.variables(prepared.local_dir, mg, warnings)
    warnings += prepared.file_problems()
    return ModelInfo(
        path=prepared.local_dir,
        tags=prepared.tags,
        tag_sets=list(prepared.tag_sets),
        tensorflow_version=mg.meta_info_def.tensorflow_version or "unknown",
        signatures=dict(prepared.signatures),
        variables=found_variables,
        assets=metadata.assets(mg),
        init_ops=metadata.init_ops(mg),
        missing_ops={op: nodes for op, (nodes, _) in prepared.missing_ops.items()},
        missing_op_reasons={op: reason for op, (_, reason) in prepared.missing_ops.items()},
        warnings=warnings,
        unsafe_ops=list(prepared.findings),
        rewrites=dict(prepared.rewritten),
        example_specs=example_spec.describe_meta_graph(mg),
    )


# ------------------------------------------------------------------------- text


def _table(rows: list[list[str]], indent: str = "    ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _shape_str(shape) -> str:
    return "?" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def format_model_info(info: ModelInfo) -> str:
    """The readable table `beam-v1 inspect` prints."""
    lines = [
        f"SavedModel  {info.path}",
        f"written by  TensorFlow {info.tensorflow_version}",
        f"tags        {metadata.format_tags(info.tags)}"
        + (
            f"   (all tag sets: {'; '.join(metadata.format_tags(t) for t in info.tag_sets)})"
            if len(info.tag_sets) > 1
            else ""
        ),
        "",
        f"Signatures ({len(info.signatures)})",
    ]
    for sig in info.signatures.values():
        lines.append(f"  {sig.key!r}  method {sig.method_name or '(none)'}")
        rows = [
            [direction, s.key, s.dtype, s.shape_str(), s.encoding, s.tensor_name]
            for direction, specs in (("in", sig.inputs), ("out", sig.outputs))
            for s in specs.values()
        ]
        lines += _table(rows)
    lines += ["", f"Variables ({len(info.variables)})"]
    rows = [
        [
            v.name,
            v.dtype,
            _shape_str(v.shape),
            v.kind,
            "trainable" if v.trainable else "",
            (f"{len(v.parts)} parts" if v.parts else "")
            + ("" if v.in_checkpoint else "not in checkpoint"),
        ]
        for v in info.variables
    ]
    lines += _table(rows, "  ") or ["  (none)"]
    lines += ["", f"Assets ({len(info.assets)})"]
    lines += _table([[a.filename, a.tensor_name] for a in info.assets], "  ") or ["  (none)"]
    lines += ["", "Init ops"]
    lines += _table([[k, ", ".join(v)] for k, v in info.init_ops.items()], "  ") or ["  (none)"]
    lines += ["", "Ops this TensorFlow lacks"]
    if info.missing_ops:
        for op, nodes in info.missing_ops.items():
            shown = ", ".join(nodes[:5]) + (f" (+{len(nodes) - 5} more)" if len(nodes) > 5 else "")
            lines.append(f"  {op}: {info.missing_op_reasons[op]}; used by {shown}")
    else:
        lines.append("  (none)")
    if info.rewrites:
        lines += ["", "Rewrites applied at load (ops this TensorFlow lost; --no-rewrites: off)"]
        lines += [f"  {op}: {len(n)} node(s), e.g. {n[0]}" for op, n in info.rewrites.items()]
    if info.example_specs:
        lines += ["", "tf.Example inputs"] + example_spec.format_specs(info.example_specs)
    lines += ["", "Unsafe ops (refused unless --allow-unsafe-ops)"]
    lines += _table(
        [[f.op, f.node, f"from {f.reached_from}", f.reason] for f in info.unsafe_ops], "  "
    ) or ["  (none)"]
    if info.warnings:
        lines += ["", "Warnings"] + [f"  {w}" for w in info.warnings]
    return "\n".join(lines)
