"""A store's root in a folder of a local disk: temp file, optional fsync, rename."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import stat as stat_module
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final

from fsspec.implementations.local import LocalFileSystem

from cas import refs
from cas.errors import ReadOnlyStore
from cas.refs.files import read_file
from cas.storage.base import TEMP_PREFIX, Stat, Storage

#: Write-once files (packs) kept open for range reads, per storage.
OPEN_FILES: Final = 64


class _Open:
    """A descriptor kept open, with how many reads use it (closed when evicted and
    unused, never under a reader)."""

    __slots__ = ("evicted", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.evicted = False


class LocalStorage(Storage):
    """A folder on a local disk: temp file, optional fsync, rename."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.url = self.root
        self.fs = LocalFileSystem()
        self.fsync = fsync
        self.local_dir = self.root
        self._made_dirs: set[str] = set()
        self._fds: OrderedDict[str, _Open] = OrderedDict()
        self._fds_lock = threading.Lock()
        self._unsynced = False  # a write with durable=False since the last sync

    listing_stats = False
    cheap_touch = True

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def conditional(self, *, durable: bool = True) -> refs.Conditional:
        # docstring inherited
        return refs.LocalConditional(fsync=self.fsync and durable)

    # docstring inherited
    def read(self, rel: str) -> bytes:
        return read_file(self._path(rel))  # one read for a small file: no buffered object

    def read_head(self, rel: str, n: int) -> bytes:
        fd = os.open(self._path(rel), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.read(fd, n)  # a regular file reads short only at its end
        finally:
            os.close(fd)

    def write_atomic(
        self, rel: str, data: bytes, *, durable: bool = True, _attempt: int = 1
    ) -> None:
        with self._writing():
            self._write_atomic(rel, data, durable=durable, _attempt=_attempt)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write refused by permissions or a read-only mount is :class:`ReadOnlyStore`."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise ReadOnlyStore(
                exc.filename or self.root,
                f"the store at {self.root} is read-only here ({exc.strerror}: "
                f"{exc.filename or self.root}): reading it works; to write, make it writable "
                "for this user or copy it to a store of your own with 'cas pull'",
            ) from exc

    def _write_atomic(
        self, rel: str, data: bytes, *, durable: bool = True, _attempt: int = 1
    ) -> None:
        path = self._path(rel)
        parent = os.path.dirname(path)
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        # A dot-name in the same folder: rename is atomic within one filesystem, and
        # listings skip dot-names, so a crash leaves only a temp file that gc removes.
        tmp = os.path.join(parent, f"{TEMP_PREFIX}{os.path.basename(path)}-{secrets.token_hex(4)}")
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
            if self.fsync and durable:
                os.fsync(fd)
            elif self.fsync:
                self._unsynced = True
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            # Its temporary file was removed under it: by `cas gc --grace 0` running
            # beside this write (which clears every temp file it lists). The data is in
            # hand, so write it again rather than fail the save.
            if _attempt >= 3:
                raise
            self._write_atomic(rel, data, durable=durable, _attempt=_attempt + 1)
            return
        if self.fsync and durable:
            _fsync_dir(parent)

    def sync(self, *, force: bool = False) -> None:
        """One ``syncfs`` of the filesystem holding the root: every file written and
        renamed so far, data and folder entries, is on disk when it returns."""
        if self.fsync and (self._unsynced or force):
            # Cleared before the sync: a write that lands after this line sets it again
            # and is synced by the next call; every write before it is synced by this one.
            self._unsynced = False
            _syncfs(self.root)

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        return self.read_ranges(rel, [(start, start + length)])[0]

    def read_ranges(self, rel: str, spans: list[tuple[int, int]]) -> list[bytes]:
        """Range reads of a write-once file (a pack) through a descriptor kept open:
        one open for thousands of reads. A file removed since still reads its own
        bytes, which are still the right bytes for its ids."""
        handle = self._handle(rel)
        try:
            return [os.pread(handle.fd, end - start, start) for start, end in spans]
        finally:
            self._release(handle)

    def _handle(self, rel: str) -> _Open:
        with self._fds_lock:
            handle = self._fds.get(rel)
            if handle is not None:
                self._fds.move_to_end(rel)
                handle.users += 1
                return handle
        fd = os.open(self._path(rel), os.O_RDONLY)
        with self._fds_lock:
            handle = self._fds.get(rel)
            if handle is not None:  # another thread opened it meanwhile
                os.close(fd)
            else:
                handle = self._fds[rel] = _Open(fd)
                while len(self._fds) > OPEN_FILES:  # the least recently used goes
                    _, old = self._fds.popitem(last=False)
                    old.evicted = True
                    if not old.users:
                        os.close(old.fd)
            handle.users += 1
            return handle

    def _release(self, handle: _Open) -> None:
        with self._fds_lock:
            handle.users -= 1
            if handle.evicted and not handle.users:
                os.close(handle.fd)

    def stat(self, rel: str) -> Stat | None:
        try:
            st = os.stat(self._path(rel))
        except FileNotFoundError:
            return None
        if stat_module.S_ISDIR(st.st_mode):
            return None  # a folder is not a file (as on object stores)
        return Stat(st.st_size, st.st_mtime)

    def touch(self, rel: str) -> bool:
        try:
            with self._writing():
                os.utime(self._path(rel))
        except FileNotFoundError:
            return False
        return True

    def delete(self, rel: str) -> bool:
        try:
            with self._writing():
                os.unlink(self._path(rel))
        except FileNotFoundError:
            return False
        return True

    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        base = self._path(rel_dir)
        for dirpath, dirnames, filenames in os.walk(base, onerror=_raise_unless_absent):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except FileNotFoundError:
                    continue  # removed while we listed
                yield (
                    os.path.relpath(full, self.root).replace(os.sep, "/"),
                    Stat(st.st_size, st.st_mtime),
                )

    def listdir(self, rel_dir: str) -> list[str]:
        try:
            with os.scandir(self._path(rel_dir)) as it:
                return sorted(e.name for e in it if e.is_file())
        except FileNotFoundError:
            return []


_libc: Any = None


def _syncfs(path: str) -> None:
    """``syncfs(2)`` on Linux (one call for a whole batch of files); elsewhere ``sync``."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.syncfs  # noqa: B018 - raises AttributeError where there is none
        except (OSError, AttributeError):
            _libc = False
    if _libc is False:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", path)
    finally:
        os.close(fd)


def _raise_unless_absent(exc: OSError) -> None:
    """os.walk's errors: an absent folder walks as empty; any other is raised (a folder
    that cannot be read is not an empty one)."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
