"""Files on any filesystem Beam knows: local paths with native I/O, other schemes (gs://,
s3://, a registered plugin) through Beam's `FileSystems`, so credentials and options stay
Beam's. No compression is inferred from a file's extension."""

from __future__ import annotations

import os
import re

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

# names that datasets' readers (pyarrow.dataset, Spark, Hive) skip: metadata, not data
HIDDEN_PREFIXES = (".", "_")


def is_remote(path: str) -> bool:
    return FileSystems.get_scheme(path) not in (None, "file")


def local_path(path: str) -> str:
    """A local `path` without its `file://` scheme."""
    return path[len("file://"):] if path.startswith("file://") else path


def absolute(pattern: str) -> str:
    """`pattern` (a path or glob) made absolute when it is local; remote ones unchanged.

    Beam's LocalFileSystem lists the folder of a pattern's fixed part, which is "" for a
    relative pattern without a folder (such as `part-*.parquet`), so it matches nothing; and
    a worker's working folder need not be the launcher's. Match and read local patterns in
    this form.
    """
    if is_remote(pattern):
        return pattern
    local = local_path(pattern)
    if local.endswith(os.sep):  # a folder: Beam matches its files
        return os.path.join(os.path.abspath(local), "")
    return os.path.abspath(local)


def match(pattern: str) -> list[str]:
    """The paths matching `pattern` (made `absolute`) on its filesystem, sorted; BeamIOError
    if it cannot be listed."""
    return sorted(m.path for m in FileSystems.match([absolute(pattern)])[0].metadata_list)


def is_hidden(path: str, pattern: str) -> bool:
    """Whether `path`, listed for `pattern` (both as `absolute` gives them), is metadata a
    dataset reader skips: below the folder of the pattern's fixed part, a file or folder whose
    name starts with "." or "_" (`_SUCCESS`, `.part-0.parquet.crc`, `_temporary/`). Nothing is
    hidden for a pattern without a wildcard (it names its file) or one that itself names such
    a file or folder (`data/_extra/*.parquet`)."""
    if not (pattern.endswith("/") or re.search(r"[*?[]", pattern)):
        return False
    fixed = re.match(r"^[^*?[]*", pattern).group(0)
    base = fixed[: fixed.rfind("/") + 1]
    if not path.startswith(base):
        return False

    def names(relative: str) -> list[str]:
        return [name for name in relative.split("/") if name]

    if any(name.startswith(HIDDEN_PREFIXES) for name in names(pattern[len(base):])):
        return False
    return any(name.startswith(HIDDEN_PREFIXES) for name in names(path[len(base):]))


def match_data_files(pattern: str) -> tuple[list[str], list[str]]:
    """(data files, hidden files) matching `pattern` (see `match`, `is_hidden`), sorted."""
    pattern = absolute(pattern)
    data: list[str] = []
    hidden: list[str] = []
    for path in match(pattern):
        (hidden if is_hidden(path, pattern) else data).append(path)
    return data, hidden


class MatchDataFiles(beam.PTransform):
    """The pipeline's `match_data_files`: FileMetadata of each data file matching `pattern`
    (made `absolute` where the pipeline is built), hidden files skipped; a pattern that
    matches no file fails the run."""

    def __init__(self, pattern: str):
        super().__init__()
        self._pattern = absolute(pattern)

    def expand(self, pbegin):
        pattern = self._pattern
        return (
            pbegin
            | "Match" >> fileio.MatchFiles(pattern, fileio.EmptyMatchTreatment.DISALLOW)
            | "SkipHidden" >> beam.Filter(lambda meta: not is_hidden(meta.path, pattern))
        )


def open_input(path: str, arrow: bool = False):
    """A binary file to read; a local one is a `pyarrow.OSFile` with `arrow=True`."""
    if is_remote(path):
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if arrow:

        return pa.OSFile(local_path(path), "rb")
    return open(local_path(path), "rb")


def create_output(path: str, arrow: bool = False):
    """A binary file to write (local parent folders are made); a local one is a
    `pyarrow.OSFile` with `arrow=True`."""
    if is_remote(path):
        return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    path = local_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if arrow:

        return pa.OSFile(path, "wb")
    return open(path, "wb")
