"""Compare-and-swap on a local (or NFS) filesystem: a lock file, then rename.

As git and dulwich (``file.py``) do for ``replace`` and ``remove``: ``<path>.lock``
is created with ``O_CREAT | O_EXCL`` and holds its owner (pid, host, time); under
it the file is re-read and compared, the new content is written to a temporary
file, flushed with fsync, renamed over ``<path>``, and the folder is fsynced; then
the lock goes. ``create`` needs no lock: a complete, fsynced temporary file is
hard-linked to ``<path>``, which fails if the name exists (where the filesystem
has no hard links, it takes the lock instead).

A lock left behind by a killed process is never broken silently: :meth:`read`
ignores locks, and a writer waits a bounded time with backoff, then raises
:class:`~refs.RefLocked` naming the owner, the lock's age, whether the owner is
still running (same host) and the ``rm`` command that clears it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import time
from collections.abc import Iterator

from refs.conditional import Conditional
from refs.errors import RefLocked
from refs.files import read_file, read_file_stat
from refs.owner import describe_owner, hostname, remove_command

_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# link(2) errors that mean "this filesystem has no hard links": fall back to the lock.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def _stamp(stat: os.stat_result, data: bytes) -> str:
    # Inode and mtime change with every rename; the digest makes a token differ
    # whenever the content does, even if a coarse clock and inode reuse collide.
    digest = hashlib.blake2b(data, digest_size=8).hexdigest()
    return f"{stat.st_ino}-{stat.st_mtime_ns}-{digest}"


def _remove_empty_folders(path: str) -> None:
    """Remove folder ``path`` if it holds only folders; IsADirectoryError if any file."""
    try:
        for folder, _, files in os.walk(path, topdown=False):
            if files:
                raise OSError(errno.ENOTEMPTY, "not empty", folder)
            os.rmdir(folder)  # fails too if a file appeared meanwhile
    except OSError:
        raise IsADirectoryError(errno.EISDIR, "a folder with files in it is there", path) from None


def _refuse_folder(path: str) -> None:
    """Raise IsADirectoryError if a folder is at ``path``: names below it, or none left."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is there", path) from None


class LocalConditional(Conditional):
    """Compare-and-swap on local files: ``<path>.lock`` (O_EXCL) and rename; link(2).

    Correct across threads, processes and hosts sharing the folder on a filesystem
    where O_EXCL create, link and rename are atomic (local disks; NFSv3 and later).

    ``fsync``: flush file and folder on every write (durability across power loss).
    ``timeout``: seconds a writer waits for a held lock before raising ``RefLocked``.
    """

    def __init__(self, *, fsync: bool = True, timeout: float = 5.0) -> None:
        self.fsync = fsync
        self.timeout = timeout

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        try:
            data, stat = read_file_stat(path)
        except _ABSENT:
            return None
        return data, _stamp(stat, data)

    def read_data(self, path: str) -> bytes | None:
        # docstring inherited
        try:
            return read_file(path)
        except _ABSENT:
            return None

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        try:
            return self._create(path, data, locked=False)
        except IsADirectoryError:
            if os.path.islink(path):
                raise
        # A folder is at `path`. If it holds no file (left by names deleted below it),
        # remove it and create, under the lock so that two creators of `path` cannot
        # remove each other's file; if it holds any, this raises IsADirectoryError.
        with self.locked(path):
            _remove_empty_folders(path)
            return self._create(path, data, locked=True)

    def _create(self, path: str, data: bytes, *, locked: bool) -> bool:
        # Lock-free where hard links work: link(2) of a complete temporary file is
        # atomic and fails if the name exists, so contenders fail fast and a killed
        # creator leaves no lock behind. Where the filesystem has no hard links,
        # every creator takes the lock instead.
        folder, base = os.path.split(path)
        unique = f"{os.getpid()}.{random.getrandbits(48):012x}"
        temporary = os.path.join(folder, f".{base}.{unique}.tmp")
        try:
            while True:
                try:
                    self._write_file(temporary, data)
                    break
                except FileNotFoundError:
                    # No folder yet, or it was just removed as empty: make it (a file
                    # where a folder should be raises), then write again.
                    self._make_folder(folder)
            try:
                os.link(temporary, path)
            except FileExistsError:
                _refuse_folder(path)
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                with contextlib.nullcontext() if locked else self.locked(path):
                    if os.path.lexists(path):
                        _refuse_folder(path)
                        return False
                    self._write(path, data)
                    return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._sync_dir(folder)
        return True

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        with self.locked(path):
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            self._write(path, data)
            return True

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        with self.locked(path):
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            os.unlink(path)
            self._sync_dir(os.path.dirname(path))
            return True

    def discard_empty_dirs(self, path: str, stop: str) -> None:
        # docstring inherited
        folder = os.path.dirname(path)
        while folder.startswith(stop + "/"):
            try:
                os.rmdir(folder)  # fails, as it should, when not empty
            except OSError:
                return
            folder = os.path.dirname(folder)

    @contextlib.contextmanager
    def locked(self, path: str) -> Iterator[None]:
        """Hold ``<path>.lock`` for the block; raise ``RefLocked`` after ``timeout``."""
        lock = path + ".lock"
        identity = self._acquire(lock)
        try:
            yield
        finally:
            # Unlink only our own lock: if someone cleared it by hand and another
            # writer took it since, the file there is theirs.
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(lock)
                if (stat.st_dev, stat.st_ino) == identity:
                    os.unlink(lock)

    def _acquire(self, lock: str) -> tuple[int, int]:
        owner = json.dumps({"pid": os.getpid(), "host": hostname(), "time": time.time()})
        deadline = time.monotonic() + self.timeout
        delay = 0.0005
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if time.monotonic() >= deadline:
                    error = self._held(lock)
                    if error is not None:
                        raise error from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.01)
                continue
            except FileNotFoundError:
                # No folder yet, or it was just removed as empty. A file where a
                # parent folder should be raises here: a name conflict.
                self._make_folder(os.path.dirname(lock))
                continue
            try:
                os.write(fd, owner.encode())
                stat = os.fstat(fd)
            finally:
                os.close(fd)
            return stat.st_dev, stat.st_ino

    def _held(self, lock: str) -> RefLocked | None:
        """The error describing a held ``lock``, or None if it has just gone."""
        try:
            with open(lock, "rb") as file:
                raw = file.read()
                mtime = os.fstat(file.fileno()).st_mtime
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
        except ValueError:  # killed between create and write: an empty lock
            record = {}
        if not isinstance(record, dict):
            record = {}
        owner, alive = describe_owner(record.get("pid"), record.get("host"))
        return RefLocked(
            f"timed out after {self.timeout:g}s waiting for a lock",
            lock,
            owner,
            max(0.0, time.time() - mtime),
            alive,
            remove_command("file", lock),
        )

    def _write(self, path: str, data: bytes) -> None:
        folder, base = os.path.split(path)
        temporary = os.path.join(folder, f".{base}.tmp")  # ours alone: we hold the lock
        try:
            self._write_file(temporary, data)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_dir(folder)

    def _write_file(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _make_folder(self, folder: str) -> None:
        """Create ``folder`` and its missing parents; with fsync, flush each new one's parent.

        Called only after a write met ENOENT: most writes go to folders that exist.
        """
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise  # a file where a folder should be
            return  # a concurrent writer made it
        except FileNotFoundError:
            parent = os.path.dirname(folder)
            if parent == folder:
                raise
            self._make_folder(parent)
            self._make_folder(folder)
            return
        # A new folder is an entry in its parent: without this a power loss could
        # take the folder, and the fsynced file in it, away.
        self._sync_dir(os.path.dirname(folder))

    def _sync_dir(self, folder: str) -> None:
        if not self.fsync:
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
