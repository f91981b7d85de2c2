"""Packs: many objects in one write-once file, found through a write-once index.

::

    packs/<pack id>.pack   b"CASPACK1", then per object: its 32-byte id, a u32 length,
                           and exactly the bytes a loose object file holds (its own
                           16-byte header and body); so a pack whose index is lost
                           can be read on its own (:func:`scan`)
    packs/<pack id>.idx    b"CASIDX01", u32 count, 256 x u32 fan-out (cumulative count
                           of ids whose first byte is <= i), count x (32-byte id, u64
                           offset, u32 length) sorted by id, then the 32-byte pack id
                           and the BLAKE3 of every byte before it

The pack id is the BLAKE3 of the pack file, so a pack names its bytes as an object
does. The pack is written first and its index second: a pack without an index is
invisible (a killed writer leaves only it, and gc removes it after the grace period).
A packed object is read by its range and verified against its id exactly as a loose one.
"""

from __future__ import annotations

import bisect
import logging
import struct
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import blake3

from cas.errors import IntegrityError
from cas.objects import index_cache, multipack
from cas.objects.ids import ObjectId, is_id
from cas.storage import Stat, Storage

PACKS: Final = "packs"
PACK_MAGIC: Final = b"CASPACK1"
IDX_MAGIC: Final = b"CASIDX01"
_ENTRY: Final = struct.Struct("<32sQI")
_COUNT: Final = struct.Struct("<I")
_FANOUT: Final = struct.Struct("<256I")
_HEAD: Final = len(IDX_MAGIC) + _COUNT.size + _FANOUT.size
_FRAME: Final = struct.Struct("<32sI")  # before each object in a pack: id, stored length

#: A pack is closed when its objects reach this many bytes: large enough that a folder
#: of thousands of small files is a handful of requests, small enough to be rewritten
#: cheaply by gc and held in memory while it is written (restic: 16 MiB, Xet: 64 MiB).
PACK_SIZE: Final = 16 << 20


#: Objects of one pack this close (their frames, or a few small objects between) are
#: read in one range rather than two requests.
NEAR: Final = 64 << 10

#: Index reads at once when a listing finds many new packs on an object store.
_FETCH_THREADS: Final = 16


def fanout(keys: Iterable[bytes]) -> bytes:
    """The 256-entry fan-out of sorted ``keys``: entry i counts the keys whose first
    byte is <= i (a lookup searches only the keys sharing its first byte)."""
    counts = [0] * 256
    for key in keys:
        counts[key[0]] += 1
    for i in range(1, 256):
        counts[i] += counts[i - 1]
    return _FANOUT.pack(*counts)


def search(raw: bytes, head: int, size: int, table: tuple[int, ...], key: bytes) -> int:
    """The position of the first entry of ``key`` in a table of ``size``-byte entries
    sorted by their leading 32-byte key, starting at ``head`` with fan-out ``table``;
    -1 if none. The table is searched in place: no object per entry."""
    lo = table[key[0] - 1] if key[0] else 0
    hi = table[key[0]]
    i = bisect.bisect_left(
        range(lo, hi), key, key=lambda j: raw[head + j * size : head + j * size + 32]
    )
    i += lo
    return i if i < hi and raw[head + i * size : head + i * size + 32] == key else -1


def pack_path(pack_id: str) -> str:
    return f"{PACKS}/{pack_id}.pack"


def index_path(pack_id: str) -> str:
    return f"{PACKS}/{pack_id}.idx"


@dataclass(frozen=True, slots=True)
class Where:
    """Where a packed object lies: its pack and the byte range of its stored form."""

    pack: str
    offset: int
    length: int


class PackIndex:
    """One pack's index, parsed: a sorted table searched in place (no object per entry)."""

    def __init__(self, pack_id: str, raw: bytes) -> None:
        self.pack_id = pack_id
        if len(raw) < _HEAD + 64 or raw[: len(IDX_MAGIC)] != IDX_MAGIC:
            raise IntegrityError(pack_id, f"pack index {index_path(pack_id)} is not one")
        (count,) = _COUNT.unpack_from(raw, len(IDX_MAGIC))
        body_end = _HEAD + count * _ENTRY.size
        if len(raw) != body_end + 64:
            raise IntegrityError(pack_id, f"pack index {index_path(pack_id)} is truncated")
        if blake3.blake3(raw[: body_end + 32]).digest() != raw[body_end + 32 :]:
            raise IntegrityError(pack_id, f"pack index {index_path(pack_id)} is corrupt")
        if raw[body_end : body_end + 32].hex() != pack_id:
            raise IntegrityError(pack_id, f"pack index {index_path(pack_id)} names another pack")
        self.count = count
        self._fanout = _FANOUT.unpack_from(raw, len(IDX_MAGIC) + _COUNT.size)
        self._raw = raw
        self._by_offset: list[tuple[int, int]] | None = None  # (offset, entry), built on use

    @property
    def raw(self) -> bytes:
        """The index file's bytes (kept on this machine as they are)."""
        return self._raw

    def find(self, oid: ObjectId) -> Where | None:
        i = search(self._raw, _HEAD, _ENTRY.size, self._fanout, bytes.fromhex(oid))
        if i < 0:
            return None
        _, offset, length = _ENTRY.unpack_from(self._raw, _HEAD + i * _ENTRY.size)
        return Where(self.pack_id, offset, length)

    def rows(self) -> Iterator[tuple[bytes, int, int]]:
        """(32-byte id, offset, length) of each entry, in id order."""
        return _ENTRY.iter_unpack(memoryview(self._raw)[_HEAD : _HEAD + self.count * _ENTRY.size])

    def before(self, where: Where) -> tuple[ObjectId, Where] | None:
        """The object stored just before ``where`` in the pack (only its frame between),
        or None: a record is written right after its content's root, so a reader that
        wants both can take them in one range."""
        if self._by_offset is None:
            at = [
                _ENTRY.unpack_from(self._raw, _HEAD + i * _ENTRY.size)[1] for i in range(self.count)
            ]
            self._by_offset = sorted(zip(at, range(self.count), strict=True))
        i = bisect.bisect_left(self._by_offset, (where.offset, -1)) - 1
        if i < 0:
            return None
        key, offset, length = _ENTRY.unpack_from(
            self._raw, _HEAD + self._by_offset[i][1] * _ENTRY.size
        )
        if offset + length + _FRAME.size != where.offset:
            return None
        return ObjectId(key.hex()), Where(self.pack_id, offset, length)

    def entries(self) -> Iterator[tuple[ObjectId, Where]]:
        for key, offset, length in self.rows():
            yield ObjectId(key.hex()), Where(self.pack_id, offset, length)


def build(objects: Iterable[tuple[ObjectId, bytes]]) -> tuple[str, list[bytes], bytes]:
    """(pack id, the pack's parts to write in order, its index) for ``objects``: each
    (id, stored bytes) once, in the order given."""
    parts = [PACK_MAGIC]
    hasher = blake3.blake3(PACK_MAGIC)
    offset = len(PACK_MAGIC)
    table: list[tuple[bytes, int, int]] = []
    for oid, stored in objects:
        frame = _FRAME.pack(bytes.fromhex(oid), len(stored))
        table.append((bytes.fromhex(oid), offset + len(frame), len(stored)))
        parts += (frame, stored)
        hasher.update(frame)
        hasher.update(stored)
        offset += len(frame) + len(stored)
    pack_id = hasher.hexdigest()
    table.sort()
    head = IDX_MAGIC + _COUNT.pack(len(table)) + fanout(key for key, _, _ in table)
    body = b"".join(_ENTRY.pack(*row) for row in table) + bytes.fromhex(pack_id)
    index = head + body
    return pack_id, parts, index + blake3.blake3(index).digest()


def scan(raw: bytes) -> Iterator[tuple[ObjectId, int, int]]:
    """(id, offset, length) of each object of a pack's bytes, from the pack alone (to
    salvage a pack whose index is lost); stops at the first frame that does not fit."""
    at = len(PACK_MAGIC)
    if raw[:at] != PACK_MAGIC:
        return
    while at + _FRAME.size <= len(raw):
        key, length = _FRAME.unpack_from(raw, at)
        at += _FRAME.size
        if at + length > len(raw):
            return
        yield ObjectId(key.hex()), at, length
        at += length


def write(
    storage: Storage, objects: list[tuple[ObjectId, bytes]], *, durable: bool = True
) -> tuple[str, bytes]:
    """Write one pack of ``objects`` and then its index (the commit): (pack id, index)."""
    pack_id, parts, index = build(objects)
    storage.write_atomic(pack_path(pack_id), b"".join(parts), durable=durable)
    storage.write_atomic(index_path(pack_id), index, durable=durable)
    return pack_id, index


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
        as one range (the frames between them are read and dropped)."""
        if not wheres:
            return []
        pack = wheres[0].pack
        spans: list[tuple[int, int]] = []
        for w in wheres:
            if spans and 0 <= w.offset - spans[-1][1] <= NEAR:
                spans[-1] = (spans[-1][0], w.offset + w.length)
            else:
                spans.append((w.offset, w.offset + w.length))
        blobs = self.storage.read_ranges(pack_path(pack), spans)
        out: list[bytes] = []
        i = 0
        for (start, _end), blob in zip(spans, blobs, strict=True):
            view = memoryview(blob)
            while i < len(wheres) and wheres[i].offset < start + len(blob):
                w = wheres[i]
                out.append(bytes(view[w.offset - start : w.offset - start + w.length]))
                i += 1
        return out

    def touch(self, pack_id: str) -> bool:
        """Refresh a pack's age (a dedup hit on one of its objects), index last."""
        return self.storage.touch(pack_path(pack_id)) and self.storage.touch(index_path(pack_id))
