"""Graph-op audit (SPEC §7): which ops of a SavedModel's run touch files, processes or Python.

Works from `saved_model.pb` alone, before anything runs. It walks the subgraph a run can
execute: every signature's inputs and outputs, the init op(s), the table initialisers and the
loader's own restore op, back through data and control inputs and into every function of the
graph's function library those nodes call (`PartitionedCall` / `While` / `If` bodies, any
`func` attribute), and flags ops in `UNSAFE_OPS` plus a few ops that are unsafe only with some
attributes or inputs. Assets whose file name resolves outside the model's `assets/` folder are
flagged too.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterable

from tensorflow.core.protobuf import meta_graph_pb2

from beam_v1.errors import UnsafeModelError
from beam_v1.model import metadata

# op -> why it is flagged
UNSAFE_OPS: dict[str, str] = {
    "ReadFile": "reads a file",
    "WriteFile": "writes a file",
    "MatchingFiles": "lists files",
    "PyFunc": "runs Python code",
    "PyFuncStateless": "runs Python code",
    "EagerPyFunc": "runs Python code",
    "Save": "writes a checkpoint",
    "SaveV2": "writes a checkpoint",
    "SaveSlices": "writes a checkpoint",
    "MergeV2Checkpoints": "writes a checkpoint",
    "Restore": "reads a checkpoint",
    "RestoreV2": "reads a checkpoint",
    "RestoreSlice": "reads a checkpoint",
    "ImmutableConst": "maps a file into memory",
    "TFRecordDataset": "reads files",
    "TFRecordDatasetV2": "reads files",
    "TextLineDataset": "reads files",
    "FixedLengthRecordDataset": "reads files",
    "FixedLengthRecordDatasetV2": "reads files",
    "ExperimentalCSVDataset": "reads files",
    "CSVDataset": "reads files",
    "CSVDatasetV2": "reads files",
    "SaveDataset": "writes files",
    "SaveDatasetV2": "writes files",
    "LoadDataset": "reads files",
    "SnapshotDataset": "reads and writes files",
    "SnapshotDatasetV2": "reads and writes files",
    "CreateSummaryFileWriter": "writes summary files",
    "CreateSummaryDbWriter": "writes a summary database",
    "SummaryWriter": "writes summaries",
    "WriteAudioSummary": "writes summaries",
    "WriteGraphSummary": "writes summaries",
    "WriteHistogramSummary": "writes summaries",
    "WriteImageSummary": "writes summaries",
    "WriteRawProtoSummary": "writes summaries",
    "WriteScalarSummary": "writes summaries",
    "WriteSummary": "writes summaries",
    "ImportEvent": "writes summaries",
}
# file readers of the TF1 queue API: WholeFileReader, TextLineReaderV2, TFRecordReader, ...
_READER_SUFFIXES = ("Reader", "ReaderV2")
_TEXT_TABLE_INITS = ("InitializeTableFromTextFile", "InitializeTableFromTextFileV2")
# ops the loader's own saver (saver_def) may use: allowed there, flagged anywhere else
_SAVER_OPS = {
    "Save",
    "SaveV2",
    "SaveSlices",
    "Restore",
    "RestoreV2",
    "RestoreSlice",
    "MergeV2Checkpoints",
}
_FUNC_CALL_OPS = {"PartitionedCall", "StatefulPartitionedCall"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One flagged op (or asset): its type, node, and the root of the run that reaches it."""

    op: str
    node: str
    reached_from: str
    reason: str

    def describe(self) -> str:
        return f"{self.op} at node {self.node!r} ({self.reason}; reached from {self.reached_from})"


def _called_functions(node, library: set[str]) -> Iterable[str]:
    if node.op in library:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func") and value.func.name:
            yield value.func.name
        for f in value.list.func:
            if f.name:
                yield f.name


def _roots(mg: meta_graph_pb2.MetaGraphDef) -> list[tuple[str, list[str]]]:
    roots: list[tuple[str, list[str]]] = []
    for key, sig in mg.signature_def.items():
        if key == metadata.INIT_OP_SIGNATURE_KEY:
            continue
        names = [t.name for t in sig.inputs.values()] + [t.name for t in sig.outputs.values()]
        for info in [*sig.inputs.values(), *sig.outputs.values()]:
            if info.HasField("coo_sparse"):
                c = info.coo_sparse
                names += [c.values_tensor_name, c.indices_tensor_name, c.dense_shape_tensor_name]
            names += [c.name for c in info.composite_tensor.components]
        roots.append((f"signature {key!r}", names))
    for where, names in metadata.init_ops(mg).items():
        label = "table initialiser" if where == "table_initializer" else f"init op {where!r}"
        roots.append((label, list(names)))
    return roots


def audit_graph(mg: meta_graph_pb2.MetaGraphDef) -> list[Finding]:
    """Unsafe ops reached from the signatures, init ops, table initialisers and restore op."""
    graph = mg.graph_def
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    library = set(functions)
    asset_nodes = {metadata.node_name(a.tensor_info.name) for a in mg.asset_file_def}
    asset_nodes |= {metadata.node_name(a.tensor_name) for a in metadata.assets(mg)}
    findings: dict[str, Finding] = {}

    def check(node, where: str, qualified: str, in_saver: bool) -> None:
        if qualified in findings:
            return
        op = node.op
        reason = UNSAFE_OPS.get(op)
        if reason is not None and in_saver and op in _SAVER_OPS:
            reason = None
        if reason is None and op.endswith(_READER_SUFFIXES) and op not in library:
            reason = "reads files"
        if op == "PrintV2":
            stream = node.attr["output_stream"].s.decode("utf-8", "replace")
            if stream.startswith("file://"):
                reason = f"prints to {stream}"
        if op in ("DecodeProtoV2", "DecodeProto"):
            source = node.attr["descriptor_source"].s.decode("utf-8", "replace")
            if source and source != "local://":
                reason = f"reads proto descriptors from {source}"
        if op in _TEXT_TABLE_INITS:
            filename = metadata.node_name(node.input[1]) if len(node.input) > 1 else ""
            if filename not in asset_nodes or "::" in qualified:
                reason = (
                    f"fills a table from a text file given by {filename!r}, "
                    "which is not one of the model's assets"
                )
        if reason is not None:
            findings[qualified] = Finding(op, qualified, where, reason)

    seen_functions: set[str] = set()

    def walk_function(name: str, where: str, queue_functions: deque) -> None:
        fn = functions[name]
        for fnode in fn.node_def:
            check(fnode, where, f"{name}::{fnode.name}", in_saver=False)
            for called in _called_functions(fnode, library):
                if called in functions and called not in seen_functions:
                    seen_functions.add(called)
                    queue_functions.append(called)

    seen: set[str] = set()
    roots = _roots(mg)
    saver_root = mg.saver_def.restore_op_name if mg.HasField("saver_def") else ""
    if saver_root:
        roots.append(("the loader's restore op", [saver_root]))
    for where, names in roots:
        in_saver = where == "the loader's restore op"
        queue = deque(metadata.node_name(n) for n in names if n)
        functions_queue: deque[str] = deque()
        while queue:
            name = queue.popleft()
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            check(node, where, name, in_saver)
            for called in _called_functions(node, library):
                if called not in seen_functions:
                    seen_functions.add(called)
                    functions_queue.append(called)
            queue.extend(metadata.node_name(i) for i in node.input)
        while functions_queue:
            walk_function(functions_queue.popleft(), where, functions_queue)
    return list(findings.values())


def audit_assets(mg: meta_graph_pb2.MetaGraphDef, model_dir: str | None) -> list[Finding]:
    """Assets whose file name resolves outside `model_dir/assets` (`../`, absolute, symlink)."""
    if model_dir is None:
        return []
    asset_dir = os.path.realpath(os.path.join(model_dir, "assets"))
    found = []
    for asset in metadata.assets(mg):
        resolved = os.path.realpath(os.path.join(asset_dir, asset.filename))
        if os.path.isabs(asset.filename) or os.path.commonpath([asset_dir, resolved]) != asset_dir:
            found.append(
                Finding(
                    "AssetFileDef",
                    asset.tensor_name,
                    "assets",
                    f"its file {asset.filename!r} resolves to {resolved}, outside the "
                    f"model's assets folder {asset_dir}",
                )
            )
    return found


def audit(mg: meta_graph_pb2.MetaGraphDef, model_dir: str | None = None) -> list[Finding]:
    """Every finding of the graph walk and the asset check."""
    return audit_graph(mg) + audit_assets(mg, model_dir)


def unsafe_error(model_dir: str, findings: list[Finding]) -> UnsafeModelError:
    shown = "; ".join(f.describe() for f in findings[:10])
    more = f"; and {len(findings) - 10} more" if len(findings) > 10 else ""
    return UnsafeModelError(
        f"The model at {model_dir} was refused before running anything: its graph uses ops "
        f"that touch files, processes or Python, or assets outside its folder: {shown}{more}. "
        "If you trust this model, pass --allow-unsafe-ops (API: allow_unsafe_ops=True).",
        findings,
    )
