"""What every beam-v1 pipeline shares: the runner for the DirectRunner, the final-state
check, and display data.

A leaf: imports nothing of beam_v1 but errors, and Beam only inside `direct_runner_for`
(callers pass Beam's objects).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from beam_v1.errors import BeamV1Error

# UNKNOWN: runners that do not report a state once finished (a failure raised instead)
FINISHED_STATES = ("DONE", "UNKNOWN")


# what `--runner` may say for Beam's DirectRunner (Beam matches runner names case-blind, with
# or without the "Runner" suffix); None is Beam's default, the DirectRunner
DIRECT_RUNNER_NAMES = (
    "directrunner", "direct", "switchingdirectrunner",
    "apache_beam.runners.direct.direct_runner.directrunner",
    "apache_beam.runners.direct.direct_runner.switchingdirectrunner",
)


def direct_runner_for(options: Any) -> Any | None:
    """For pipeline `options` (PipelineOptions) naming the DirectRunner or no runner: Beam's
    FnApiRunner, made as the DirectRunner makes it (the options in its provision info, which
    `multi_processing` workers read); else None, and Beam makes the runner the options name.

    Beam 2.77's DirectRunner first tries the PrismRunner: it starts a worker pool, downloads
    Prism's binary from GitHub if it can, and runs the pipeline there; only when that fails
    does it run the FnApiRunner, with the options above. beam-v1 runs and is tested on the
    FnApiRunner (`--direct_running_mode` in_memory, multi_threading, multi_processing), so it
    goes there at once: no download and no start-up cost of the attempt, the same runner on
    every machine. `--runner PrismRunner` still runs Prism, and `--streaming` is left to
    the DirectRunner.
    """
    # deferred: Beam start-up, for the launcher of a pipeline only
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    standard = options.view_as(StandardOptions)
    runner = standard.runner
    if standard.streaming or (runner is not None and not (
        isinstance(runner, str) and runner.lower() in DIRECT_RUNNER_NAMES
    )):
        return None  # streaming: the DirectRunner picks a runner that supports it
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(
        provision_info=fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
        )
    )


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
