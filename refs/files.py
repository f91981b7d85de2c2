"""Reading the store's files besides :class:`~refs.Conditional`: list, read, walk.

``RefStore`` and ``History`` read history entries, list folders and walk the ref
tree through :class:`Files`, which works on any fsspec filesystem. :class:`LocalFiles`
does the same with ``os`` calls for a ``LocalFileSystem``: a ``set`` makes a dozen
of these calls, and fsspec's path handling (``_strip_protocol``, ``info`` per
listed file) cost several times more CPU than the system calls themselves. Writes
never go through here: they are the :class:`~refs.Conditional`'s.

On S3, GCS and Azure Blob, :class:`ServiceFiles` sends the service's own requests
(through its adapter in :mod:`cas.refs.services`): one GET per read, one listing of a key prefix per
1,000 keys. Through s3fs a read is a HEAD then a GET (a HEAD and a listing when
nothing is there), and an empty listing costs two more requests, which look for a
file of the folder's name or for the folder in its parent; gcsfs ``find`` lists
twice; adlfs ``find`` of a folder whose name holds ``#`` answers ``[]``, and
``find("c/refs/a")`` answers the blob ``c/refs/a`` itself, not the blobs below it.

Errors other than "nothing is there" propagate: a folder that cannot be read is
not an empty one (fsspec's ``exists`` anti-pattern).
"""

from __future__ import annotations

import os
import stat
from typing import Any, TypeVar

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from .services.base import ObjectService

T = TypeVar("T")

# Refs and history entries are a few hundred bytes: one read holds them.
_CHUNK = 65536

# What reading a missing file, a folder, or a path through a file raises.
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class Files:
    """Fresh reads on one fsspec filesystem; :class:`LocalFiles` for local disks."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def listdir(self, folder: str) -> list[str]:
        """Base names of what ``folder`` holds (one listing); [] if it is not a folder."""
        self.fs.invalidate_cache(folder)
        try:
            listed = self.fs.ls(folder, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [str(path).rstrip("/").rpartition("/")[2] for path in listed]

    def cat(self, path: str) -> bytes | None:
        """The content of file ``path`` (one GET), or None if there is none."""
        try:
            return bytes(self.fs.cat_file(path))
        except _ABSENT:
            return None

    def exists(self, path: str) -> bool:
        """True if a file (not a folder) is at ``path``."""
        # A fresh GET, not fs.exists: that answers from listing caches and swallows errors.
        return self.cat(path) is not None

    def find(self, top: str, limit: int | None = None) -> list[str]:
        """Files under folder ``top`` in name order, the first ``limit`` of them (default
        all); [] if there is no such folder. One listing per 1,000 files."""
        self.fs.invalidate_cache(top)
        try:
            found = sorted(str(path) for path in self.fs.find(top))
        except (FileNotFoundError, NotADirectoryError):
            return []
        below = [path for path in found if path.startswith(top.rstrip("/") + "/")]
        return below if limit is None else below[:limit]

    def find_versions(self, top: str) -> dict[str, str] | None:
        """Every file under folder ``top`` with its version token (what a read returns
        beside the content: changes whenever the file does), one listing per 1,000
        files; None where listings give no such token (local disks, fsspec)."""
        return None

    def cat_many_versions(self, paths: list[str]) -> dict[str, tuple[bytes, str]]:
        """(content, version token) of ``paths`` where :meth:`find_versions` gives
        tokens; files gone meanwhile left out."""
        raise NotImplementedError(f"{type(self).__name__} reads no version tokens")

    def cat_many(self, paths: list[str]) -> dict[str, bytes]:
        """Contents of ``paths`` (concurrently where fs can); files gone meanwhile left out."""
        found = {}
        contents = self.fs.cat_ranges(paths, None, None, on_error="return")
        for path, data in zip(paths, contents, strict=True):
            if isinstance(data, _ABSENT):
                continue
            if isinstance(data, BaseException):
                raise data
            found[path] = bytes(data)
        return found


class LocalFiles(Files):
    """:class:`Files` on a local disk, by ``os`` calls (one system call where fsspec makes several)."""

    def listdir(self, folder: str) -> list[str]:
        # docstring inherited
        try:
            return os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def cat(self, path: str) -> bytes | None:
        # docstring inherited
        try:
            return read_file(path)
        except _ABSENT:
            return None

    def exists(self, path: str) -> bool:
        # docstring inherited
        try:
            return not stat.S_ISDIR(os.stat(path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def find(self, top: str, limit: int | None = None) -> list[str]:
        # docstring inherited
        found = sorted(self._walk(top))
        return found if limit is None else found[:limit]

    def _walk(self, top: str) -> list[str]:
        try:
            entries = list(os.scandir(top))
        except (FileNotFoundError, NotADirectoryError):
            return []  # also a folder removed as empty while we walk
        found = []
        for entry in entries:
            if entry.is_dir():  # follows symbolic links, as fsspec's find does
                found.extend(self._walk(entry.path))
            else:
                found.append(entry.path)
        return found

    def cat_many(self, paths: list[str]) -> dict[str, bytes]:
        # docstring inherited
        found = {}
        for path in paths:
            data = self.cat(path)
            if data is not None:
                found[path] = data
        return found


class ServiceFiles(Files):
    """:class:`Files` by a service's own requests (:mod:`cas.refs.services`): one GET per
    read (a missing bucket raises, it is never "nothing there"), one listing of a key
    prefix per 1,000 keys, many reads at once."""

    def __init__(self, fs: AbstractFileSystem, service: ObjectService) -> None:
        super().__init__(fs)
        self.service = service

    def listdir(self, folder: str) -> list[str]:
        # docstring inherited
        bucket, key = _split(folder)
        prefix = key.rstrip("/") + "/" if key else ""
        listed = self.service.list_keys(bucket, prefix, "/")
        return [name[len(prefix) :].rstrip("/") for name in listed]

    def cat(self, path: str) -> bytes | None:
        # docstring inherited
        got = self.service.read(path)
        return None if got is None else bytes(got[0])

    def find(self, top: str, limit: int | None = None) -> list[str]:
        # docstring inherited
        bucket, key = _split(top)
        prefix = key.rstrip("/") + "/" if key else ""
        listed = self.service.list_keys(bucket, prefix, None, limit)
        return [f"{bucket}/{name}" for name in listed]

    def cat_many(self, paths: list[str]) -> dict[str, bytes]:
        # docstring inherited
        got = self.service.read_many([_split(path) for path in paths])
        return {path: data for path, data in zip(paths, got, strict=True) if data is not None}

    def find_versions(self, top: str) -> dict[str, str] | None:
        # docstring inherited
        bucket, key = _split(top)
        prefix = key.rstrip("/") + "/" if key else ""
        listed = self.service.list_versions(bucket, prefix)
        return {f"{bucket}/{name}": version for name, version in listed.items()}

    def cat_many_versions(self, paths: list[str]) -> dict[str, tuple[bytes, str]]:
        # docstring inherited
        got = self.service.read_many_versions([_split(path) for path in paths])
        return {path: one for path, one in zip(paths, got, strict=True) if one is not None}


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.strip("/").partition("/")
    return bucket, key


def files_for(fs: AbstractFileSystem, conditional: Any = None) -> Files:
    """The :class:`Files` reading ``fs``: by ``os`` calls for a local filesystem, by the
    service's own requests on S3, GCS and Azure Blob (when ``conditional`` is that
    service's adapter from :mod:`cas.refs.services`), else through fsspec."""
    if isinstance(fs, LocalFileSystem):
        return LocalFiles(fs)
    if isinstance(conditional, ObjectService) and conditional.fs is fs:
        return ServiceFiles(fs, conditional)
    return Files(fs)


def read_file(path: str) -> bytes:
    """The whole content of local file ``path``: open, read, close and nothing else.

    Raises ``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``, as
    ``open`` does (which also makes two ``fstat`` and two ``lseek`` calls).
    """
    fd = os.open(path, os.O_RDONLY)  # close-on-exec by default (PEP 446)
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def read_file_stat(path: str) -> tuple[bytes, os.stat_result]:
    """The whole content of local file ``path`` and its ``fstat`` (same errors as :func:`read_file`)."""
    fd = os.open(path, os.O_RDONLY)  # close-on-exec by default (PEP 446)
    try:
        data = _read_fd(fd)
        return data, os.fstat(fd)
    finally:
        os.close(fd)


def _read_fd(fd: int) -> bytes:
    # One read of the size the file has (+1, to see it grew): a ref and a 4 MiB object
    # alike. A regular file reads short only at its end (POSIX; Linux does not cut
    # regular-file reads short on a signal), or above 2 GiB at once: then read to EOF.
    # Were one cut short anyway, a ref or object would fail to decode, loudly.
    size = os.fstat(fd).st_size
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]
    while chunk := os.read(fd, max(size, _CHUNK)):
        chunks.append(chunk)
    return b"".join(chunks)
