"""A real Beam FileSystem for "remote" paths in the tests: `beamv1test://a/b` is ROOT/a/b."""

from __future__ import annotations

import os

from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.localfilesystem import LocalFileSystem


class MappedFileSystem(LocalFileSystem):
    """`beamv1test://a/b` is the local file ROOT/a/b: a real Beam FileSystem for a remote path."""

    ROOT: str | None = None
    opened: list[str] = []
    created: list[str] = []

    @classmethod
    def scheme(cls):
        return "beamv1test"

    def _local(self, path):
        prefix = "beamv1test://"
        if not path.startswith(prefix):
            return path
        if self.ROOT is None:
            raise OSError("MappedFileSystem.ROOT is not set")
        return os.path.join(self.ROOT, path[len(prefix) :])

    def _remote(self, local):
        return "beamv1test://" + os.path.relpath(local, self.ROOT).replace(os.sep, "/")

    def exists(self, path):
        return super().exists(self._local(path))

    def size(self, path):
        return super().size(self._local(path))

    def metadata(self, path):
        m = super().metadata(self._local(path))
        return FileMetadata(path, m.size_in_bytes, m.last_updated_in_seconds)

    def _list(self, dir_or_prefix):
        for m in super()._list(self._local(dir_or_prefix)):
            yield FileMetadata(self._remote(m.path), m.size_in_bytes, m.last_updated_in_seconds)

    def open(self, path, *args, **kwargs):
        MappedFileSystem.opened.append(path)
        return super().open(self._local(path), *args, **kwargs)

    def join(self, basepath, *paths):  # as object stores join: no local absolute path
        if not basepath.startswith("beamv1test://"):
            return super().join(basepath, *paths)
        return "/".join([basepath.rstrip("/")] + [p.strip("/") for p in paths])

    def split(self, path):
        if not path.startswith("beamv1test://"):
            return super().split(path)
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def create(self, path, *args, **kwargs):
        MappedFileSystem.created.append(path)
        return super().create(self._local(path), *args, **kwargs)

    def mkdirs(self, path):
        return super().mkdirs(self._local(path))

    def rename(self, sources, destinations):
        return super().rename([self._local(p) for p in sources],
                              [self._local(p) for p in destinations])

    def delete(self, paths):
        return super().delete([self._local(p) for p in paths])
