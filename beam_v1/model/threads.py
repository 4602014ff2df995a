"""A thread budget per process: how many TensorFlow threads one session may use.

TensorFlow sizes a session's intra-op and inter-op pools to every core of the machine.
When several SDK worker processes share a machine, each would do so, and N processes
oversubscribe the cores N-fold. The budget gives each session `max(1, cores // processes)`
threads for both pools; explicit `intra_op_threads` / `inter_op_threads` (non-zero) win.
With one process on the machine nothing changes (0: TensorFlow's own default).

How the numbers are found:
- cores (`available_cores`): `os.sched_getaffinity(0)` (the CPUs this process may run on,
  so `taskset` and container cpusets count), lowered to the cgroup CPU quota when one is
  set (`cpu.max` of cgroup v2, `cpu.cfs_quota_us / cpu.cfs_period_us` of v1), rounded up.
- processes on this machine (`processes_per_machine`), first found wins:
  1. the environment variable BEAM_V1_PROCESSES_PER_MACHINE (on the workers);
  2. what the pipeline options say when the launcher knows it (`processes_from_options`,
     read when the transform is applied and carried to the workers in the scoring config):
     DirectRunner `--direct_running_mode multi_processing` -> `--direct_num_workers` (0: one
     per core, as Beam does); `--sdk_worker_parallelism` when set above 1 (the portable
     runners: Flink, Spark; Dataflow Runner v2 when given);
  3. on a dask.distributed worker (`dask_processes_on_host`, at worker setup): the number of
     worker processes the scheduler knows on this worker's host;
  4. else 1. Dataflow starts one SDK process per vCPU by default without saying so in the
     options: there, set BEAM_V1_PROCESSES_PER_MACHINE (or the thread flags) yourself.
Threads of one process share one session, so only processes count, not threads.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from typing import Any

ENV_PROCESSES = "BEAM_V1_PROCESSES_PER_MACHINE"

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ThreadBudget:
    """The thread settings one session gets, and what they were derived from."""

    intra_op_threads: int
    inter_op_threads: int
    cores: int
    processes: int
    source: str  # where `processes` came from: env, options, dask, default


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by the cgroup quota (v2 `cpu.max`, else v1 cfs), None if unlimited."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def processes_from_options(options: Any) -> int | None:
    """SDK processes per machine as the pipeline options state it, or None if they do not.

    `options` is a `PipelineOptions` (or None)."""
    if options is None:
        return None
    # deferred: Beam start-up
    from apache_beam.options.pipeline_options import DirectOptions, PortableOptions

    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing":
        workers = int(direct.direct_num_workers or 0)
        return workers if workers > 0 else available_cores()
    parallelism = options.view_as(PortableOptions).sdk_worker_parallelism
    try:
        parallelism = int(parallelism)
    except (TypeError, ValueError):
        return None
    return parallelism if parallelism > 1 else None


def dask_processes_on_host() -> int | None:
    """On a dask.distributed worker: its host's worker processes, per the scheduler; else None.

    A dask worker process runs `distributed`, so where it is not imported yet this is no dask
    worker, and it is not imported to find that out.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except ValueError:  # not running inside a dask worker
        return None
    try:
        workers = distributed.get_client().scheduler_info(n_workers=-1)["workers"]
    except Exception as e:  # noqa: BLE001 - the budget is advice; a failed query is not fatal
        _log.warning("beam-v1: could not ask the dask scheduler for its workers: %s", e)
        return None
    host = workers.get(worker.address, {}).get("host") or worker.address.split("://")[-1]
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return max(1, sum(1 for info in workers.values() if info.get("host") == host))


def processes_per_machine(configured: int | None = None) -> tuple[int, str]:
    """(processes sharing this machine, where the number came from); see the module doc."""
    env = os.environ.get(ENV_PROCESSES, "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"{ENV_PROCESSES} must be a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"{ENV_PROCESSES} must be a positive integer, got {env!r}")
        return value, "env"
    if configured:
        return configured, "options"
    found = dask_processes_on_host()
    if found:
        return found, "dask"
    return 1, "default"


def thread_budget(
    cores: int, processes: int, intra_op_threads: int = 0, inter_op_threads: int = 0,
    source: str = "",
) -> ThreadBudget:
    """The session thread settings for one of `processes` processes on `cores` cores.

    Non-zero `intra_op_threads` / `inter_op_threads` are kept; zeros become
    `max(1, cores // processes)` when processes > 1 and stay 0 (TensorFlow's default)
    for a single process."""
    if cores < 1 or processes < 1:
        raise ValueError(f"cores and processes must be positive, got {cores} and {processes}")
    share = max(1, cores // processes) if processes > 1 else 0
    return ThreadBudget(
        intra_op_threads=intra_op_threads or share,
        inter_op_threads=inter_op_threads or share,
        cores=cores,
        processes=processes,
        source=source,
    )


def budget_for_worker(
    configured_processes: int | None, intra_op_threads: int = 0, inter_op_threads: int = 0,
    model_copies: int = 0,
) -> ThreadBudget:
    """The budget of this worker process (detects cores and processes now), logged at INFO.

    With `model_copies` > 0 the machine's processes share that many sessions, so the
    cores are split between the copies, not between the processes."""
    processes, source = processes_per_machine(configured_processes)
    if model_copies:
        processes = min(processes, model_copies)
    budget = thread_budget(
        available_cores(), processes, intra_op_threads, inter_op_threads, source=source
    )
    _log.info(
        "beam-v1 worker %d: session threads intra_op=%d inter_op=%d (0 = TensorFlow's "
        "default) for %d process(es) on %d core(s), process count from %s",
        os.getpid(), budget.intra_op_threads, budget.inter_op_threads, budget.processes,
        budget.cores, budget.source,
    )
    return budget
