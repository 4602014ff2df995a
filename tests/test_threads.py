"""The thread budget per process (beam_v1.model.threads): the pure rule over generated cases,
how the process count is found (environment, pipeline options, a real dask cluster, cgroup
files), and a real `multi_processing` x2 DirectRunner run whose sessions got cores // 2
threads each unless the thread options say otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import apache_beam as beam
import clusters
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from scoring_helpers import MULTI_PROCESSING, mlp_tables

import beam_v1
from beam_v1.model import threads
from beam_v1.model.options import LoadOptions
from beam_v1.scoring import dofn
from beam_v1.scoring.options import ScoringOptions
from beam_v1.scoring.transforms import RunV1Inference

EXAMPLES = int(os.environ.get("BEAM_V1_FUZZ_EXAMPLES", "50"))


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    cores=st.integers(1, 512),
    processes=st.integers(1, 600),
    intra=st.integers(0, 64),
    inter=st.integers(0, 64),
)
def test_budget_splits_the_cores_and_explicit_threads_win(cores, processes, intra, inter):
    budget = threads.thread_budget(cores, processes, intra, inter)
    share = max(1, cores // processes) if processes > 1 else 0
    assert budget.intra_op_threads == (intra or share)
    assert budget.inter_op_threads == (inter or share)
    if processes > 1 and not intra:  # the processes together never ask for more than cores
        assert budget.intra_op_threads * processes <= max(cores, processes)


def test_budget_cases():
    assert threads.thread_budget(2, 1).intra_op_threads == 0  # one process: TF's default
    b = threads.thread_budget(8, 2)
    assert (b.intra_op_threads, b.inter_op_threads) == (4, 4)
    b = threads.thread_budget(8, 3, intra_op_threads=6)
    assert (b.intra_op_threads, b.inter_op_threads) == (6, 2)
    assert threads.thread_budget(2, 16).intra_op_threads == 1
    with pytest.raises(ValueError):
        threads.thread_budget(0, 1)


def test_processes_from_options():
    def of(*args):
        return threads.processes_from_options(PipelineOptions(list(args)))

    assert of() is None
    assert of("--direct_num_workers=2") is None  # in_memory: one process
    assert of("--direct_running_mode=multi_threading", "--direct_num_workers=4") is None
    assert of(*MULTI_PROCESSING) == 2
    assert of("--direct_running_mode=multi_processing", "--direct_num_workers=0") == (
        threads.available_cores()
    )
    assert of("--sdk_worker_parallelism=4") == 4
    assert of("--sdk_worker_parallelism=1") is None
    assert threads.processes_from_options(None) is None


def test_environment_overrides_options(monkeypatch):
    monkeypatch.delenv(threads.ENV_PROCESSES, raising=False)
    assert threads.processes_per_machine(None) == (1, "default")  # not on a dask worker
    assert threads.processes_per_machine(3) == (3, "options")
    monkeypatch.setenv(threads.ENV_PROCESSES, "5")
    assert threads.processes_per_machine(3) == (5, "env")
    monkeypatch.setenv(threads.ENV_PROCESSES, "zero")
    with pytest.raises(ValueError, match=threads.ENV_PROCESSES):
        threads.processes_per_machine(3)


def test_outside_dask_the_budget_does_not_import_dask():
    """A process that never imported `distributed` is no dask worker: asking must not import
    it (a quarter of a second of every DoFn setup)."""
    code = (
        "import sys\n"
        "from beam_v1.model import threads\n"
        "budget = threads.budget_for_worker(None)\n"
        "print(budget.source, 'distributed' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != threads.ENV_PROCESSES}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    assert out.stdout.split() == ["default", "False"], out.stderr


def test_cores_follow_affinity_and_cgroup_quota(tmp_path):
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_quota(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_quota(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_quota(str(v1)) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpu_quota(str(v1)) is None


def test_session_gets_the_budget(built_models, monkeypatch):
    """The budget reaches the session's ConfigProto; model_copies splits by copies."""
    monkeypatch.setenv(threads.ENV_PROCESSES, "2")
    config = dofn.ScoringConfig(model=built_models["mlp"], load=LoadOptions(inter_op_threads=3))
    options, budget = dofn.budgeted_load_options(config)
    share = max(1, threads.available_cores() // 2)
    assert (budget.intra_op_threads, budget.inter_op_threads) == (share, 3)
    with beam_v1.load(config.model, **options) as model:
        proto = model.options.session_config()
    assert proto.intra_op_parallelism_threads == share
    assert proto.inter_op_parallelism_threads == 3
    copies = dofn.budgeted_load_options(
        dofn.ScoringConfig(model="m", scoring=ScoringOptions(model_copies=1))
    )[1]
    assert copies.processes == 1 and copies.intra_op_threads == 0


def _thread_metrics(result, step: str) -> dict[str, tuple[int, int, int]]:
    found = {}
    query = result.metrics().query(MetricsFilter().with_namespace("beam_v1").with_step(step))
    for d in query["distributions"]:
        name = d.key.metric.name
        if name.startswith("session_"):
            v = d.committed or d.attempted
            found[name] = (v.count, v.min, v.max)
    return found


@pytest.mark.slow  # two worker processes that import TensorFlow
def test_multi_processing_sessions_get_their_share(built_models, monkeypatch):
    monkeypatch.delenv(threads.ENV_PROCESSES, raising=False)
    path = built_models["mlp"]
    tables = mlp_tables([40] * 8, seed=2)
    pipeline = beam.Pipeline(options=PipelineOptions(MULTI_PROCESSING))
    created = pipeline | beam.Create(tables)
    default = created | "Default" >> RunV1Inference(path, batch_size=64)
    override = created | "Override" >> RunV1Inference(path, batch_size=64, intra_op_threads=3)
    counted = []
    for name, out in (("Default", default), ("Override", override)):
        counted.append(
            out.scored
            | f"Rows{name}" >> beam.Map(lambda t: t.num_rows)
            | f"Sum{name}" >> beam.CombineGlobally(sum)
        )
    result = pipeline.run()
    result.wait_until_finish()
    share = max(1, threads.available_cores() // 2)
    got = _thread_metrics(result, "Default")
    loads = got["session_intra_op_threads"][0]
    assert 1 <= loads <= 2  # one load per worker process that ran the step
    assert got == {"session_intra_op_threads": (loads, share, share),
                   "session_inter_op_threads": (loads, share, share)}
    got = _thread_metrics(result, "Override")
    loads = got["session_intra_op_threads"][0]
    assert got == {"session_intra_op_threads": (loads, 3, 3),
                   "session_inter_op_threads": (loads, share, share)}
    rows = result.metrics().query(
        MetricsFilter().with_namespace("beam_v1").with_name("rows_scored"))["counters"]
    assert sum(c.committed or c.attempted for c in rows) == 2 * sum(t.num_rows for t in tables)


@pytest.mark.slow  # a real dask scheduler and 2 worker processes
def test_dask_worker_counts_the_processes_on_its_host(tmp_path):
    from dask.distributed import Client

    with clusters.dask_cluster(str(tmp_path), workers=2) as address:
        with Client(address) as client:
            budgets = [  # as a task on each worker, as a DoFn's setup runs there
                client.submit(threads.budget_for_worker, None, workers=[w], pure=False).result()
                for w in client.scheduler_info(n_workers=-1)["workers"]
            ]
    share = max(1, threads.available_cores() // 2)
    assert len(budgets) == 2
    assert all(b.processes == 2 and b.source == "dask" and b.intra_op_threads == share
               for b in budgets), budgets
