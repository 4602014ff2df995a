"""Checks before any worker starts (SPEC §5): model, tags, signature, outputs, input schema."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beam_v1.errors import BeamV1Error, SchemaError
from beam_v1.io.parquet_read import reading_parquet
from beam_v1.model.metadata import SignatureInfo
from beam_v1.model.options import LoadOptions
from beam_v1.model.prepared import PreparedModel, prepare
from beam_v1.schema_drift import FileSchemas
from beam_v1.scoring import columns
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.plan import build_plan

if TYPE_CHECKING:  # the session module starts TensorFlow; the checks load it only to probe
    from beam_v1.model.session import V1Model

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Checked:
    """What the checks found: the plan every worker will use, and the schemas to write."""

    model_dir: str  # local (staged) copy of the model
    signature: SignatureInfo
    plan: columns.FeedPlan
    input_schema: pa.Schema
    output_schema: pa.Schema
    failed_schema: pa.Schema
    input_files: list[str]
    output_shapes: dict[str, tuple[int, ...]]
    file_schemas: FileSchemas | None = None  # how later files are judged against the first


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
    """Run every check that needs no worker; raise a BeamV1Error naming what is available.

    The input's schema is the first file's; `check_every_file` holds the others to it.
    """
    scoring = scoring or ScoringOptions()
    prepared = check_model(model, tags, signature, load)
    local, sig = prepared.local_dir, prepared.signature()
    files = match_files(input_pattern)
    schema = read_schema(files[0])
    output_shapes: dict[str, tuple[int, ...]] = {}
    unknown = [
        k for k in columns.unknown_rank_outputs(sig, scoring.outputs)
        if k not in scoring.output_shapes
    ]
    if unknown:
        output_shapes = probe_output_shapes(prepared, files[0], schema, scoring, unknown)
    plan = build_plan(prepared, sig, schema, scoring, output_shapes)
    failed = columns.failed_schema(schema)
    return Checked(
        model_dir=local,
        signature=sig,
        plan=plan,
        input_schema=schema,
        output_schema=plan.output_schema(schema),
        failed_schema=failed,
        input_files=files,
        output_shapes=output_shapes,
        file_schemas=FileSchemas.from_plan(schema, failed, plan),
    )


def check_every_file(files: Sequence[str], file_schemas: FileSchemas, threads: int = 16) -> None:
    """Read the footer of each of `files` (the first is the run's schema); raise a SchemaError
    naming every file whose schema does not cast to the first file's, and why."""
    with concurrent.futures.ThreadPoolExecutor(min(threads, max(len(files) - 1, 1))) as pool:
        schemas = list(pool.map(read_schema, files[1:]))
    offending = [
        (path, found)
        for path, found in ((p, file_schemas.problems(s)) for p, s in zip(files[1:], schemas))
        if found
    ]
    if offending:
        described = "; ".join(f"{path}: {', '.join(found)}" for path, found in offending)
        raise SchemaError(
            f"--strict-schema: {len(offending)} of {len(files)} input files do not fit the "
            f"first input file's schema ({files[0]}: {_describe(file_schemas.schema)}). "
            f"{described}. Without --strict-schema (API: strict_schema=False) the rows of "
            "such files go to the dead letter with this reason and the other files are scored."
        )


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name} {f.type}" for f in schema)


def probe_output_shapes(
    prepared: PreparedModel, first_file: str, schema: pa.Schema, scoring: ScoringOptions, keys
) -> dict[str, tuple[int, ...]]:
    """Outputs of unknown rank: run the model on the first rows to learn each one's shape."""
    from beam_v1.model.session import V1Model

    model = V1Model(prepared)
    sig = model.signature(prepared.signature_key)
    try:
        with reading_parquet(first_file) as parquet:
            sample = next(parquet.iter_batches(batch_size=8), None)
        if sample is None or sample.num_rows == 0:
            raise SchemaError(
                f"Outputs {keys} have unknown rank and {first_file} has no rows "
                "to learn their shapes from."
            )
        shapes, why = learn_output_shapes(
            model, sig, schema, pa.Table.from_batches([sample]), scoring, keys
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
