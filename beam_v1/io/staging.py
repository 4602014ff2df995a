"""Copy a model directory from any filesystem Beam knows (gs://, s3://, ...) to local disk."""

from __future__ import annotations

import logging
import os
import tempfile
import threading

from apache_beam.io.filesystems import FileSystems

from beam_v1.errors import ModelFileError
from beam_v1.io.files import is_remote, local_path

_log = logging.getLogger(__name__)
_staged: dict[str, str] = {}
_lock = threading.Lock()


def local_model_dir(path: str) -> str:
    """A local directory holding the model at `path`; remote models are copied once per process."""
    if not is_remote(path):
        return local_path(path)
    with _lock:
        if path in _staged and os.path.isdir(_staged[path]):
            return _staged[path]
        root = path.rstrip("/")
        try:
            matches = FileSystems.match([root + "/**"])[0].metadata_list
        except Exception as e:  # Beam raises BeamIOError and friends
            raise ModelFileError(f"Cannot list the model directory {path}: {e}") from e
        if not matches:
            raise ModelFileError(f"The model directory {path} is empty or does not exist.")
        dest = tempfile.mkdtemp(prefix="beam_v1_model_")
        for meta in matches:
            relative = meta.path[len(root) :].lstrip("/")
            if not relative or relative.endswith("/"):
                continue
            target = os.path.join(dest, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with FileSystems.open(meta.path) as src, open(target, "wb") as out:
                while chunk := src.read(16 << 20):
                    out.write(chunk)
        _log.info("Staged model %s to %s (%d files)", path, dest, len(matches))
        _staged[path] = dest
        return dest
