"""How a `beam-v1` command-line process ends: its atexit handlers, then `os._exit`.

Once TensorFlow is loaded, the interpreter's teardown (clearing every module, collecting their
objects, TensorFlow's and Beam's native destructors) takes over a second and does nothing a
finished command needs. `ExitAfterHandlers`, made when a command starts, registers an atexit
handler; atexit runs handlers last-registered first, so it runs after every handler registered
while the command ran (staged models released, sessions closed, multiprocessing's children
joined, weakref finalizers and temporary folders) and after the interpreter joined its
non-daemon threads. Given the command's status (`finished`), it shuts logging down (flushing
and closing every handler, including those registered before it), flushes stdout and stderr,
and ends the process with `os._exit(status)`; if stdout cannot be flushed (a closed pipe) the
status is 120, as the interpreter's own exit gives. Without a status (the command raised), the
interpreter ends as usual, traceback included. Handlers registered before the command started
(while the CLI's modules were imported: logging's, which `logging.shutdown` stands in for, and
pyarrow's S3 finalizer, which a process ending needs not) do not run.

Only the command line uses it (`beam_v1.cli.main.main` with no argv): the process ends when its
command returns, so nothing after the command needs the interpreter's teardown. A library
caller of `main(argv)` keeps its own exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

EXIT_FLUSH_FAILED = 120  # the interpreter's status when flushing stdout at exit fails


class ExitAfterHandlers:
    """Armed on creation: `finished(status)` makes the process end with `status` once every
    later-registered atexit handler has run."""

    def __init__(self) -> None:
        self.status: int | None = None
        atexit.register(self._exit)

    def finished(self, status: int) -> int:
        """Record the command's exit status; returns it."""
        self.status = status
        return status

    def _exit(self) -> None:
        if self.status is None:
            return
        status = self.status
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                if stream is sys.stdout:
                    status = status or EXIT_FLUSH_FAILED
        os._exit(status)
