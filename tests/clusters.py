"""Real clusters on 127.0.0.1 for tests: a dask.distributed scheduler with worker processes,
and Beam's external SDK worker pool (the portable path). Each is started in its own process
group, waited for with a bound, and always stopped by that group (os.killpg)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_SECONDS = 90  # TensorFlow-free start-up takes a few seconds; a loaded machine more


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env() -> dict[str, str]:
    """This process's environment, with this source tree (and the tests, whose DoFns are
    pickled by reference) first on the workers' path."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    paths = (ROOT, os.path.join(ROOT, "tests"), env.get("PYTHONPATH"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _start(args: list[str], log_path: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, *args], env=worker_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
        )


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children (workers, SDK harnesses) may not be
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _tail(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-3000:]


@contextlib.contextmanager
def dask_cluster(log_dir: str, workers: int = 2) -> Iterator[str]:
    """A scheduler and `workers` single-thread worker processes; yields the address."""
    from dask.distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_log = os.path.join(log_dir, "dask-scheduler.log")
    worker_log = os.path.join(log_dir, "dask-worker.log")
    processes = [
        _start(["-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                "--port", str(port), "--no-dashboard"], scheduler_log)
    ]
    try:
        processes.append(
            _start(["-m", "distributed.cli.dask_worker", address, "--nworkers", str(workers),
                    "--nthreads", "1", "--no-dashboard"], worker_log)
        )
        try:
            with Client(address, timeout=START_SECONDS) as client:
                client.wait_for_workers(workers, timeout=START_SECONDS)
        except Exception as e:
            raise RuntimeError(
                f"dask cluster at {address} did not get {workers} workers in {START_SECONDS} s: "
                f"{e}\n{_tail(scheduler_log)}\n{_tail(worker_log)}"
            ) from e
        yield address
    finally:
        for process in reversed(processes):
            _stop(process)


@contextlib.contextmanager
def worker_pool(log_dir: str) -> Iterator[int]:
    """Beam's external SDK worker pool (`worker_pool_main`); yields its port."""
    port = free_port()
    log = os.path.join(log_dir, "worker-pool.log")
    process = _start(
        ["-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"], log
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the worker pool exited ({process.returncode}):\n{_tail(log)}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no worker pool on port {port} after {START_SECONDS} s")
            time.sleep(0.2)
        yield port
    finally:
        _stop(process)


def portable_args(port: int) -> list[str]:
    return ["--runner", "PortableRunner", "--job_endpoint", "embed",
            "--environment_type", "EXTERNAL", "--environment_config", f"localhost:{port}"]


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m beam_v1 ARGS` with this tree first on the path; bounded."""
    return subprocess.run(
        [sys.executable, "-m", "beam_v1", *args], env=worker_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=timeout,
    )
