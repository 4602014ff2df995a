"""Children of tests/test_staging.py, in a module of their own so that a spawned child imports
Beam's filesystems and beam_v1's staging only (not TensorFlow)."""

from __future__ import annotations

import logging
import os
import time

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_v1.io import staging


def hold(args, url, ready, go, out):
    """Child: stage `url`, report (dir, copied here?, pid), hold it until `go`, then release."""
    copied = []

    class _Seen(logging.Handler):
        def emit(self, record):
            if "copied" in record.getMessage():
                copied.append(record.getMessage())

    logger = logging.getLogger("beam_v1.io.staging")
    logger.setLevel(logging.INFO)
    logger.addHandler(_Seen())
    FileSystems.set_options(PipelineOptions(args))
    ready.wait(60)  # both children start staging together
    local = staging.acquire(url)
    complete = os.path.isfile(os.path.join(local, "saved_model.pb"))
    out.put((local, len(copied), os.getpid(), complete))
    go.wait(60)
    staging.release(url)


def hold_and_hang(args, url, out):
    FileSystems.set_options(PipelineOptions(args))
    out.put(staging.acquire(url))
    time.sleep(600)
