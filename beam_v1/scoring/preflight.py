"""Checks before any worker starts (SPEC §5): model, tags, signature, outputs, input schema."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beam_v1.errors import BeamV1Error, ModelFileError, SchemaError
from beam_v1.io import staging
from beam_v1.io.parquet_read import reading_parquet
from beam_v1.model import kernels as ops
from beam_v1.model import metadata as savedmodel
from beam_v1.scoring import columns

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Checked:
    """What the checks found: the plan every worker will use, and the schemas to write."""

    model_dir: str  # local (staged) copy of the model
    signature: savedmodel.SignatureInfo
    plan: columns.FeedPlan
    input_schema: pa.Schema
    output_schema: pa.Schema
    failed_schema: pa.Schema
    input_files: list[str]
    output_shapes: dict[str, tuple[int, ...]]


def match_files(pattern: str) -> list[str]:
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # BeamIOError for a bad pattern or an unreachable filesystem
        raise BeamV1Error(f"Cannot list input files {pattern!r}: {e}") from e
    files = sorted(m.path for m in matched)
    if not files:
        raise BeamV1Error(f"No input file matches {pattern!r}.")
    return files


def read_schema(path: str) -> pa.Schema:
    try:
        with reading_parquet(path) as parquet:
            return parquet.schema_arrow
    except Exception as e:
        raise BeamV1Error(f"Cannot read the Parquet footer of {path}: {e}") from e


def check_model(
    model: str,
    tags: Sequence[str] | None,
    signature: str | None,
    load_options: Mapping,
) -> tuple[str, savedmodel.SignatureInfo, list[str]]:
    """Model path, tags, signature and ops; returns (local dir, signature, required inputs)."""
    ops.register_extra_ops(
        load_options.get("op_libraries", ()), load_options.get("import_modules", ())
    )
    local = savedmodel.resolve_model_dir(staging.local_model_dir(model))
    saved_model = savedmodel.read_saved_model(local)
    meta_graph = savedmodel.select_meta_graph(saved_model, tags)
    key = savedmodel.default_signature_key(meta_graph, signature)
    missing = ops.missing_ops(meta_graph.graph_def, rewrites=load_options.get("rewrites", True))
    if missing:
        raise ops.missing_ops_error(local, missing)
    from beam_v1.model import audit

    audit.check(meta_graph, local, bool(load_options.get("allow_unsafe_ops", False)))
    problems = audit.file_problems(local, meta_graph, [key])
    if problems:
        raise ModelFileError(f"The model at {local} is incomplete: {' '.join(problems)}")
    sig = savedmodel.signatures(meta_graph)[key]
    return local, sig, list(sig.inputs)


def check_scoring(
    model: str,
    input_pattern: str,
    *,
    tags: Sequence[str] | None = None,
    signature: str | None = None,
    outputs: Sequence[str] | None = None,
    keep_columns: Sequence[str] | None = None,
    column_map: Mapping[str, str] | None = None,
    load_options: Mapping | None = None,
) -> Checked:
    """Run every check that needs no worker; raise a BeamV1Error naming what is available."""
    load_options = dict(load_options or {})
    local, sig, required = check_model(model, tags, signature, load_options)
    files = match_files(input_pattern)
    schema = read_schema(files[0])
    plan_kwargs = dict(column_map=column_map, outputs=outputs, keep_columns=keep_columns)
    output_shapes: dict[str, tuple[int, ...]] = {}
    unknown = columns.unknown_rank_outputs(sig, outputs)
    if unknown:
        output_shapes = probe_output_shapes(
            local, tags, sig, files[0], schema, plan_kwargs, load_options, unknown
        )
    from beam_v1.model import examples  # tf.Example signature fed from feature columns

    spec = examples.example_input_without_column(
        savedmodel.select_meta_graph(savedmodel.read_saved_model(local), tags), sig.key, schema,
        column_map,
    )
    plan = columns.make_plan(
        sig, examples.plan_schema(schema, spec.input_key) if spec else schema,
        required_inputs=required, output_shapes=output_shapes, **plan_kwargs
    )
    return Checked(
        model_dir=local,
        signature=sig,
        plan=plan,
        input_schema=schema,
        output_schema=plan.output_schema(schema),
        failed_schema=columns.failed_schema(schema),
        input_files=files,
        output_shapes=output_shapes,
    )


def probe_output_shapes(local, tags, sig, first_file, schema, plan_kwargs, load_options, keys):
    """Outputs of unknown rank: run the model on the first rows to learn each one's shape."""
    from beam_v1.model.session import load

    model = load(local, tags=tags, signature=sig.key, **load_options)
    try:
        with reading_parquet(first_file) as parquet:
            sample = next(parquet.iter_batches(batch_size=8), None)
        if sample is None or sample.num_rows == 0:
            raise SchemaError(
                f"Outputs {keys} have unknown rank and {first_file} has no rows "
                "to learn their shapes from."
            )
        shapes, why = learn_output_shapes(
            model, sig, schema, pa.Table.from_batches([sample]), plan_kwargs, keys
        )
        if shapes is None:
            raise SchemaError(
                f"Outputs {keys} have unknown rank and none of the first rows of {first_file} "
                f"can be scored to learn their shapes: {why}"
            )
        _log.info("Learnt shapes of unknown-rank outputs from %s: %s", first_file, shapes)
        return shapes
    finally:
        model.close()


def learn_output_shapes(model, sig, schema, sample: pa.Table, plan_kwargs, keys, probe_rows=8):
    """Run the model on a few feedable rows of `sample` to learn the rank of outputs `keys`.

    Returns (shapes, None), or (None, why) when no tried row could be fed and scored.
    Used before a run (first rows of the first file) and by workers (first batch of a schema).
    """
    from beam_v1.scoring.scorer import BatchScorer, _RunFailed

    # plan with every output's rank taken as "one value per row" to get feeds
    guess = {k: (-1,) for k in keys}
    plan = columns.make_plan(
        sig,
        schema,
        required_inputs=model.required_inputs(sig.key),
        output_shapes=guess,
        **plan_kwargs,
    )
    feeds = columns.to_feeds(sample, plan)
    if not feeds.groups:
        return None, str(feeds.bad_reasons[:3])
    scorer = BatchScorer(model, plan, schema)
    why = ""
    for rows, group in feeds.groups:
        n = min(probe_rows, len(rows))
        tries = [(0, n)] + ([(i, i + 1) for i in range(n)] if n > 1 else [])
        for start, stop in tries:
            try:
                fetched = scorer._run({k: v[start:stop] for k, v in group.items()}, stop - start)
            except _RunFailed as e:
                why = f"the model failed on them: {e}"
                continue
            # fetched arrays have a leading row dim; the rest is learnt, each dim left variable
            batch_dim = () if plan.row_by_row else (-1,)
            return {k: batch_dim + (-1,) * (fetched[k].ndim - 1) for k in keys}, None
    return None, why
