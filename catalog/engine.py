"""The LMDB environment: opening it once per process, transactions, map growth.

Map growth rule: a new catalog maps 64 MiB. Before a write, the map is grown
(doubled) when the pages in use plus the caller's estimate would not fit; a write that
still hits ``MapFullError`` is aborted, the map doubled, and the transaction run again
from the start (the write functions are pure over their transaction, so a retry is
safe). When another process grew the map, LMDB answers ``MDB_MAP_RESIZED`` at
``txn_begin``; we then adopt the size recorded in the file (``set_mapsize(0)``) and
retry. ``set_mapsize`` needs no transaction of this process open, which the
per-environment lock guarantees: every transaction of the process runs under it.

Durability: the catalog is an index that ``rebuild`` recreates, so it does not need
every commit on disk, but it must never be *corrupt*. LMDB's ``MDB_NOSYNC`` keeps
integrity only if the filesystem preserves write order (LMDB's documentation; with
``MDB_WRITEMAP`` not even then), so it is not used. ``metasync=False``
(``MDB_NOMETASYNC``) is: data pages are fsynced at each commit, the meta page is not,
so a system crash can undo the last committed transaction but never corrupts the file
(LMDB keeps ACI). A process crash loses nothing: the OS holds the written pages.
Measured here: ~0.18 ms per commit versus ~0.28 ms with full sync.

``durable=False`` opens with ``MDB_NOSYNC`` for owners that turned durability off
everywhere (a cas store opened with ``fsync=False``): a process crash still loses
nothing, but a system crash may leave the file needing a rebuild (``cas reindex``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from . import keys
from .errors import CatalogDamaged, CatalogError, FormatMismatch

T = TypeVar("T")

if TYPE_CHECKING:
    Txn = lmdb.Transaction[bytes]

DEFAULT_MAP_SIZE = 64 << 20
MAX_READERS = 256
# MDB_WRITEMAP, measured here (400,000 records, 10k per transaction): register 11.7k/s
# with it vs 11.4k/s without, within noise; a 300,000-record rebuild 30.7 s vs 22.4 s.
# No gain, and LMDB's integrity promises are weaker with it, so it stays off.
WRITEMAP = False
_RETRIES = 64
# What LMDB raises when its files are not a sound environment: a meta page or header
# overwritten or truncated (MDB_INVALID, MDB_VERSION_MISMATCH, a map size of garbage
# that cannot be mapped), a page that does not parse (MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
# and MDB_BAD_TXN for the transaction that met it), a lock file of garbage (EINVAL).
_DAMAGE_AT_OPEN = (
    lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError, lmdb.PageNotFoundError,
    lmdb.PanicError, lmdb.BadTxnError, lmdb.BadRslotError, lmdb.IncompatibleError,
    lmdb.InvalidParameterError, lmdb.MemoryError,
)  # fmt: skip
_DAMAGE = (
    lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError, lmdb.PageNotFoundError,
    lmdb.PanicError, lmdb.BadTxnError,
)  # fmt: skip


class _Shared:
    """One opened environment, shared by every ``Engine`` of a process on that path.

    LMDB forbids opening one environment twice in a process (closing either would drop
    the other's locks), so engines on the same directory share this and its lock.
    """

    def __init__(self, env: lmdb.Environment, dbs: dict[bytes, Any], readonly: bool) -> None:
        self.env = env
        self.dbs = dbs
        self.readonly = readonly
        self.lock = threading.RLock()
        self.users = 0
        self.pid = os.getpid()
        self.growths = 0
        self.durable = True


_OPEN: dict[tuple[int, int], _Shared] = {}
_OPEN_LOCK = threading.Lock()


class Engine:
    """Transactions over the catalog's environment, with map growth and retries."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        map_size: int | None,
        readonly: bool,
        durable: bool = True,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if map_size is not None and map_size <= 0:
            raise CatalogError(f"map_size must be positive, got {map_size}")
        if readonly and not (self.path / "data.mdb").exists():
            raise CatalogError(f"no catalog at {self.path} to open read-only")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        st = self.path.stat()
        self._key = (st.st_dev, st.st_ino)
        with _OPEN_LOCK:
            shared = _OPEN.get(self._key)
            if shared is not None and shared.pid != os.getpid():
                shared = None  # inherited across fork: LMDB handles must not be reused
            if shared is not None and shared.readonly and not readonly:
                raise CatalogError(
                    f"catalog {self.path} is already open read-only in this process; "
                    "close it before opening it for writing"
                )
            if shared is None:
                shared = _open(self.path, map_size, readonly, durable)
                _OPEN[self._key] = shared
            elif map_size is not None:
                with shared.lock:
                    _resize_at_least(shared, map_size)
            shared.users += 1
        self._shared: _Shared | None = shared

    # -- lifecycle ---------------------------------------------------------------

    @property
    def shared(self) -> _Shared:
        if self._shared is None:
            raise CatalogError(f"catalog {self.path} is closed")
        return self._shared

    def close(self) -> None:
        """Release this engine; the environment closes with its last user."""
        shared, self._shared = self._shared, None
        if shared is None:
            return
        with _OPEN_LOCK:
            shared.users -= 1
            if shared.users == 0:
                if _OPEN.get(self._key) is shared:
                    del _OPEN[self._key]
                with shared.lock:
                    shared.env.close()

    def db(self, name: bytes) -> Any:
        """The handle of a sub-database."""
        return self.shared.dbs[name]

    # -- transactions ------------------------------------------------------------

    def read(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in a read transaction (a consistent snapshot)."""
        shared = self.shared
        with shared.lock:
            for _ in range(_RETRIES):
                try:
                    with shared.env.begin(buffers=False) as txn:
                        return fn(txn)
                except lmdb.MapResizedError:
                    _adopt(shared, self.path)  # another process grew the map
                except lmdb.Error as exc:
                    raise _translated(self.path, exc) from exc
        raise CatalogError(f"catalog {self.path}: the map kept being resized under a read")

    def write(self, fn: Callable[[Txn], T], need: int = 0) -> T:
        """Run ``fn`` in one write transaction, growing the map and retrying when full.

        ``need`` estimates the bytes the transaction adds; the map is grown ahead so
        that big batches rarely run twice. ``fn`` must act only on its transaction.
        """
        shared = self.shared
        if shared.readonly or self.readonly:
            raise CatalogError(f"catalog {self.path} is open read-only")
        with shared.lock:
            for _ in range(_RETRIES):
                _make_room(shared, need)
                try:
                    with shared.env.begin(write=True) as txn:
                        return fn(txn)
                except lmdb.MapFullError:
                    _grow(shared, 0)
                except lmdb.MapResizedError:
                    _adopt(shared, self.path)
                except lmdb.Error as exc:
                    raise _translated(self.path, exc) from exc
        raise CatalogError(f"catalog {self.path}: a write did not fit after {_RETRIES} growths")

    def reopen(self) -> None:
        """Close the environment and open it again (every engine of the process on this
        path follows). LMDB keeps each page a write transaction dirtied, for reuse,
        until its environment closes: after one transaction that indexed 100,000
        records, about 105 MiB the process would otherwise hold for nothing."""
        shared = self.shared
        with _OPEN_LOCK, shared.lock:
            size = shared.env.info()["map_size"]
            shared.env.close()
            fresh = _open(self.path, size, shared.readonly, shared.durable)
            shared.env, shared.dbs = fresh.env, fresh.dbs

    def info(self) -> dict[str, int]:
        """Map size, bytes in use, page size and growths done by this process."""
        shared = self.shared
        with shared.lock:
            info = shared.env.info()
            psize = shared.env.stat()["psize"]
            return {
                "map_size": int(info["map_size"]),
                "used_bytes": int((info["last_pgno"] + 1) * psize),
                "page_size": int(psize),
                "map_growths": shared.growths,
            }


def _adopt(shared: _Shared, path: Path) -> None:
    """Adopt the map size the file records (another process grew it)."""
    try:
        shared.env.set_mapsize(0)
    except lmdb.MemoryError as exc:  # a size of garbage in a damaged meta page
        raise CatalogDamaged(str(path), f"catalog {path} is damaged: {exc}") from exc


def _translated(path: Path, exc: lmdb.Error) -> CatalogError:
    if isinstance(exc, _DAMAGE):
        return CatalogDamaged(str(path), f"catalog {path} is damaged: {exc}")
    return CatalogError(f"catalog {path}: {exc}")


def _open(path: Path, map_size: int | None, readonly: bool, durable: bool = True) -> _Shared:
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size or DEFAULT_MAP_SIZE,
            subdir=True,
            readonly=readonly,
            lock=True,
            sync=durable,  # durable=False: the owner chose speed over crash safety
            metasync=False,  # see the module docstring: integrity kept, last txn may undo
            writemap=WRITEMAP,
            max_dbs=len(keys.ALL_DBS) + 2,
            max_readers=MAX_READERS,
            readahead=False,  # random access index: readahead only pollutes the cache
        )
    except _DAMAGE_AT_OPEN as exc:
        raise CatalogDamaged(str(path), f"catalog {path} is damaged: {exc}") from exc
    except lmdb.Error as exc:
        raise CatalogError(f"cannot open catalog at {path}: {exc}") from exc
    try:
        shared = _opened(env, path, map_size, readonly)
        shared.durable = durable
        return shared
    except FormatMismatch:
        env.close()
        raise
    except _DAMAGE_AT_OPEN as exc:
        env.close()
        raise CatalogDamaged(str(path), f"catalog {path} is damaged: {exc}") from exc
    except lmdb.Error as exc:
        env.close()
        raise CatalogError(f"cannot open catalog at {path}: {exc}") from exc


def _opened(env: lmdb.Environment, path: Path, map_size: int | None, readonly: bool) -> _Shared:
    """The environment's map adopted, its sub-databases opened and one read run, so
    files that are not a sound environment are found here, not by a later call."""
    # An existing file records the size its writers last used; opening with a smaller
    # number maps only what is in use, so adopt the recorded size, then the asked one.
    env.set_mapsize(0)
    if map_size is not None and map_size > env.info()["map_size"]:
        env.set_mapsize(map_size)
    env.reader_check()  # clear reader slots left by processes that died
    for attempt in range(_RETRIES):
        try:
            dbs = _open_dbs(env, path, readonly)
            with env.begin(buffers=False) as txn:  # a read: a lock file of garbage fails it
                txn.get(b"format", db=dbs[keys.META])
            return _Shared(env, dbs, readonly)
        except lmdb.MapResizedError:
            # Another process grew the map between our adopting its size and our
            # first transaction: adopt the new size and try again.
            if attempt == _RETRIES - 1:
                raise
            env.set_mapsize(0)
    raise AssertionError("unreachable")


def _open_dbs(env: lmdb.Environment, path: Path, readonly: bool) -> dict[bytes, Any]:
    """The sub-databases (created, and the format recorded, unless ``readonly``)."""
    dbs: dict[bytes, Any] = {}
    if readonly:
        for name in keys.ALL_DBS:
            dup = name in keys.DUPSORT_DBS
            try:
                dbs[name] = env.open_db(name, create=False, dupsort=dup, dupfixed=dup)
            except lmdb.NotFoundError:
                if name != keys.CHANGES:  # format 2 has none: nothing is marked
                    raise
        return dbs
    with env.begin(write=True) as txn:
        for name in keys.ALL_DBS:
            dup = name in keys.DUPSORT_DBS
            dbs[name] = env.open_db(name, txn=txn, dupsort=dup, dupfixed=dup)
        meta = dbs[keys.META]
        found = txn.get(b"format", db=meta)
        if found is None or found in keys.OLDER_FORMATS:
            txn.put(b"format", keys.FORMAT, db=meta)
        elif found != keys.FORMAT:
            raise FormatMismatch(
                str(path), found,
                f"catalog {path} has format {found!r}, this version reads {keys.FORMAT!r}; "
                "delete the folder and rebuild it",
            )  # fmt: skip
    return dbs


def _resize_at_least(shared: _Shared, size: int) -> None:
    if size > shared.env.info()["map_size"]:
        shared.env.set_mapsize(size)


def _make_room(shared: _Shared, need: int) -> None:
    info = shared.env.info()
    used = (info["last_pgno"] + 1) * shared.env.stat()["psize"]
    if used + need > info["map_size"] * 3 // 4:
        _grow(shared, used + need)


def _grow(shared: _Shared, at_least: int) -> None:
    """Double the map (past ``at_least`` bytes), after adopting any growth by others."""
    env = shared.env
    before = env.info()["map_size"]
    env.set_mapsize(0)
    size = max(before, env.info()["map_size"]) * 2
    while size < at_least * 2:
        size *= 2
    env.set_mapsize(size)
    shared.growths += 1
