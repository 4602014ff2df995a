"""Keep TensorFlow's and Beam's start-up lines off the command line's stderr.

TensorFlow 2.21 writes absl lines while its libraries load and on first device use ("All log
messages before absl::InitializeLog()", oneDNN and CUDA probing, "failed call to cuInit" on a
CPU machine) whatever TF_CPP_MIN_LOG_LEVEL says, and from every worker process. Such lines
are dropped at the file descriptor: while `filtered_stderr()` is open, fd 2 is a pipe whose
lines a thread copies to the real stderr, minus the lines `is_startup_line` matches. Child
processes inherit fd 2, so the workers' lines pass the same filter. Every other line (our
messages, errors, tracebacks, TensorFlow's own warnings) is copied unchanged and in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

_ABSL = r"[IWE]\d{4} [\d:.]+\s+\d+ "  # absl's prefix: level, date, time, thread
STARTUP_LINE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    + rb"|"
    + _ABSL.encode()
    + rb"(port|cudart_stub|cuda_platform|cuda_executor|cuda_dnn|cuda_fft|cuda_blas"
    rb"|cpu_feature_guard|cpu_utils|gpu_device|dso_loader|computation_placer)\.cc:\d+\]"
    rb"|.*apitools not found, and bigquery client libraries are not available"
    rb"|.*TF-TRT Warning: Could not find TensorRT"
    # Beam's worker processes (DirectRunner multi_processing): set-up notes
    rb"|.*No semi_persistent_directory found:  User registered objects"
    rb"|.*Discarding unparseable args: \[(\\?'--(direct_runner_use_stacked_bundle"
    rb"|pipeline_type_check)\\?'(, )?)+\]"
    rb"|INFO:__main__:Logging handler created\."
    rb"|.*To enable the following instructions: .* in other operations, rebuild TensorFlow"
)


def is_startup_line(line: bytes) -> bool:
    """True for a line TensorFlow or Beam print at start-up that says nothing about the run."""
    return STARTUP_LINE.match(line) is not None


class _Filter:
    """fd 2 replaced by a pipe, and the thread copying its lines to the real stderr."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self.copier = threading.Thread(
            target=_copy_lines, args=(read_end, self.real), name="beam-v1-stderr", daemon=True
        )
        self.copier.start()

    def stop(self, timeout: float) -> None:
        sys.stderr.flush()
        os.dup2(self.real, 2)  # our write end closes; EOF once child processes let go too
        self.copier.join(timeout)
        if not self.copier.is_alive():
            os.close(self.real)


_active: list[_Filter] = []


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """While open, drop start-up lines from everything written to fd 2 by this process and its
    children. On exit fd 2 is restored and the lines still in the pipe are copied (waiting at
    most a few seconds for children that still hold it)."""
    _active.append(_Filter())
    try:
        yield
    finally:
        stop_filtering()


def stop_filtering(timeout: float = 5.0) -> None:
    """Restore fd 2 now and copy what is left (before os._exit, which skips `finally`)."""
    while _active:
        _active.pop().stop(timeout)


def _copy_lines(read_end: int, out: int) -> None:
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            _write_all(out, b"".join(line + b"\n" for line in lines if not is_startup_line(line)))
    if pending and not is_startup_line(pending):
        _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
