"""Every committed pack of a root, for lookups (:class:`PackSet`): each pack's index
(:mod:`cas.objects.packs`), or a multi-pack index over many (:mod:`cas.objects.multipack`),
kept on this machine between processes for a remote root (:mod:`cas.objects.index_cache`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from cas.errors import IntegrityError
from cas.objects import index_cache, multipack
from cas.objects.ids import ObjectId, is_id
from cas.objects.packs import NEAR, PACKS, PackIndex, Where, index_path, pack_path
from cas.storage import Stat, Storage

#: In a local file an object this large is read on its own, not in a range with its
#: neighbours: copying it out of the range (new memory, faulted in) costs more than
#: the read saved. Measured on the chunks of a checkpoint (about 1 MiB each, read in
#: pairs): 0.68 ms a pair as one range and two copies, 0.14 ms as two reads.
OWN_READ: Final = 256 << 10

#: Index reads at once when a listing finds many new packs on an object store.
_FETCH_THREADS: Final = 16


class PackSet:
    """Every committed pack of a root, for lookups: an index per pack, loaded once and
    refreshed (one listing) when a lookup misses, so packs written by other processes
    are found. Threads share it.

    A listing that shows multi-pack indexes (:mod:`cas.objects.multipack`) reads the
    newest one that verifies, and then only the indexes of the packs it does not cover
    (in parallel on an object store); lookups ask it first, about the packs the listing
    shows. A listing that finds :data:`~cas.objects.multipack.WRITE_FROM` or more packs
    no multi-pack index covers writes one covering every pack (best effort).

    With a ``cache`` folder (a remote root's, on this machine) the indexes read or
    written are kept there between processes: a pack and its index are write-once and
    named by the pack's hash, so a cached index is never stale, only perhaps of a pack
    gc has removed since. A new process then answers lookups from the cache without a
    listing, and lists (reading only indexes it has not cached) on its first miss, or
    when a pack the cache named is gone. What needs every pack of the root (``ids``,
    ``index``, ``entries``: gc, fsck, transfers) always lists first, and reads every
    pack's own index."""

    def __init__(self, storage: Storage, cache: Path | None = None) -> None:
        self.storage = storage
        self.cache = cache
        self._indexes: dict[str, PackIndex] = {}
        self._order: list[PackIndex] = []  # newest first: recent packs answer most
        self._lock = threading.Lock()
        self._loaded = False  # the cache read, or a listing made
        self._listed = False  # a listing made: every committed pack is known
        self._live: set[str] = set()  # the committed packs the last listing showed
        self._midx: multipack.MultiPackIndex | None = None
        self._midx_live: frozenset[int] = frozenset()  # its pack numbers that exist
        #: Indexes that do not read (pack id -> why): skipped, so the rest stay readable;
        #: fsck reports them and ``--repair`` rebuilds them from their packs.
        self.damaged: dict[str, str] = {}
        self.damaged_midx: dict[str, str] = {}  # name -> why: not read again

    def _load(self) -> None:
        """Before the first lookup: the cached indexes, else a listing."""
        if self.cache is None:
            return self.refresh()
        with self._lock:
            for pack_id in self._cached_ids():
                index = self._from_cache(pack_id)
                if index is not None:
                    self._indexes.setdefault(pack_id, index)
            self._order = [self._indexes[p] for p in sorted(self._indexes)]
            for name in self._cached_midx():
                midx = self._midx_from_cache(name)
                if midx is not None:  # no listing yet: every pack it names is taken to exist
                    self._use(midx, set(midx.packs))
                    break
            self._loaded = True
        return None

    def refresh(self, *, reread: bool = False) -> None:
        """Read the indexes of packs not seen yet (and forget removed ones); with
        ``reread``, every pack's own index again from the root, not from memory, the
        cache or a multi-pack index (fsck: what the root holds is what is checked)."""
        names = self.storage.listdir(PACKS)
        ids = {n[:-4] for n in names if n.endswith(".idx") and is_id(n[:-4])}
        with self._lock:
            if reread:
                self._indexes.clear()
                self.damaged.clear()
                self._midx = None
            else:
                self._pick_midx(multipack.names_in(names), ids)
            self._live = ids
            covered = self._covered()
            self._read_indexes(ids - self._indexes.keys() - self.damaged.keys() - covered, reread)
            for gone in self.damaged.keys() - ids:
                del self.damaged[gone]
            for gone in self._indexes.keys() - ids:
                del self._indexes[gone]
            if self.cache is not None:
                for gone in self._cached_ids() - ids:
                    (self.cache / f"{gone}.idx").unlink(missing_ok=True)
                for gone in set(self._cached_midx()) - set(multipack.names_in(names)):
                    (self.cache / f"{gone}{multipack.SUFFIX}").unlink(missing_ok=True)
            self._order = [self._indexes[p] for p in sorted(self._indexes)]
            self._loaded = self._listed = True
            uncovered = len(ids - covered - self.damaged.keys())
        if not reread and uncovered >= multipack.WRITE_FROM:
            self.write_midx()

    def covers_all(self) -> bool:
        """True if the multi-pack index in use covers every pack the listing showed and
        names none it did not (gc then keeps it rather than write another)."""
        with self._lock:
            midx = self._midx
            if midx is None:
                return False
            return (
                self._live - self.damaged.keys() <= self._covered() <= set(midx.packs) <= self._live
            )

    def _covered(self) -> set[str]:
        return set() if self._midx is None else self._live & set(self._midx.packs)

    def _use(self, midx: multipack.MultiPackIndex | None, live: set[str]) -> None:
        self._midx = midx
        numbers = () if midx is None else range(len(midx.packs))
        self._midx_live = frozenset(n for n in numbers if midx and midx.packs[n] in live)

    def _pick_midx(self, names: list[str], live: set[str]) -> None:
        """Use the newest multi-pack index of ``names`` that reads (one read, unless it
        is the one in use or cached); none if none does."""
        have = self._midx
        for name in multipack.newest_first(
            self.storage, [n for n in names if n not in self.damaged_midx]
        ):
            if have is not None and have.name == name:
                return self._use(have, live)
            midx = self._midx_from_cache(name)
            if midx is None:
                try:
                    raw = self.storage.read(multipack.midx_path(name))
                    midx = multipack.MultiPackIndex(name, raw)
                except FileNotFoundError:
                    continue  # removed by gc since the listing
                except IntegrityError as exc:  # derived: the packs' own indexes serve
                    self.damaged_midx[name] = str(exc)
                    continue
                self._to_cache(f"{name}{multipack.SUFFIX}", raw)
            return self._use(midx, live)
        return self._use(None, live)

    def _read_indexes(self, pack_ids: set[str], reread: bool = False) -> None:
        """Read the indexes of ``pack_ids``: this machine's copies, then the root's (in
        parallel on an object store). Called with the lock held."""
        todo = []
        for pack_id in sorted(pack_ids):
            index = None if reread else self._from_cache(pack_id)
            if index is None:
                todo.append(pack_id)
            else:
                self._indexes[pack_id] = index
        for pack_id, got in zip(todo, self._fetch(todo), strict=True):
            if isinstance(got, IntegrityError):
                self.damaged[pack_id] = str(got)
            elif got is not None:  # None: removed by gc since the listing
                self._indexes[pack_id] = got
                self._to_cache(f"{pack_id}.idx", got.raw)

    def _fetch(self, pack_ids: list[str]) -> Iterable[PackIndex | IntegrityError | None]:
        def one(pack_id: str) -> PackIndex | IntegrityError | None:
            try:
                return PackIndex(pack_id, self.storage.read(index_path(pack_id)))
            except FileNotFoundError:
                return None
            except IntegrityError as exc:
                return exc

        threads = min(self.storage.io_threads, _FETCH_THREADS, len(pack_ids))
        if threads < 2:
            return [one(p) for p in pack_ids]
        with ThreadPoolExecutor(threads, thread_name_prefix="cas-pack-index") as pool:
            return list(pool.map(one, pack_ids))

    def write_midx(self) -> str | None:
        """Write a multi-pack index covering every pack this set knows, and use it: its
        name, or None if there is nothing to cover or it could not be written (logged:
        it only saves reads)."""
        with self._lock:
            known = self._live - self.damaged.keys()
            rows = list(multipack.rows_of(self._indexes, self._midx, known))
        if not rows:
            return None
        name, raw = multipack.build(rows)
        try:
            self.storage.write_atomic(multipack.midx_path(name), raw)
        except Exception as exc:  # noqa: BLE001 - best effort: readers read the .idx files
            logging.getLogger("cas").warning("multi-pack index not written: %s", exc)
            return None
        self._to_cache(f"{name}{multipack.SUFFIX}", raw)
        with self._lock:
            self._use(multipack.MultiPackIndex(name, raw), self._live)
        return name

    def _cached_ids(self) -> set[str]:
        assert self.cache is not None
        return set(index_cache.names(self.cache, ".idx"))

    def _cached_midx(self) -> list[str]:
        return [] if self.cache is None else index_cache.names(self.cache, multipack.SUFFIX)

    def _from_cache(self, pack_id: str) -> PackIndex | None:
        if self.cache is None:
            return None
        return index_cache.get(self.cache, f"{pack_id}.idx", lambda raw: PackIndex(pack_id, raw))

    def _midx_from_cache(self, name: str) -> multipack.MultiPackIndex | None:
        if self.cache is None:
            return None
        file = f"{name}{multipack.SUFFIX}"
        return index_cache.get(self.cache, file, lambda raw: multipack.MultiPackIndex(name, raw))

    def _to_cache(self, file: str, raw: bytes) -> None:
        if self.cache is not None:
            index_cache.put(self.cache, file, raw)

    def add(self, pack_id: str, index: bytes) -> None:
        """Make a pack this process just committed visible without a listing."""
        with self._lock:
            self._live.add(pack_id)
            if pack_id not in self._indexes:
                self._indexes[pack_id] = PackIndex(pack_id, index)
                self._order.insert(0, self._indexes[pack_id])
        self._to_cache(f"{pack_id}.idx", index)

    def find(self, oid: ObjectId, *, refresh: bool = False) -> Where | None:
        if not self._loaded:
            self._load()
        elif refresh:
            self.refresh()
        where = self._find(oid)
        if where is None and not self._listed:  # answered from the cache only so far
            self.refresh()
            where = self._find(oid)
        return where

    def _find(self, oid: ObjectId) -> Where | None:
        midx = self._midx
        if midx is not None:
            where = midx.find(oid, self._midx_live)
            if where is not None:
                return where
        for idx in self._order:
            where = idx.find(oid)
            if where is not None:
                return where
        return None

    def before(self, where: Where) -> tuple[ObjectId, Where] | None:
        """The object just before ``where`` in its pack (:meth:`PackIndex.before`);
        None for a pack whose index was not read (a multi-pack index answered)."""
        index = self._indexes.get(where.pack)
        return None if index is None else index.before(where)

    def _complete(self) -> None:
        """Every committed pack's own index read (gc, fsck, transfers need them all)."""
        if not self._listed:
            self.refresh()
        with self._lock:
            missing = self._live - self._indexes.keys() - self.damaged.keys()
            if missing:
                self._read_indexes(missing)
                self._live -= missing - self._indexes.keys() - self.damaged.keys()
                self._order = [self._indexes[p] for p in sorted(self._indexes)]

    def ids(self) -> list[str]:
        self._complete()
        return sorted(self._indexes)

    def index(self, pack_id: str) -> PackIndex:
        self._complete()
        return self._indexes[pack_id]

    def entries(self) -> Iterator[tuple[ObjectId, Where]]:
        for pack_id in self.ids():
            yield from self._indexes[pack_id].entries()

    def stat(self, pack_id: str) -> Stat | None:
        return self.storage.stat(pack_path(pack_id))

    def read(self, where: Where) -> bytes:
        return self.storage.read_range(pack_path(where.pack), where.offset, where.length)

    def read_many(self, wheres: list[Where]) -> list[bytes]:
        """The stored bytes of objects of one pack, in order, in as few reads as their
        ranges allow: objects in order and no further apart than :data:`NEAR` are read
        as one range (the frames between them are read and dropped); in a local file,
        an object of :data:`OWN_READ` bytes or more is read alone."""
        if not wheres:
            return []
        pack = wheres[0].pack
        local = self.storage.local_dir is not None
        spans: list[tuple[int, int]] = []
        alone = False  # the last span is a large object of a local file
        for w in wheres:
            large = local and w.length >= OWN_READ
            if spans and not (large or alone) and 0 <= w.offset - spans[-1][1] <= NEAR:
                spans[-1] = (spans[-1][0], w.offset + w.length)
            else:
                spans.append((w.offset, w.offset + w.length))
            alone = large
        blobs = self.storage.read_ranges(pack_path(pack), spans)
        out: list[bytes] = []
        i = 0
        for (start, _end), blob in zip(spans, blobs, strict=True):
            view = memoryview(blob)
            while i < len(wheres) and wheres[i].offset < start + len(blob):
                w = wheres[i]
                whole = w.offset == start and w.length == len(blob)
                out.append(
                    blob if whole else bytes(view[w.offset - start : w.offset - start + w.length])
                )
                i += 1
        return out

    def touch(self, pack_id: str) -> bool:
        """Refresh a pack's age (a dedup hit on one of its objects), index last."""
        return self.storage.touch(pack_path(pack_id)) and self.storage.touch(index_path(pack_id))
