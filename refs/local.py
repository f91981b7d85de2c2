"""Compare-and-swap on a local (or NFS) filesystem: a lock file, then rename.

As git and dulwich (``file.py``) do for ``replace`` and ``remove``: ``<path>.lock``
is created exclusively and holds its owner record (pid, host, time, process start
time, boot id, pid namespace, lease: ``refs/owner.py``); under it the file is
re-read and compared, the new content is written to a temporary file, flushed with
fsync, renamed over ``<path>``, and the folder is fsynced; then the lock goes. The
lock is a complete temporary file hard-linked to ``<path>.lock`` (which fails if a
lock is there), so no lock is ever empty; where the filesystem has no hard links it
is made with ``O_CREAT | O_EXCL`` and then written. ``create`` needs no lock: a
complete, fsynced temporary file is hard-linked to ``<path>`` (without hard links, it
takes the lock instead).

A lock left behind by a process that is provably dead (same host, boot and pid
namespace: no process of that pid and start time runs), or whose lease ended (a
writer on another host sharing the folder), is broken by the next writer at once.
Breaking is serialized by ``.<base>.lock.break``, held with ``flock`` (which the
kernel lets go of when its holder dies) and deleted after use: under it the breaker
checks that the lock is still the very file it judged (inode and bytes), so a lock
taken meanwhile by a live writer is never broken. Locks of live owners, and locks
written before owners recorded a lease, are waited for a bounded time with backoff,
then raise :class:`~refs.RefLocked` naming the owner, the lock's age, whether the
owner is still running and the ``rm`` command that clears it. :meth:`read` ignores
locks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from .conditional import Conditional
from .errors import RefLocked
from .files import read_file, read_file_stat
from .owner import DEFAULT_LEASE, Verdict, describe, judge, owner_json, remove_command

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock (Windows): stale locks are reported only
    _CAN_BREAK = False
else:
    _CAN_BREAK = True

_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
# link(2) errors that mean "this filesystem has no hard links": fall back to the lock.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}

# A writer waiting for a lock first looks at its owner after this long (a live holder
# keeps it for well under a millisecond), then again every _LOOK_EVERY seconds.
_FIRST_LOOK: Final = 0.002
_LOOK_EVERY: Final = 0.05
# One thread of this process breaks locks at a time: flock on NFS is per process.
_BREAKING = threading.Lock()

# (device, inode) and bytes of a lock file: the very file a breaker judged.
_Seen = tuple[tuple[int, int], bytes, float]


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


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _still_ours(lock: str, identity: tuple[int, int]) -> bool:
    try:
        stat = os.stat(lock)
    except FileNotFoundError:
        return False
    return (stat.st_dev, stat.st_ino) == identity


def _take_guard(guard: str) -> int | None:
    """An open descriptor of ``guard`` holding its flock, or None if another holds it.

    The guard is deleted by whoever held it, after use: a descriptor whose file is no
    longer the one at ``guard`` (taken by a breaker that then deleted it) is let go.
    """
    try:
        fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None  # the folder went: so did the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = os.fstat(fd)
        there = os.stat(guard)
    except OSError:  # BlockingIOError: held; FileNotFoundError: deleted meanwhile
        os.close(fd)
        return None
    if (held.st_dev, held.st_ino) != (there.st_dev, there.st_ino):
        os.close(fd)
        return None
    return fd


def _drop_guard(guard: str, fd: int) -> None:
    try:
        os.unlink(guard)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _refuse_folder(path: str) -> None:
    """Raise IsADirectoryError if a folder is at ``path``: names below it, or none left."""
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "a folder is there", path) from None


class LocalConditional(Conditional):
    """Compare-and-swap on local files: ``<path>.lock`` (O_EXCL) and rename; link(2).

    Correct across threads, processes and hosts sharing the folder on a filesystem
    where O_EXCL create, link and rename are atomic (local disks; NFSv3 and later).

    ``fsync``: flush file and folder on every write (durability across power loss).
    ``timeout``: seconds a writer waits for a lock held by a live (or unknown) owner
    before raising ``RefLocked``. ``lease``: seconds this writer promises to hold a
    lock at most, recorded in it; a lock whose owner is provably dead is broken at once,
    one from another host once its lease has ended.
    """

    def __init__(
        self, *, fsync: bool = True, timeout: float = 5.0, lease: float = DEFAULT_LEASE
    ) -> None:
        self.fsync = fsync
        self.timeout = timeout
        self.lease = lease

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
                    self._write(path, data, None)
                    return True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._sync_dir(folder)
        return True

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        with self.locked(path) as mine:
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            return self._write(path, data, mine)

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
    def locked(self, path: str) -> Iterator[tuple[int, int]]:
        """Hold ``<path>.lock`` for the block (it gives the lock's device and inode);
        break it first if its owner is dead; raise ``RefLocked`` after ``timeout``."""
        lock = path + ".lock"
        identity = self._acquire(lock)
        try:
            yield identity
        finally:
            # Unlink only our own lock: if someone cleared it by hand and another
            # writer took it since, the file there is theirs.
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(lock)
                if (stat.st_dev, stat.st_ino) == identity:
                    os.unlink(lock)

    def _acquire(self, lock: str) -> tuple[int, int]:
        owner = owner_json(self.lease, time.time())
        start = time.monotonic()
        deadline, look = start + self.timeout, start + _FIRST_LOOK
        delay = 0.0005
        made: tuple[str, tuple[int, int]] | None = None  # our complete lock, not yet linked
        try:
            while True:
                try:
                    if made is None:
                        made = self._lock_file(lock, owner)
                    return self._link_lock(made, lock, owner)
                except FileExistsError:
                    now = time.monotonic()
                    if now >= look:
                        look = now + _LOOK_EVERY
                        if self._break_if_dead(lock):
                            continue
                    if now >= deadline:
                        error = self._held(lock)
                        if error is not None:
                            raise error from None
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.01)
                except FileNotFoundError:
                    # No folder yet, or it was just removed as empty. A file where a
                    # parent folder should be raises here: a name conflict.
                    if made is not None:
                        _unlink(made[0])
                        made = None
                    self._make_folder(os.path.dirname(lock))
        finally:
            if made is not None:
                _unlink(made[0])

    @staticmethod
    def _lock_file(lock: str, owner: bytes) -> tuple[str, tuple[int, int]]:
        """A temporary file beside ``lock`` holding ``owner``: its path and identity."""
        folder, base = os.path.split(lock)
        temporary = os.path.join(folder, f".{base}.{os.getpid()}.{random.getrandbits(48):012x}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, owner)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        return temporary, (stat.st_dev, stat.st_ino)

    @staticmethod
    def _link_lock(made: tuple[str, tuple[int, int]], lock: str, owner: bytes) -> tuple[int, int]:
        """Make ``lock`` our complete lock file (FileExistsError if a lock is there)."""
        try:
            os.link(made[0], lock)  # complete before it is visible: never an empty lock
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, owner)
                stat = os.fstat(fd)
            finally:
                os.close(fd)
            return stat.st_dev, stat.st_ino
        return made[1]

    def _look(self, lock: str) -> _Seen | None:
        """The lock file's identity, bytes and modification time; None if it is gone."""
        try:
            data, stat = read_file_stat(lock)
        except _ABSENT:
            return None
        return (stat.st_dev, stat.st_ino), data, stat.st_mtime

    def _verdict(self, seen: _Seen) -> tuple[dict[str, Any], Verdict, float]:
        """The owner record in a lock, whether its owner is dead, and the lock's age."""
        _, raw, mtime = seen
        try:
            record = json.loads(raw)
        except ValueError:  # created, not yet written (no hard links), or damaged
            record = None
        now = time.time()
        age = now - mtime
        if not isinstance(record, dict):
            # No owner to judge. An owner writes its record within microseconds: one
            # that has not for longer than any lease is taken for dead.
            if age > self.lease:
                return (
                    {},
                    Verdict(None, True, f"empty, older than the lease of {self.lease:g}s"),
                    age,
                )
            return {}, Verdict(None, False, "empty: its owner is unknown"), age
        written = record.get("time")
        if isinstance(written, (int, float)) and not isinstance(written, bool):
            age = min(age, now - float(written))  # both clocks must agree it is old
        # A lock of this very process is never dead: its threads let go in `finally`.
        return record, judge(record, max(0.0, age), in_flight=True), max(0.0, age)

    def _break_if_dead(self, lock: str) -> bool:
        """Break ``lock`` if its owner is dead; True if the caller should try again now."""
        seen = self._look(lock)
        if seen is None:
            return True  # just released
        if not _CAN_BREAK or not self._verdict(seen)[1].settle:
            return False
        folder, base = os.path.split(lock)
        guard = os.path.join(folder, f".{base}.break")
        if not _BREAKING.acquire(blocking=False):
            return False
        try:
            fd = _take_guard(guard)
            if fd is None:
                return False  # another process is breaking it
            try:
                # Still the very file judged dead? Only its (dead) owner or a breaker
                # holding the guard removes a lock, so nobody replaced it meanwhile.
                now = self._look(lock)
                if now is not None and now[:2] == seen[:2]:
                    os.unlink(lock)
                    self._sync_dir(folder)
            finally:
                _drop_guard(guard, fd)
        finally:
            _BREAKING.release()
        return True

    def _held(self, lock: str) -> RefLocked | None:
        """The error describing a held ``lock``, or None if it has just gone."""
        seen = self._look(lock)
        if seen is None:
            return None
        record, verdict, age = self._verdict(seen)
        what = f"timed out after {self.timeout:g}s waiting for a lock"
        if verdict.alive is None and "lease" in verdict.reason:
            what += f" ({verdict.reason}: then the next writer breaks it)"
        return RefLocked(
            what, lock, describe(record), age, verdict.alive, remove_command("file", lock)
        )

    def _write(self, path: str, data: bytes, lock: tuple[int, int] | None) -> bool:
        """Write ``path`` by temporary file and rename; False, writing nothing, if the
        lock ``lock`` (device, inode) we held is not ours any more (broken after we
        outlived our lease, frozen)."""
        folder, base = os.path.split(path)
        unique = f"{os.getpid()}.{random.getrandbits(48):012x}"
        temporary = os.path.join(folder, f".{base}.{unique}.tmp")
        try:
            self._write_file(temporary, data)
            if lock is not None and not _still_ours(path + ".lock", lock):
                os.unlink(temporary)
                return False
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self._sync_dir(folder)
        return True

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
