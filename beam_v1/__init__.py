"""beam-v1: run TensorFlow 1.x SavedModels at scale in Apache Beam, over Parquet.

Public API (imported lazily, so `import beam_v1` does not pull in TensorFlow or Beam):
`inspect`, `load`, `V1Model`, `ModelInfo`, `RunV1Inference`, `Score` with its sources
`ParquetSource` and `TFRecordSource`, `ScoreParquet`, `ScoreTFRecord`, the options
`LoadOptions`, `ScoringOptions` and `OutputOptions`, `ReadParquetRowGroups`, `V1ModelHandler`,
`DumpVariables`, `WriteVariables`,
`read_variables`, `read_checkpoint`, `list_variables`, `assign_variables`, and the error types
in `beam_v1.errors`. The Keras 3 layer is `beam_v1.keras.V1Layer`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any

try:  # the one version is pyproject.toml's, as installed
    __version__ = importlib.metadata.version("beam-v1")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "inspect": "beam_v1.model.inspect",
    "ModelInfo": "beam_v1.model.inspect",
    "load": "beam_v1.model.session",
    "V1Model": "beam_v1.model.session",
    "RunV1Inference": "beam_v1.scoring.transforms",
    "ScoreParquet": "beam_v1.scoring.transforms",
    "ReadParquetRowGroups": "beam_v1.io.parquet_read",
    "V1ModelHandler": "beam_v1.interop.handler",
    "assign_variables": "beam_v1.interop.weights",
    "AssignReport": "beam_v1.interop.weights",
    "AssignError": "beam_v1.interop.weights",
    "ShapeMismatchError": "beam_v1.interop.weights",
    "ScoreTFRecord": "beam_v1.scoring.transforms",
    "Score": "beam_v1.scoring.transforms",
    "ParquetSource": "beam_v1.scoring.sources",
    "TFRecordSource": "beam_v1.scoring.sources",
    "LoadOptions": "beam_v1.model.options",
    "ScoringOptions": "beam_v1.scoring.options",
    "OutputOptions": "beam_v1.scoring.options",
    "DumpVariables": "beam_v1.variables.dump",
    "WriteVariables": "beam_v1.variables.dump",
    "read_variables": "beam_v1.variables.read",
    "read_checkpoint": "beam_v1.variables.checkpoint",
    "list_variables": "beam_v1.variables.checkpoint",
    "BeamV1Error": "beam_v1.errors",
    "UnsafeModelError": "beam_v1.errors",
    "FeedError": "beam_v1.errors",
    "MissingOpsError": "beam_v1.errors",
    "ModelFileError": "beam_v1.errors",
    "SchemaError": "beam_v1.errors",
    "SignatureNotFoundError": "beam_v1.errors",
    "TagsNotFoundError": "beam_v1.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'beam_v1' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
