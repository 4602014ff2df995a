"""Checks before any worker starts (SPEC §5): model, tags, signature, outputs, input schema."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from beam_v1.errors import SchemaError
from beam_v1.model.metadata import SignatureInfo
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import PreparedModel, prepare
from beam_v1.scoring import columns, sources
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.plan import Checked, build_plan
from beam_v1.scoring.schema_drift import FileSchemas

if TYPE_CHECKING:  # the session module starts TensorFlow; the checks load it only to probe
    from beam_v1.model.session import V1Model

_log = logging.getLogger(__name__)


def check_model(
    model: str,
    tags: Sequence[str] | None,
    signature: str | None,
    load_options: LoadOptions | Mapping[str, Any] | None = None,
) -> PreparedModel:
    """The model prepared and checked (path, tags, signature, ops, audit, files), as every
    worker will load it; see `beam_v1.model.prepared.prepare`."""
    return prepare(model, tags, signature, LoadOptions.of(load_options))


def check_scoring(
    model: str,
    input_pattern: str,
    *,
    tags: Sequence[str] | None = None,
    signature: str | None = None,
    scoring: ScoringOptions | None = None,
    load: LoadOptions | None = None,
) -> Checked:
    """`check_source` for Parquet files matching `input_pattern`."""
    return check_source(
        model, sources.ParquetSource(input_pattern), tags=tags, signature=signature,
        scoring=scoring, load=load,
    )


def check_source(
    model: str,
    source: sources.ArrowSource,
    *,
    tags: Sequence[str] | None = None,
    signature: str | None = None,
    scoring: ScoringOptions | None = None,
    load: LoadOptions | None = None,
) -> Checked:
    """Run every check that needs no worker; raise a BeamV1Error naming what is available.

    The model is prepared once; the source gives its files, its tables' schema (for Parquet
    the first file's) and the first rows for outputs of unknown rank; the plan is built from
    them (`build_plan`), and then the source checks the whole input (`strict_schema`).
    """
    prepared = check_model(model, tags, signature, load)
    sig = prepared.signature()
    files = source.files()
    schema, scoring = source.input_schema(prepared, sig, files, scoring or ScoringOptions())
    output_shapes: dict[str, tuple[int, ...]] = {}
    unknown = [
        k for k in columns.unknown_rank_outputs(sig, scoring.outputs)
        if k not in scoring.output_shapes
    ]
    sample = source.sample(files) if unknown else None
    if sample is not None:
        output_shapes = probe_output_shapes(prepared, (files[0], sample), schema, scoring, unknown)
    plan = build_plan(prepared, sig, schema, scoring, output_shapes)
    failed = columns.failed_schema(schema)
    checked = Checked(
        model_dir=prepared.local_dir,
        signature=sig,
        plan=plan,
        input_schema=schema,
        output_schema=plan.output_schema(schema),
        failed_schema=failed,
        input_files=files,
        output_shapes=output_shapes,
        file_schemas=FileSchemas.from_plan(schema, failed, plan),
        scoring=scoring.replace(output_shapes={**scoring.output_shapes, **output_shapes}),
    )
    source.check(checked)
    return checked


def probe_output_shapes(
    prepared: PreparedModel,
    first_rows: tuple[str, pa.Table],
    schema: pa.Schema,
    scoring: ScoringOptions,
    keys: Sequence[str],
) -> dict[str, tuple[int, ...]]:
    """Outputs of unknown rank: run the model on the first rows (of the file named) to learn
    each one's shape."""
    from beam_v1.model.session import V1Model  # deferred: starts TensorFlow

    first_file, sample = first_rows
    if sample.num_rows == 0:
        raise SchemaError(
            f"Outputs {list(keys)} have unknown rank and {first_file} has no rows "
            "to learn their shapes from."
        )
    model = V1Model(prepared)
    try:
        sig = model.signature(prepared.signature_key)
        shapes, why = learn_output_shapes(model, sig, schema, sample, scoring, keys)
        if shapes is None:
            raise SchemaError(
                f"Outputs {list(keys)} have unknown rank and none of the first rows of "
                f"{first_file} can be scored to learn their shapes: {why}"
            )
        _log.info("Learnt shapes of unknown-rank outputs from %s: %s", first_file, shapes)
        return shapes
    finally:
        model.close()


def learn_output_shapes(
    model: V1Model,
    sig: SignatureInfo,
    schema: pa.Schema,
    sample: pa.Table,
    scoring: ScoringOptions,
    keys: Sequence[str],
    probe_rows: int = 8,
):
    """Run the model on a few feedable rows of `sample` to learn the rank of outputs `keys`.

    Returns (shapes, None), or (None, why) when no tried row could be fed and scored.
    Used before a run (first rows of the first file) and by workers (first batch of a schema).
    """
    from beam_v1.scoring import example_feeds  # a tf.Example signature fed from feature columns
    from beam_v1.scoring.scorer import BatchScorer, ModelRunError

    ex = example_feeds.scorer_for_columns(
        model, sig.key, schema, scoring.column_map, "serialize", keys
    )
    if ex is not None:
        return example_feeds.learn_output_shapes(ex, sample, probe_rows)
    # plan with every output's rank taken as "one value per row" to get feeds
    plan = build_plan(
        model.prepared, sig, schema, scoring, {k: (-1,) for k in keys},
        required_inputs=model.required_inputs(sig.key),
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
                fetched = scorer.run({k: v[start:stop] for k, v in group.items()}, stop - start)
            except ModelRunError as e:
                why = f"the model failed on them: {e}"
                continue
            # fetched arrays have a leading row dim; the rest is learnt, each dim left variable
            batch_dim = () if plan.row_by_row else (-1,)
            return {k: batch_dim + (-1,) * (fetched[k].ndim - 1) for k in keys}, None
    return None, why
