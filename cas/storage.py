"""The files under a store's root: the small seam between cas and a filesystem.

Two implementations of one contract: :class:`LocalStorage` talks to the operating system
directly (the hot path of a local store: no fsspec dispatch on every small write), and
:class:`FsspecStorage` holds any fsspec filesystem (memory, S3, GCS, Azure, ...). Paths
are relative to the root and use ``/``. Absence is ``None``/``False``/``FileNotFoundError``;
any other failure is raised, never read as "absent" (the fsspec ``exists()`` trap).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from cas.errors import BackendError


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime: float  # seconds since the epoch


class Storage(ABC):
    """Files under one root. Writes are atomic: a reader sees all of a file or none."""

    fs: fsspec.AbstractFileSystem
    root: str  # the root inside ``fs``, without protocol
    url: str  # the root as a URL a user would type

    @abstractmethod
    def read(self, rel: str) -> bytes:
        """The whole file; ``FileNotFoundError`` if absent."""

    def read_head(self, rel: str, n: int) -> bytes:
        """The first ``n`` bytes (all of a shorter file); ``FileNotFoundError`` if absent."""
        return self.read(rel)[:n]

    @abstractmethod
    def write_atomic(self, rel: str, data: bytes) -> None:
        """Create or replace ``rel`` so that no reader sees a partial file."""

    @abstractmethod
    def stat(self, rel: str) -> Stat | None:
        """Size and modification time, or None if absent."""

    @abstractmethod
    def touch(self, rel: str) -> bool:
        """Refresh the modification time; False if the file is absent."""

    @abstractmethod
    def delete(self, rel: str) -> bool:
        """Remove a file; False if it was already absent."""

    @abstractmethod
    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        """Every file below ``rel_dir`` (relative paths), from listings."""

    @abstractmethod
    def listdir(self, rel_dir: str) -> list[str]:
        """Names of the files directly in ``rel_dir`` (empty if absent)."""

    def exists(self, rel: str) -> bool:
        return self.stat(rel) is not None

    def delete_many(self, rels: list[str]) -> int:
        """Remove many files; backends with batch deletes override this."""
        return sum(1 for rel in rels if self.delete(rel))

    def is_empty(self) -> bool:
        """True if the root holds no files at all (or does not exist)."""
        return not self.listdir("") and not any(True for _ in self.walk(""))


class LocalStorage(Storage):
    """A folder on a local disk: temp file, optional fsync, rename."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root
        self.fs = LocalFileSystem()
        self.fsync = fsync
        self._made_dirs: set[str] = set()

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    # docstring inherited
    def read(self, rel: str) -> bytes:
        with open(self._path(rel), "rb") as f:
            return f.read()

    def read_head(self, rel: str, n: int) -> bytes:
        with open(self._path(rel), "rb") as f:
            return f.read(n)

    def write_atomic(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        parent = os.path.dirname(path)
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        # A dot-name in the same folder: rename is atomic within one filesystem, and
        # listings skip dot-names, so a crash leaves only a temp file that gc removes.
        tmp = os.path.join(parent, f".tmp-{os.path.basename(path)}-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileNotFoundError:  # the folder was removed meanwhile (gc of an empty fan-out)
            self._made_dirs.discard(parent)
            os.makedirs(parent, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(parent)

    def stat(self, rel: str) -> Stat | None:
        try:
            st = os.stat(self._path(rel))
        except FileNotFoundError:
            return None
        return Stat(st.st_size, st.st_mtime)

    def touch(self, rel: str) -> bool:
        try:
            os.utime(self._path(rel))
        except FileNotFoundError:
            return False
        return True

    def delete(self, rel: str) -> bool:
        try:
            os.unlink(self._path(rel))
        except FileNotFoundError:
            return False
        return True

    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        base = self._path(rel_dir)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue  # removed while we listed
                yield os.path.relpath(full, self.root).replace(os.sep, "/"), Stat(
                    st.st_size, st.st_mtime
                )

    def listdir(self, rel_dir: str) -> list[str]:
        try:
            with os.scandir(self._path(rel_dir)) as it:
                return sorted(e.name for e in it if e.is_file())
        except FileNotFoundError:
            return []


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Exceptions that mean "the service failed", translated to BackendError at this seam.
#: FileNotFoundError is absence and is handled before these are caught.
_BACKEND_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)


class FsspecStorage(Storage):
    """Any fsspec filesystem; object stores write each file with a single PUT."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _fail(self, what: str, rel: str, exc: BaseException) -> BackendError:
        return BackendError(f"{what} {self.url}/{rel} failed: {exc!r}")

    # docstring inherited
    def read(self, rel: str) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._path(rel))
        except FileNotFoundError:
            raise
        except _BACKEND_FAILURES as exc:
            raise self._fail("reading", rel, exc) from exc
        return data

    def read_head(self, rel: str, n: int) -> bytes:
        try:
            data: bytes = self.fs.cat_file(self._path(rel), start=0, end=n)
        except FileNotFoundError:
            raise
        except _BACKEND_FAILURES as exc:
            raise self._fail("reading", rel, exc) from exc
        return data

    def write_atomic(self, rel: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(rel), data)
        except _BACKEND_FAILURES as exc:
            raise self._fail("writing", rel, exc) from exc

    def stat(self, rel: str) -> Stat | None:
        try:
            info = self.fs.info(self._path(rel))
        except FileNotFoundError:
            return None
        except _BACKEND_FAILURES as exc:
            raise self._fail("checking", rel, exc) from exc
        if info.get("type") == "directory":
            return None
        return Stat(int(info.get("size") or 0), mtime_of(info))

    def touch(self, rel: str) -> bool:
        path = self._path(rel)
        try:
            try:
                self.fs.touch(path, truncate=False)
                return True
            except (NotImplementedError, ValueError):
                pass
            # No in-place touch (memory, object stores): rewrite the same bytes.
            data = self.fs.cat_file(path)
            self.fs.pipe_file(path, data)
            return True
        except FileNotFoundError:
            return False
        except _BACKEND_FAILURES as exc:
            raise self._fail("refreshing", rel, exc) from exc

    def delete(self, rel: str) -> bool:
        try:
            self.fs.rm_file(self._path(rel))
        except FileNotFoundError:
            return False
        except _BACKEND_FAILURES as exc:
            raise self._fail("deleting", rel, exc) from exc
        return True

    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        base = self._path(rel_dir)
        try:
            found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return
        except _BACKEND_FAILURES as exc:
            raise self._fail("listing", rel_dir, exc) from exc
        prefix = self.root.lstrip("/") + "/"
        for path in sorted(found):
            info = found[path]
            if info.get("type") == "directory":
                continue
            rel = path.lstrip("/")
            rel = rel[len(prefix) :] if rel.startswith(prefix) else rel
            yield rel, Stat(int(info.get("size") or 0), mtime_of(info))

    def listdir(self, rel_dir: str) -> list[str]:
        try:
            entries = self.fs.ls(self._path(rel_dir), detail=True)
        except FileNotFoundError:
            return []
        except _BACKEND_FAILURES as exc:
            raise self._fail("listing", rel_dir, exc) from exc
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"
        )


def mtime_of(info: dict[str, Any]) -> float:
    """Modification time from an fsspec info dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "ctime"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()  # unknown: treat as new, so gc's grace period spares it


def open_storage(url: str | os.PathLike[str], *, fsync: bool = True, **storage_options: Any) -> Storage:
    """The storage behind a root URL: a plain path or ``file://`` is local, anything else fsspec."""
    text = os.fspath(url)
    if "://" not in text:
        return LocalStorage(text, fsync=fsync)
    protocol, _, rest = text.partition("://")
    if protocol in ("file", "local"):
        return LocalStorage(rest, fsync=fsync)
    fs, root = fsspec.core.url_to_fs(text, **storage_options)
    if protocol == "memory":
        root = "/" + root.lstrip("/")
    return FsspecStorage(fs, root, text.rstrip("/"))
