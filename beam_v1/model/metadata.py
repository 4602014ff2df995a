"""Read a TF1 SavedModel's metadata without running its graph.

Everything here works from `saved_model.pb` / `saved_model.pbtxt` and the checkpoint index
alone: the model folder, the parsed proto, tag sets, signatures, variables, assets and the
init op. `beam_v1.model.prepared` strings these steps together; `beam_v1.model.inspect`
describes a model with them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterable, Sequence

from google.protobuf import message, text_format
from tensorflow.core.framework import variable_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow.python.training import py_checkpoint_reader

from beam_v1 import dtypes
from beam_v1.errors import ModelFileError, SignatureNotFoundError, TagsNotFoundError
from beam_v1.text import split_list

_log = logging.getLogger(__name__)

DEFAULT_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"
_INIT_OP_COLLECTIONS = ("saved_model_main_op", "main_op", "legacy_init_op")
_TABLE_INIT_COLLECTION = "table_initializer"
_ASSETS_COLLECTION = "saved_model_assets"
_VARIABLE_OPS = {"VariableV2": "ref", "Variable": "ref", "VarHandleOp": "resource"}
_parses = itertools.count()
_parsed = 0


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One signature input or output."""

    key: str
    dtype: str
    shape: tuple[int, ...] | None
    tensor_name: str
    encoding: str = "dense"
    components: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_ref(self) -> bool:
        return dtypes.is_ref(self.dtype)

    @property
    def base_dtype(self) -> str:
        return dtypes.base_name(self.dtype)

    def shape_str(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ",".join(str(d) for d in self.shape) + "]"


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    key: str
    method_name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]


@dataclasses.dataclass(frozen=True)
class VariableInfo:
    name: str
    dtype: str
    shape: tuple[int, ...] | None
    kind: str  # "ref", "resource", or "checkpoint" when only the checkpoint has it
    trainable: bool | None  # None when the MetaGraph has no trainable_variables collection
    in_graph: bool
    in_checkpoint: bool
    parts: tuple[str, ...] = ()  # graph variables holding slices of a partitioned variable


@dataclasses.dataclass(frozen=True)
class AssetInfo:
    tensor_name: str
    filename: str


# ------------------------------------------------------------------ reading files


def resolve_model_dir(path: str) -> str:
    """Return the SavedModel root for `path`.

    A TensorFlow Serving base path (numbered version folders, each a SavedModel)
    resolves to its highest version.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"Model path {path!r} does not exist.")
    if not os.path.isdir(path):
        raise ModelFileError(
            f"Model path {path!r} is a file; give the SavedModel directory "
            "(the folder holding saved_model.pb)."
        )
    if saved_model_file(path):
        return path
    versions = sorted(
        (int(name), name)
        for name in os.listdir(path)
        if name.isdigit() and saved_model_file(os.path.join(path, name))
    )
    if versions:
        chosen = os.path.join(path, versions[-1][1])
        _log.info(
            "%s holds versions %s; using the highest, %s", path, [v[1] for v in versions], chosen
        )
        return chosen
    raise ModelFileError(
        f"No saved_model.pb or saved_model.pbtxt in {path!r} (it holds: "
        f"{', '.join(sorted(os.listdir(path))[:20]) or 'nothing'})."
    )


def saved_model_file(path: str) -> str | None:
    """`saved_model.pb` (else `saved_model.pbtxt`) in the folder `path`, or None."""
    for name in ("saved_model.pb", "saved_model.pbtxt"):
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """Parse `saved_model.pb` or `saved_model.pbtxt` under `path` (counted: `parse_count`)."""
    global _parsed
    _parsed = next(_parses) + 1
    model_dir = resolve_model_dir(path)
    file_path = saved_model_file(model_dir)
    assert file_path is not None
    saved_model = saved_model_pb2.SavedModel()
    try:
        if file_path.endswith(".pbtxt"):
            with open(file_path, encoding="utf-8") as f:
                text_format.Parse(f.read(), saved_model)
        else:
            with open(file_path, "rb") as f:
                data = f.read()
            if not data:
                raise ModelFileError(f"{file_path} is empty.")
            saved_model.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{file_path} is corrupt and cannot be parsed: {e}") from e
    if not saved_model.meta_graphs:
        raise ModelFileError(f"{file_path} holds no MetaGraph.")
    return saved_model


def parse_count() -> int:
    """How many times this process has parsed a saved_model.pb/.pbtxt (`read_saved_model`)."""
    return _parsed


def tag_sets(saved_model: saved_model_pb2.SavedModel) -> list[tuple[str, ...]]:
    return [tuple(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]


def format_tags(tags: Iterable[str]) -> str:
    """Tags as the command line takes them: `a,b` (or `(no tags)`)."""
    return ",".join(tags) or "(no tags)"


def select_meta_graph(
    saved_model: saved_model_pb2.SavedModel, tags: Sequence[str] | str | None = None
) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph for `tags`; default: the only tag set, else `serve`."""
    available = tag_sets(saved_model)
    listing = "; ".join(format_tags(t) for t in available)
    if tags is None:
        if len(available) == 1:
            if set(available[0]) != {DEFAULT_TAG}:
                _log.warning(
                    "The model has no MetaGraph tagged only %r; using its only tag set %s "
                    "(pass --tags %s to say so explicitly).",
                    DEFAULT_TAG,
                    format_tags(available[0]),
                    format_tags(available[0]),
                )
            return saved_model.meta_graphs[0]
        tags = [DEFAULT_TAG]
    wanted = set(parse_tags(tags))
    for mg in saved_model.meta_graphs:
        if set(mg.meta_info_def.tags) == wanted:
            return mg
    raise TagsNotFoundError(
        f"No MetaGraph has the tag set {format_tags(sorted(wanted))}. The model's tag sets "
        f"are: {listing}. Pass one of them with --tags (API: tags=[...])."
    )


def parse_tags(tags: Sequence[str] | str) -> list[str]:
    return split_list(tags) or []


def node_name(input_name: str) -> str:
    """'^a' / 'a:1' / 'a' -> 'a' (graph inputs); function inputs 'a:out:0' -> 'a'."""
    return input_name.lstrip("^").split(":")[0]


def signature_keys(mg: meta_graph_pb2.MetaGraphDef) -> list[str]:
    return [k for k in mg.signature_def if k != INIT_OP_SIGNATURE_KEY]


def default_signature_key(mg: meta_graph_pb2.MetaGraphDef, signature: str | None) -> str:
    keys = signature_keys(mg)
    if signature is not None:
        if signature in keys:
            return signature
        raise SignatureNotFoundError(
            f"Signature {signature!r} is not in the model. Its signatures are: "
            f"{', '.join(repr(k) for k in keys) or 'none'}."
        )
    if DEFAULT_SIGNATURE in keys:
        return DEFAULT_SIGNATURE
    if len(keys) == 1:
        return keys[0]
    raise SignatureNotFoundError(
        f"The model has no {DEFAULT_SIGNATURE!r} signature and more than one other; "
        f"choose one with --signature (API: signature=...). Its signatures are: "
        f"{', '.join(repr(k) for k in keys) or 'none'}."
    )


# ----------------------------------------------------------------- protos -> data


def shape_of(shape_proto) -> tuple[int, ...] | None:
    if shape_proto.unknown_rank:
        return None
    return tuple(int(d.size) for d in shape_proto.dim)


def tensor_spec(key: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    encoding = info.WhichOneof("encoding") or "name"
    components: dict[str, str] = {}
    tensor_name = info.name
    if encoding == "coo_sparse":
        sparse = info.coo_sparse
        components = {
            "values": sparse.values_tensor_name,
            "indices": sparse.indices_tensor_name,
            "dense_shape": sparse.dense_shape_tensor_name,
        }
        tensor_name = sparse.values_tensor_name
    elif encoding == "composite_tensor":
        components = {
            f"component_{i}": c.name for i, c in enumerate(info.composite_tensor.components)
        }
        tensor_name = next(iter(components.values()), "")
        encoding = "composite"
    else:
        encoding = "dense"
    return TensorSpec(
        key=key,
        dtype=dtypes.name_of(info.dtype),
        # TF 1.0 wrote TensorInfo without tensor_shape: unknown, not a scalar
        shape=shape_of(info.tensor_shape) if info.HasField("tensor_shape") else None,
        tensor_name=tensor_name,
        encoding=encoding,
        components=components,
    )


def signature_info(key: str, sig: meta_graph_pb2.SignatureDef) -> SignatureInfo:
    return SignatureInfo(
        key=key,
        method_name=sig.method_name,
        inputs={k: tensor_spec(k, v) for k, v in sorted(sig.inputs.items())},
        outputs={k: tensor_spec(k, v) for k, v in sorted(sig.outputs.items())},
    )


def signatures(mg: meta_graph_pb2.MetaGraphDef) -> dict[str, SignatureInfo]:
    found = {k: signature_info(k, mg.signature_def[k]) for k in signature_keys(mg)}
    return {k: _placeholder_dtypes(mg, sig) for k, sig in found.items()}


def _placeholder_dtypes(mg: meta_graph_pb2.MetaGraphDef, sig: SignatureInfo) -> SignatureInfo:
    """Trust the graph over a malformed signature: an input declared with another dtype than
    its Placeholder (e.g. half_plus_three's regress sig: float, fed serialized tf.Examples)."""
    placeholders = {
        n.name + ":0": n.attr["dtype"].type
        for n in mg.graph_def.node
        if n.op in ("Placeholder", "PlaceholderWithDefault")
    }
    inputs = dict(sig.inputs)
    for key, spec in sig.inputs.items():
        actual = placeholders.get(spec.tensor_name)
        if spec.encoding == "dense" and actual is not None and dtypes.name_of(actual) != spec.dtype:
            _log.warning(
                "Signature %r declares input %r as %s, but its tensor %s is %s; using %s.",
                sig.key,
                key,
                spec.dtype,
                spec.tensor_name,
                dtypes.name_of(actual),
                dtypes.name_of(actual),
            )
            inputs[key] = dataclasses.replace(spec, dtype=dtypes.name_of(actual))
    return dataclasses.replace(sig, inputs=inputs)


def assets(mg: meta_graph_pb2.MetaGraphDef) -> list[AssetInfo]:
    protos = list(mg.asset_file_def)
    if not protos and _ASSETS_COLLECTION in mg.collection_def:
        for any_proto in mg.collection_def[_ASSETS_COLLECTION].any_list.value:
            asset = meta_graph_pb2.AssetFileDef()
            any_proto.Unpack(asset)
            protos.append(asset)
    return [AssetInfo(p.tensor_info.name, p.filename) for p in protos]


def init_ops(mg: meta_graph_pb2.MetaGraphDef) -> dict[str, list[str]]:
    """Init op names by where they were found, in the order TensorFlow's loader prefers."""
    found: dict[str, list[str]] = {}
    if INIT_OP_SIGNATURE_KEY in mg.signature_def:
        outputs = mg.signature_def[INIT_OP_SIGNATURE_KEY].outputs
        found[INIT_OP_SIGNATURE_KEY] = [t.name for t in outputs.values()]
    for key in (*_INIT_OP_COLLECTIONS, _TABLE_INIT_COLLECTION):
        if key in mg.collection_def:
            names = list(mg.collection_def[key].node_list.value)
            if names:
                found[key] = names
    return found


def variable_defs(mg: meta_graph_pb2.MetaGraphDef, key: str) -> list[variable_pb2.VariableDef]:
    """The VariableDefs of collection `key` (undecodable entries skipped)."""
    collection = mg.collection_def.get(key)
    found = []
    for raw in collection.bytes_list.value if collection is not None else ():
        var = variable_pb2.VariableDef()
        try:
            var.ParseFromString(raw)
        except message.DecodeError:
            continue
        found.append(var)
    return found


def _partitions(mg: meta_graph_pb2.MetaGraphDef) -> dict[str, list[str]]:
    """Full variable name -> its part variables' names, from save-slice info."""
    parts: dict[str, list[str]] = {}
    for key in ("variables", "local_variables", "model_variables"):
        for var in variable_defs(mg, key):
            if var.HasField("save_slice_info_def"):
                name = var.variable_name.split(":")[0]
                full = parts.setdefault(var.save_slice_info_def.full_name, [])
                if name not in full:
                    full.append(name)
    return parts


def trainable_names(mg: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """Names in the trainable_variables collection (parts and their full variables)."""
    names = set()
    for var in variable_defs(mg, "trainable_variables"):
        names.add(var.variable_name.split(":")[0])
        if var.HasField("save_slice_info_def"):
            names.add(var.save_slice_info_def.full_name)
    return names


def graph_variables(mg: meta_graph_pb2.MetaGraphDef) -> dict[str, tuple[str, tuple | None, str]]:
    """Variables declared in the graph: name -> (dtype, shape, ref|resource)."""
    found = {}
    for node in mg.graph_def.node:
        kind = _VARIABLE_OPS.get(node.op)
        if kind is None:
            continue
        dtype = dtypes.name_of(node.attr["dtype"].type)
        shape = shape_of(node.attr["shape"].shape) if "shape" in node.attr else None
        found[node.name] = (dtype, shape, kind)
    return found


def checkpoint_prefix(model_dir: str) -> str:
    return os.path.join(model_dir, "variables", "variables")


def checkpoint_variables(model_dir: str) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """Variables in the checkpoint index (never reads the data shards); None if no checkpoint."""
    prefix = checkpoint_prefix(model_dir)
    index = prefix + ".index"
    if not os.path.isfile(index):
        return None
    try:
        reader = py_checkpoint_reader.NewCheckpointReader(prefix)
    except Exception as e:  # TensorFlow raises several types for a bad index
        raise ModelFileError(f"The checkpoint index {index} cannot be read: {e}") from e
    shapes = reader.get_variable_to_shape_map()
    tf_dtypes = reader.get_variable_to_dtype_map()
    return {
        name: (dtypes.name_of(tf_dtypes[name].as_datatype_enum), tuple(shapes[name]))
        for name in shapes
        if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
    }


def variables(
    model_dir: str, mg: meta_graph_pb2.MetaGraphDef, warnings: list[str] | None = None
) -> list[VariableInfo]:
    """Graph and checkpoint variables; partitioned ones shown once, as the full variable."""
    in_graph = graph_variables(mg)
    try:
        in_ckpt = checkpoint_variables(model_dir) or {}
    except ModelFileError as e:
        if warnings is None:
            raise
        warnings.append(str(e))
        in_ckpt = {}
    trainable = trainable_names(mg)
    has_collections = "trainable_variables" in mg.collection_def
    partitions = _partitions(mg)
    part_names = {p for parts in partitions.values() for p in parts}
    result = []
    for name in sorted((set(in_graph) | set(in_ckpt)) - part_names):
        parts = tuple(partitions.get(name, ()))
        if name in in_ckpt:
            dtype, shape = in_ckpt[name]
        else:
            dtype, shape = in_graph[name][0], in_graph[name][1]
        if name in in_graph:
            kind = in_graph[name][2]
        elif parts and parts[0] in in_graph:
            kind = in_graph[parts[0]][2]
        else:
            kind = "checkpoint"
        result.append(
            VariableInfo(
                name=name,
                dtype=dtypes.base_name(dtype),
                shape=shape,
                kind=kind,
                trainable=(name in trainable) if has_collections else None,
                in_graph=name in in_graph or bool(parts),
                in_checkpoint=name in in_ckpt,
                parts=parts,
            )
        )
    return result
