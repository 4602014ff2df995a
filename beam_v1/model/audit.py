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

from beam_v1.errors import ModelFileError, UnsafeModelError

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


def _node_name(input_name: str) -> str:
    """'^a' / 'a:1' / 'a' -> 'a' (graph inputs); function inputs 'a:out:0' -> 'a'."""
    return input_name.lstrip("^").split(":")[0]


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
    from beam_v1.model import metadata as savedmodel

    roots: list[tuple[str, list[str]]] = []
    for key, sig in mg.signature_def.items():
        if key == savedmodel.INIT_OP_SIGNATURE_KEY:
            continue
        names = [t.name for t in sig.inputs.values()] + [t.name for t in sig.outputs.values()]
        for info in [*sig.inputs.values(), *sig.outputs.values()]:
            if info.HasField("coo_sparse"):
                c = info.coo_sparse
                names += [c.values_tensor_name, c.indices_tensor_name, c.dense_shape_tensor_name]
            names += [c.name for c in info.composite_tensor.components]
        roots.append((f"signature {key!r}", names))
    for where, names in savedmodel.init_ops(mg).items():
        label = "table initialiser" if where == "table_initializer" else f"init op {where!r}"
        roots.append((label, list(names)))
    return roots


def audit_graph(mg: meta_graph_pb2.MetaGraphDef) -> list[Finding]:
    """Unsafe ops reached from the signatures, init ops, table initialisers and restore op."""
    graph = mg.graph_def
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    library = set(functions)
    asset_nodes = {_node_name(a.tensor_info.name) for a in mg.asset_file_def}
    from beam_v1.model import metadata as savedmodel

    asset_nodes |= {_node_name(a.tensor_name) for a in savedmodel.assets(mg)}
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
            filename = _node_name(node.input[1]) if len(node.input) > 1 else ""
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
        queue = deque(_node_name(n) for n in names if n)
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
            queue.extend(_node_name(i) for i in node.input)
        while functions_queue:
            walk_function(functions_queue.popleft(), where, functions_queue)
    return list(findings.values())


def audit_assets(mg: meta_graph_pb2.MetaGraphDef, model_dir: str | None) -> list[Finding]:
    """Assets whose file name resolves outside `model_dir/assets` (`../`, absolute, symlink)."""
    from beam_v1.model import metadata as savedmodel

    if model_dir is None:
        return []
    asset_dir = os.path.realpath(os.path.join(model_dir, "assets"))
    found = []
    for asset in savedmodel.assets(mg):
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


def check(mg: meta_graph_pb2.MetaGraphDef, model_dir: str, allow_unsafe_ops: bool) -> None:
    """Raise UnsafeModelError for a model with findings, unless `allow_unsafe_ops`."""
    if allow_unsafe_ops:
        return
    findings = audit(mg, model_dir)
    if findings:
        raise unsafe_error(model_dir, findings)


# ------------------------------------------------------------ incomplete model files


def _truncated_shards(prefix: str) -> list[str]:
    """Data shards shorter than the index says (sizes from the index; no tensor is read)."""
    from beam_v1.variables import checkpoint as variables

    try:
        found = variables.read_index(prefix)
    except ModelFileError as e:
        return [str(e)]
    if found is None:  # an index block compressed in a way we do not parse: TF's reader checks
        return []
    header, entries = found
    needed: dict[int, int] = {}
    for entry in entries.values():
        needed[entry.shard_id] = max(needed.get(entry.shard_id, 0), entry.offset + entry.size)
    problems = []
    for shard_id, end in sorted(needed.items()):
        path = variables.shard_path(prefix, shard_id, header.num_shards)
        if os.path.isfile(path) and os.path.getsize(path) < end:
            problems.append(
                f"Checkpoint data shard {path} is truncated: {os.path.getsize(path)} bytes where "
                f"the index needs {end}."
            )
    return problems


def file_problems(
    model_dir: str, mg: meta_graph_pb2.MetaGraphDef, signature_keys: Iterable[str] | None = None
) -> list[str]:
    """What is missing from the model's files, found without loading any variable.

    A graph with variables but no `variables.index`; missing or empty data shards; signature
    tensors (of `signature_keys`, default all) whose node is not in the graph; data shards
    shorter than the index says.
    """
    from beam_v1.model import metadata as savedmodel

    problems = []
    prefix = savedmodel.checkpoint_prefix(model_dir)
    index = prefix + ".index"
    variables_dir = os.path.dirname(prefix)
    if savedmodel.graph_variables(mg) and not os.path.isfile(index):
        problems.append(f"The graph has variables but their checkpoint {index} is missing.")
    if os.path.isfile(index):
        listing = os.listdir(variables_dir)
        data = sorted(n for n in listing if n.startswith("variables.data-"))
        if not data:
            problems.append(
                f"The checkpoint {index} has no data shard (variables.data-*) beside it."
            )
        else:
            total = data[0].rsplit("-of-", 1)[-1]
            expected = [f"variables.data-{i:05d}-of-{total}" for i in range(int(total or 0))]
            missing = [n for n in expected if n not in listing]
            if missing:
                problems.append(
                    f"Checkpoint data shard(s) {missing} are missing in {variables_dir}."
                )
            empty = [n for n in data if os.path.getsize(os.path.join(variables_dir, n)) == 0]
            if empty:
                problems.append(f"Checkpoint data shard(s) {empty} in {variables_dir} are empty.")
            elif not missing:
                problems += _truncated_shards(prefix)
    nodes = {n.name for n in mg.graph_def.node}
    keys = savedmodel.signature_keys(mg) if signature_keys is None else list(signature_keys)
    for key in keys:
        sig = savedmodel.signature_info(key, mg.signature_def[key])
        for spec in (*sig.inputs.values(), *sig.outputs.values()):
            for name in spec.components.values() or [spec.tensor_name]:
                if _node_name(name) not in nodes:
                    problems.append(
                        f"Signature {key!r} names tensor {name!r} for {spec.key!r}, "
                        "but the graph has no such tensor."
                    )
    return problems
