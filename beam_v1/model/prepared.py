"""PreparedModel: a SavedModel read once and checked, before anything of it runs.

In the manner of TensorFlow's `SavedModelLoader` (parse once, then small steps), `prepare`
takes these steps, and refuses a model at the first that fails, in this one order:

    resolve   a TF Serving base folder -> its highest version; a remote path is staged first
    parse     saved_model.pb / .pbtxt, once (`metadata.read_saved_model`)
    select    the MetaGraph of the tag set (`metadata.select_meta_graph`)
    signature the chosen or default signature key (`metadata.default_signature_key`)
    ops       ops this TensorFlow cannot run, counting rewritable ones as runnable
    rewrites  lost ops replaced (`rewrites.rewrite_meta_graph`)
    audit     the graph that will actually run: the rewritten one (`audit.audit`, SPEC §7)
    files     checkpoint index and shards, signature tensors (`files_check.file_problems`)

Every consumer takes the result instead of repeating the steps: the session (`V1Model`),
preflight (`check_model`), `V1Layer`, the tf.Example scorer and `inspect`. With
`strict=False` (what `inspect` uses) missing ops and audit findings are recorded instead of
raised, no signature has to be choosable, and the file checks are left to the caller
(`PreparedModel.file_problems`).

The parse, select, ops, rewrites and audit steps are cached per process, keyed by the local
folder, tags, the op-related options and saved_model.pb's (mtime_ns, size): every signature
and session option of one model shares them. Choosing the signature and enforcing the
findings are cheap and run on each call, and so do the file checks, never cached, so deleted
or truncated checkpoint files are seen at once.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tensorflow.core.protobuf import meta_graph_pb2

from beam_v1.errors import ModelFileError, SignatureNotFoundError
from beam_v1.model import audit, example_spec, files_check, kernels, metadata, rewrites
from beam_v1.model.audit import Finding
from beam_v1.model.metadata import SignatureInfo
from beam_v1.model.options import LoadOptions

_CACHE_SIZE = 8


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedModel:
    """A parsed, selected and checked SavedModel (see the module docstring).

    Attributes:
      source: the path as given (local, `file://` or remote).
      local_dir: the local SavedModel folder (staged copy of a remote model, chosen version).
      meta_graph: the selected MetaGraphDef after rewrites: the graph a session imports.
        Shared by every user of this object: copy it before changing it.
      tags: the selected MetaGraph's tags; tag_sets: every tag set of the model.
      signatures: SignatureInfo by key (the init-op signature excluded).
      signature_key: the chosen signature, or the default one (None only with strict=False
        when no default exists).
      rewritten: op -> nodes replaced by `beam_v1.model.rewrites`.
      options: the LoadOptions it was prepared with.
      strict: whether missing ops, findings (unless `options.allow_unsafe_ops`) and file
        problems were refused (True) or only recorded (False).
      missing_ops: op -> (nodes, reason) this TensorFlow cannot run (empty when strict).
      findings: the audit's findings on `meta_graph` (empty when strict, unless allowed).
    """

    source: str
    local_dir: str
    meta_graph: meta_graph_pb2.MetaGraphDef
    tags: tuple[str, ...]
    tag_sets: tuple[tuple[str, ...], ...]
    signatures: Mapping[str, SignatureInfo]
    signature_key: str | None
    rewritten: Mapping[str, list[str]]
    options: LoadOptions
    strict: bool = True
    missing_ops: Mapping[str, tuple[list[str], str]] = dataclasses.field(default_factory=dict)
    findings: tuple[Finding, ...] = ()
    _example_specs: dict[str, dict[str, example_spec.ExampleSpec]] = dataclasses.field(
        default_factory=dict, repr=False
    )

    def signature(self, key: str | None = None) -> SignatureInfo:
        """The signature `key` (default: `signature_key`).

        Raises:
          SignatureNotFoundError: naming the model's signatures.
        """
        key = self.signature_key if key is None else key
        if key in self.signatures:
            return self.signatures[key]
        listing = ", ".join(repr(k) for k in self.signatures) or "none"
        if key is None:
            raise SignatureNotFoundError(
                f"The model has no {metadata.DEFAULT_SIGNATURE!r} signature and more than one "
                f"other; choose one with --signature (API: signature=...). Its signatures "
                f"are: {listing}."
            )
        raise SignatureNotFoundError(
            f"Signature {key!r} is not in the model. Its signatures are: {listing}."
        )

    def example_specs(self, key: str | None = None) -> dict[str, example_spec.ExampleSpec]:
        """{input key: ExampleSpec} of the signature's serialized tf.Example inputs (cached)."""
        key = self.signature(key).key
        found = self._example_specs.get(key)
        if found is None:
            found = example_spec.specs_of_signature(self.meta_graph, key)
            self._example_specs[key] = found
        return found

    def file_problems(self, signature_keys: Iterable[str] | None = None) -> list[str]:
        """What the model's files lack, read now (never cached); default: every signature."""
        return files_check.file_problems(self.local_dir, self.meta_graph, signature_keys)

    def check_files(self) -> None:
        """Raise ModelFileError when the files the chosen signature needs are incomplete."""
        keys = [self.signature_key] if self.signature_key is not None else None
        problems = self.file_problems(keys)
        if problems:
            raise ModelFileError(
                f"The model at {self.local_dir} is incomplete: {' '.join(problems)}"
            )


# ------------------------------------------------------------------------ steps


def resolve(path: str) -> str:
    """The local SavedModel folder for `path`: a remote model is staged to local disk first
    (once per process), a TF Serving base folder resolves to its highest version.

    Raises:
      ModelFileError: no such folder, or no saved_model.pb/.pbtxt in it.
    """
    path = os.fspath(path)
    if "://" in path:
        # deferred: staging needs Beam's filesystems, which local models never load
        from beam_v1.io import staging

        path = staging.local_model_dir(path)
    return metadata.resolve_model_dir(path)


def check_ops(
    meta_graph: meta_graph_pb2.MetaGraphDef, options: LoadOptions
) -> dict[str, tuple[list[str], str]]:
    """Ops this TensorFlow cannot run (after `options.rewrites`): op -> (nodes, reason)."""
    return rewrites.missing_ops(meta_graph.graph_def, rewrites=options.rewrites)


def apply_rewrites(
    meta_graph: meta_graph_pb2.MetaGraphDef, options: LoadOptions
) -> tuple[meta_graph_pb2.MetaGraphDef, dict[str, list[str]]]:
    """The MetaGraph with lost ops replaced (unchanged with `rewrites=False`), and what was."""
    if not options.rewrites:
        return meta_graph, {}
    return rewrites.rewrite_meta_graph(meta_graph)


def prepare(
    path: str,
    tags: Sequence[str] | str | None = None,
    signature: str | None = None,
    options: LoadOptions | Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
) -> PreparedModel:
    """Resolve, parse, select, check ops, rewrite, audit and check the files of a SavedModel.

    Args:
      path: SavedModel folder (local, `file://` or any filesystem Beam knows), or a TF Serving
        base folder of numbered versions.
      tags: tag set (a list or "a,b"); default: the model's only tag set, else `serve`.
      signature: signature key; default `serving_default`, else the only one.
      options: LoadOptions (or a mapping of them).
      strict: raise on missing ops, audit findings and incomplete files (the default), or
        record missing ops and findings and leave the file checks to the caller (`inspect`).

    Raises:
      ModelFileError, TagsNotFoundError, SignatureNotFoundError, MissingOpsError,
      UnsafeModelError (strict only, unless `options.allow_unsafe_ops`).
    """
    options = LoadOptions.of(options)
    # before the op check: custom ops must be registered to count as runnable
    kernels.register_extra_ops(options.op_libraries, options.import_modules)
    local_dir = resolve(path)
    stat = os.stat(metadata.saved_model_file(local_dir) or local_dir)
    graph = _graph(
        local_dir,
        None if tags is None else tuple(metadata.parse_tags(tags)),
        (options.rewrites, options.op_libraries, options.import_modules),
        (stat.st_mtime_ns, stat.st_size),
    )
    try:
        key: str | None = metadata.default_signature_key(graph.meta_graph, signature)
    except SignatureNotFoundError:
        if strict or signature is not None:
            raise
        key = None
    if strict and graph.missing_ops:
        raise kernels.missing_ops_error(local_dir, dict(graph.missing_ops))
    if strict and graph.findings and not options.allow_unsafe_ops:
        raise audit.unsafe_error(local_dir, list(graph.findings))
    prepared = dataclasses.replace(
        graph, source=os.fspath(path), signature_key=key, options=options, strict=strict
    )
    if strict:
        prepared.check_files()
    return prepared


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _graph(
    local_dir: str,
    tags: tuple[str, ...] | None,
    ops_key: tuple[bool, tuple[str, ...], tuple[str, ...]],
    stamp: tuple[int, int],  # saved_model.pb's (mtime_ns, size): a changed file is a new key
) -> PreparedModel:
    """The parse, select, ops, rewrites and audit steps, recorded (prepare enforces them).

    Cached: one parse per model, tag set and op-related options (`ops_key`: rewrites, op
    libraries, modules) in a process; the signature and the rest of the options only pick
    and enforce, so every signature of a model shares one parse, one rewrite and one audit.
    """
    options = LoadOptions(rewrites=ops_key[0], op_libraries=ops_key[1], import_modules=ops_key[2])
    saved_model = metadata.read_saved_model(local_dir)
    meta_graph = metadata.select_meta_graph(saved_model, tags)
    if len(saved_model.meta_graphs) > 1:  # keep only the chosen MetaGraph alive in the cache
        chosen = meta_graph_pb2.MetaGraphDef()
        chosen.CopyFrom(meta_graph)
        meta_graph = chosen
    missing = check_ops(meta_graph, options)
    meta_graph, rewritten = apply_rewrites(meta_graph, options)
    # the rewritten graph: what a session will import; nothing of the model has run yet
    findings = audit.audit(meta_graph, local_dir)
    return PreparedModel(
        source=local_dir,
        local_dir=local_dir,
        meta_graph=meta_graph,
        tags=tuple(meta_graph.meta_info_def.tags),
        tag_sets=tuple(metadata.tag_sets(saved_model)),
        signatures=metadata.signatures(meta_graph),
        signature_key=None,
        rewritten=rewritten,
        options=options,
        strict=False,
        missing_ops=missing,
        findings=tuple(findings),
    )


def clear_cache() -> None:
    """Forget every prepared model of this process."""
    _graph.cache_clear()
