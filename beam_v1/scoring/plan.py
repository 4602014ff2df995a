"""`build_plan`: the one way a signature's FeedPlan is built for an input schema. No Beam here.

Every user of a plan (the checks before a run, RunV1Inference given a schema, each worker
per schema it sees, the TFRecord source) builds it here, in the same steps:
1. outputs whose rank the signature leaves unknown take the shapes given (learnt from rows)
   or "one value per row of any length" (`(-1,)`) until learnt;
2. a signature whose only input is serialized tf.Examples, with no column of serialized
   examples, is fed from feature columns: the plan sees one binary column standing for the
   examples (`example_spec_for_columns` says which spec; `beam_v1.scoring.example_feeds`
   builds the examples), and the feature columns count as fed: by default they are not kept;
3. `columns.make_plan` checks the schema against the signature.
`Checked` is what the checks before a run found (`preflight.check_source`): the plan and the
schemas every worker and writer use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import pyarrow as pa

from beam_v1.model import example_spec
from beam_v1.model.metadata import SignatureInfo
from beam_v1.model.prepared import PreparedModel
from beam_v1.scoring import columns
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.schema_drift import FileSchemas


def example_spec_for_columns(
    prepared: PreparedModel, signature: SignatureInfo, schema: pa.Schema, scoring: ScoringOptions
) -> example_spec.ExampleSpec | None:
    """The ExampleSpec of `signature` when it is fed from feature columns, else None.

    Raises:
      SchemaError: a required feature has no column (every row would fail).
    """
    return example_spec.example_input_without_column(
        prepared.meta_graph, signature.key, schema, scoring.column_map
    )


def build_plan(
    prepared: PreparedModel,
    signature: SignatureInfo,
    schema: pa.Schema,
    scoring: ScoringOptions,
    output_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    required_inputs: Sequence[str] | None = None,
) -> columns.FeedPlan:
    """The FeedPlan of `signature` for batches of `schema` (see the module docstring).

    Args:
      prepared: the model (its graph tells the tf.Example spec).
      signature: the signature fed.
      schema: the input batches' Arrow schema.
      scoring: outputs, keep columns, column map and given output shapes.
      output_shapes: shapes learnt for unknown-rank outputs (override `scoring`'s).
      required_inputs: inputs that need a column (None: every input of the signature).

    Raises:
      SchemaError: the schema cannot feed the signature, naming what is missing or wrong.
    """
    shapes = {**scoring.output_shapes, **(output_shapes or {})}
    for key in columns.unknown_rank_outputs(signature, scoring.outputs):
        shapes.setdefault(key, (-1,))
    spec = example_spec_for_columns(prepared, signature, schema, scoring)
    keep = scoring.keep_columns
    if spec is not None and keep is None:  # feature columns are fed, so not kept by default
        keep = tuple(name for name in schema.names if name not in spec.features)
    return columns.make_plan(
        signature,
        schema.append(pa.field(spec.input_key, pa.binary())) if spec else schema,
        required_inputs=list(signature.inputs) if required_inputs is None else required_inputs,
        column_map=scoring.column_map,
        outputs=scoring.outputs,
        keep_columns=keep,
        output_shapes=shapes,
    )


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
    scoring: ScoringOptions | None = None  # as the source adapted them, shapes learnt
