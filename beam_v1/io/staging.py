"""Remote model folders (any filesystem Beam knows: gs://, s3://, ...) staged to local disk once
per machine and removed when the last process using them is done.

Contract:
- Local paths pass through untouched: never copied, never removed.
- A remote folder is copied to `<root>/<name>-<key>`, where root is `$BEAM_V1_STAGING_DIR` or
  `<tempfile.gettempdir()>/beam_v1_models` (it must be local to the machine) and key hashes the URL
  with its listing (relative path, size, last-modified of every file), so a changed model is
  staged anew. `<root>/<name>-<key>.lock` (fcntl.flock) serialises copying, registering and
  removing among the machine's processes: one copies, the others wait and reuse the copy.
- The copy goes to `<folder>.part-<pid>` and is renamed into place when complete, so a killed
  copy never looks complete (the next holder of the lock removes it). Files are copied by a small
  thread pool, big files in byte ranges read through seekable `FileSystems.open` handles.
- Each process holding a folder registers as `<folder>.users/<pid>` (with its start time); in a
  process, `acquire` and `release` nest. When a process's last `release` runs (or it exits), it
  unregisters, and if no live process is registered the folder is removed. Registrations of dead
  processes are ignored; folders left behind by killed processes are removed by the next
  `acquire` on the machine.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_v1.errors import ModelFileError
from beam_v1.io.files import is_remote, local_path

STAGING_DIR_ENV = "BEAM_V1_STAGING_DIR"
COPY_THREADS = 8
RANGE_BYTES = 32 << 20  # files bigger than two ranges are read in ranges of this size
_READ_BYTES = 8 << 20

_log = logging.getLogger(__name__)


@dataclass
class _Held:
    folder: str
    count: int
    for_life: bool = False


_held: dict[str, _Held] = {}
_lock = threading.RLock()


def staging_root() -> str:
    """The machine-local folder holding staged models."""
    return os.environ.get(STAGING_DIR_ENV) or os.path.join(tempfile.gettempdir(), "beam_v1_models")


def acquire(path: str) -> str:
    """A local directory holding the model at `path`, held until the matching `release(path)`."""
    if not is_remote(path):
        return local_path(path)
    key = path.rstrip("/")
    with _lock:
        held = _held.get(key)
        if held is not None:
            held.count += 1
            return held.folder
        folder = _stage(key)
        _held[key] = _Held(folder, 1)
        return folder


def release(path: str) -> bool:
    """Drop one hold on `path`; the last user on the machine removes the folder.

    Returns False when this process held nothing for `path` (a local path, or a double release).
    """
    if not is_remote(path):
        return False
    key = path.rstrip("/")
    with _lock:
        held = _held.get(key)
        if held is None:
            return False
        held.count -= 1
        if held.count > 0:
            return True
        del _held[key]
        _unregister(held.folder)
        return True


@contextlib.contextmanager
def staged_model(path: str) -> Iterator[str]:
    """`with staged_model(url) as local_dir:` the model stays on disk inside the block."""
    local = acquire(path)
    try:
        yield local
    finally:
        release(path)


def local_model_dir(path: str) -> str:
    """A local directory holding the model at `path`, held until this process exits."""
    if not is_remote(path):
        return local_path(path)
    key = path.rstrip("/")
    with _lock:
        held = _held.get(key)
        if held is not None and held.for_life:
            return held.folder
        folder = acquire(key)
        _held[key].for_life = True
        return folder


def copy_tree(url: str, dest: str, *, range_bytes: int = RANGE_BYTES) -> list[tuple[str, int, int]]:
    """Copy the files under the remote folder `url` into the existing local folder `dest`.

    Files are copied concurrently; a file bigger than two `range_bytes` is read in ranges of
    `range_bytes` on separate handles. Returns the pieces copied as (relative path, start, length).
    """
    return _copy(_listing(url), dest, range_bytes)


# ---------------------------------------------------------------- staging under the lock


def _listing(url: str) -> list[tuple[str, str, int, float]]:
    """[(remote path, relative path, size, last-modified seconds)] of the files under `url`."""
    root = url.rstrip("/")
    try:
        matches = FileSystems.match([root + "/**"])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError and friends
        raise ModelFileError(f"Cannot list the model directory {url}: {e}") from e
    files = []
    for meta in matches:
        relative = meta.path[len(root) :].lstrip("/")
        if not relative or relative.endswith("/"):
            continue
        if ".." in relative.split("/"):
            raise ModelFileError(f"The model directory {url} lists a file outside it: {meta.path}")
        files.append((meta.path, relative, int(meta.size_in_bytes), meta.last_updated_in_seconds))
    if not files:
        raise ModelFileError(f"The model directory {url} is empty or does not exist.")
    return sorted(files, key=lambda f: f[1])


def _folder_for(url: str, files: list[tuple[str, str, int, float]]) -> str:
    digest = hashlib.sha256(url.rstrip("/").encode())
    for _, relative, size, updated in files:
        digest.update(f"\n{relative}\t{size}\t{updated}".encode())
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[:40] or "model"
    return os.path.join(staging_root(), f"{name}-{digest.hexdigest()[:24]}")


def _stage(url: str) -> str:
    files = _listing(url)
    folder = _folder_for(url, files)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with _locked(folder + ".lock"):
        _remove_parts(folder)
        if not os.path.isdir(folder):
            part = f"{folder}.part-{os.getpid()}"
            os.makedirs(part)
            try:
                pieces = _copy(files, part, RANGE_BYTES)
            except BaseException:
                shutil.rmtree(part, ignore_errors=True)
                raise
            os.rename(part, folder)
            _log.info(
                "beam-v1 staging: copied %s to %s (%d files, %d pieces, pid %d)",
                url,
                folder,
                len(files),
                len(pieces),
                os.getpid(),
            )
        else:
            _log.info("beam-v1 staging: reusing %s for %s", folder, url)
        users = folder + ".users"
        os.makedirs(users, exist_ok=True)
        with open(os.path.join(users, str(os.getpid())), "w") as f:
            f.write(_start_time(os.getpid()) or "")
    _sweep(keep=folder)
    return folder


def _unregister(folder: str) -> None:
    with _locked(folder + ".lock"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder + ".users", str(os.getpid())))
        if _live_users(folder):
            return
        _remove(folder)
    _log.info("beam-v1 staging: removed %s (no process uses it)", folder)


def _remove(folder: str) -> None:
    """Remove the folder and its bookkeeping; the caller holds its lock."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(folder + ".users", ignore_errors=True)
    _remove_parts(folder)
    with contextlib.suppress(FileNotFoundError):
        os.remove(folder + ".lock")  # waiters see the inode change and take a new lock file


def _remove_parts(folder: str) -> None:
    parent, name = os.path.split(folder)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(parent):
            if entry.startswith(name + ".part-"):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _sweep(keep: str) -> None:
    """Remove folders no live process uses (their users were killed), skipping locked ones."""
    root = os.path.dirname(keep)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(root):
            folder = os.path.join(root, entry[: -len(".lock")])
            if not entry.endswith(".lock") or folder == keep:
                continue
            with _locked(folder + ".lock", wait=False) as got:
                if got and not _live_users(folder):
                    _remove(folder)
                    _log.info("beam-v1 staging: removed %s left by ended processes", folder)


def _live_users(folder: str) -> list[int]:
    users = folder + ".users"
    try:
        entries = os.listdir(users)
    except FileNotFoundError:
        return []
    live = []
    for entry in entries:
        registered = os.path.join(users, entry)
        try:
            with open(registered) as f:
                started = f.read().strip()
        except FileNotFoundError:
            continue
        if entry.isdigit() and _alive(int(entry), started):
            live.append(int(entry))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(registered)
    return live


def _alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _start_time(pid)
    if now == "Z":
        return False
    return not (started and now and now != started)  # a reused pid is another process


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux /proc), "Z" for a zombie, None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return "Z" if fields[0] in ("Z", "X") else fields[19]


@contextlib.contextmanager
def _locked(lock_path: str, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `lock_path`; yields False if `wait` is off and it is taken."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by the last user while we waited: lock the new one
    try:
        yield True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- parallel copy


def _copy(
    files: list[tuple[str, str, int, float]], dest: str, range_bytes: int
) -> list[tuple[str, int, int]]:
    pieces: list[tuple[str, str, str, int, int]] = []
    for remote, relative, size, _ in files:
        target = os.path.join(dest, *relative.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.truncate(size)
        step = range_bytes if size > 2 * range_bytes else max(size, 1)
        for start in range(0, max(size, 1), step):
            pieces.append((remote, relative, target, start, min(step, size - start)))
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=COPY_THREADS, thread_name_prefix="beam-v1-staging"
    ) as pool:
        for future in [pool.submit(_copy_piece, *piece) for piece in pieces]:
            future.result()
    return [(relative, start, length) for _, relative, _, start, length in pieces]


def _copy_piece(remote: str, relative: str, target: str, start: int, length: int) -> None:
    fd = os.open(target, os.O_WRONLY)
    try:
        with FileSystems.open(remote, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            # unbuffered where Beam wraps a raw stream: a read is one ranged request, not more
            src = getattr(handle, "raw", handle)
            if start:
                if src.seekable():
                    src.seek(start)
                else:  # no ranged reads on this filesystem: skip to the range
                    skip = start
                    while skip and (chunk := src.read(min(skip, _READ_BYTES))):
                        skip -= len(chunk)
            done = 0
            while done < length:
                chunk = src.read(min(length - done, _READ_BYTES))
                if not chunk:
                    break
                os.pwrite(fd, chunk, start + done)
                done += len(chunk)
    except OSError as e:
        raise ModelFileError(f"Copying {remote} failed: {e}") from e
    finally:
        os.close(fd)
    if done != length:
        raise ModelFileError(
            f"{remote} ended at byte {start + done}, its listing says {start + length} "
            f"(was it changed while copied?); {relative} is not staged."
        )


def _release_all() -> None:
    with _lock:
        for path in list(_held):
            _held[path].count = 1
            release(path)


def _forget_in_child() -> None:
    """A forked child is not registered: it must stage for itself."""
    global _lock
    _held.clear()
    _lock = threading.RLock()


atexit.register(_release_all)
os.register_at_fork(after_in_child=_forget_in_child)
