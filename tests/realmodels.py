"""Where the real TF1-era SavedModels are: `$BEAM_V1_REALMODELS`, else `../shared/realmodels`
beside the repository. Tests that need them skip, saying so, when the folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

REALMODELS = Path(
    os.environ.get("BEAM_V1_REALMODELS")
    or Path(__file__).resolve().parents[2] / "shared" / "realmodels"
)
