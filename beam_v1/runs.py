"""What every beam-v1 pipeline shares: the final-state check, and display data.

A leaf: imports no Beam (callers pass Beam's objects) and nothing of beam_v1 but errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beam_v1.errors import BeamV1Error

# UNKNOWN: runners that do not report a state once finished (a failure raised instead)
FINISHED_STATES = ("DONE", "UNKNOWN")


def check_finished(state: Any, job: str = "The pipeline") -> None:
    """Raise BeamV1Error unless `state` (a PipelineState) says the pipeline finished.

    Some runners raise from `wait_until_finish` when a job fails; others (and a cancelled
    or drained job) return FAILED, CANCELLED, STOPPED... which must not read as success.
    """
    name = str(state).upper().split(".")[-1]
    if name not in FINISHED_STATES:
        raise BeamV1Error(f"{job} ended in state {name}, not DONE: its outputs are incomplete.")


def run_to_end(pipeline: Any, job: str = "The pipeline") -> Any:
    """Run `pipeline`, wait for it and check its final state; returns the PipelineResult."""
    result = pipeline.run()
    check_finished(result.wait_until_finish(), job)
    return result


def display_items(**values: Any) -> dict[str, Any]:
    """A transform's `display_data()`: None and empty collections dropped, sequences and
    mappings as short text.

    Beam shows these items in the runner's UI (Dataflow's step panel) and in
    `DisplayData.create_from(transform)`.
    """
    items: dict[str, Any] = {}
    for key, value in values.items():
        if value is None or (isinstance(value, (Mapping, list, tuple, set, frozenset))
                             and not value):
            continue
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (list, tuple, set, frozenset)):
            value = ", ".join(str(v) for v in value)
        items[key] = value
    return items
