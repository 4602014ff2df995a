"""Whether a SavedModel's files are complete, found without loading any variable.

The checkpoint index beside a graph with variables, every data shard it names present,
non-empty and as long as the index says, and every signature tensor present in the graph.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tensorflow.core.protobuf import meta_graph_pb2

from beam_v1.errors import ModelFileError
from beam_v1.io import tensor_bundle
from beam_v1.model import metadata


def truncated_shards(prefix: str) -> list[str]:
    """Data shards shorter than the index says (sizes from the index; no tensor is read)."""
    try:
        header, entries = tensor_bundle.read_index(prefix)
    except ModelFileError as e:
        return [str(e)]
    needed: dict[int, int] = {}
    for entry in entries.values():
        needed[entry.shard_id] = max(needed.get(entry.shard_id, 0), entry.offset + entry.size)
    problems = []
    for shard_id, end in sorted(needed.items()):
        path = tensor_bundle.shard_path(prefix, shard_id, header.num_shards)
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
    problems = []
    prefix = metadata.checkpoint_prefix(model_dir)
    index = prefix + ".index"
    variables_dir = os.path.dirname(prefix)
    if metadata.graph_variables(mg) and not os.path.isfile(index):
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
            count = int(total or 0)
            expected = [
                os.path.basename(tensor_bundle.shard_path(prefix, i, count)) for i in range(count)
            ]
            missing = [n for n in expected if n not in listing]
            if missing:
                problems.append(
                    f"Checkpoint data shard(s) {missing} are missing in {variables_dir}."
                )
            empty = [n for n in data if os.path.getsize(os.path.join(variables_dir, n)) == 0]
            if empty:
                problems.append(f"Checkpoint data shard(s) {empty} in {variables_dir} are empty.")
            elif not missing:
                problems += truncated_shards(prefix)
    nodes = {n.name for n in mg.graph_def.node}
    keys = metadata.signature_keys(mg) if signature_keys is None else list(signature_keys)
    for key in keys:
        sig = metadata.signature_info(key, mg.signature_def[key])
        for spec in (*sig.inputs.values(), *sig.outputs.values()):
            for name in spec.components.values() or [spec.tensor_name]:
                if metadata.node_name(name) not in nodes:
                    problems.append(
                        f"Signature {key!r} names tensor {name!r} for {spec.key!r}, "
                        "but the graph has no such tensor."
                    )
    return problems
