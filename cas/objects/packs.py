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
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import blake3

from cas.errors import IntegrityError
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

    def _key(self, i: int) -> bytes:
        at = _HEAD + i * _ENTRY.size
        return self._raw[at : at + 32]

    def find(self, oid: ObjectId) -> Where | None:
        key = bytes.fromhex(oid)
        lo = self._fanout[key[0] - 1] if key[0] else 0
        hi = self._fanout[key[0]]
        i = bisect.bisect_left(range(lo, hi), key, key=self._key) + lo
        if i < hi and self._key(i) == key:
            _, offset, length = _ENTRY.unpack_from(self._raw, _HEAD + i * _ENTRY.size)
            return Where(self.pack_id, offset, length)
        return None

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
        for i in range(self.count):
            key, offset, length = _ENTRY.unpack_from(self._raw, _HEAD + i * _ENTRY.size)
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
    fanout = [0] * 256
    for key, _, _ in table:
        fanout[key[0]] += 1
    for i in range(1, 256):
        fanout[i] += fanout[i - 1]
    head = IDX_MAGIC + _COUNT.pack(len(table)) + _FANOUT.pack(*fanout)
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

    With a ``cache`` folder (a remote root's, on this machine) the indexes read or
    written are kept there between processes: a pack and its index are write-once and
    named by the pack's hash, so a cached index is never stale, only perhaps of a pack
    gc has removed since. A new process then answers lookups from the cache without a
    listing, and lists (reading only indexes it has not cached) on its first miss, or
    when a pack the cache named is gone. What needs every pack of the root (``ids``,
    ``entries``: gc, fsck, transfers) always lists first."""

    def __init__(self, storage: Storage, cache: Path | None = None) -> None:
        self.storage = storage
        self.cache = cache
        self._indexes: dict[str, PackIndex] = {}
        self._order: list[PackIndex] = []  # newest first: recent packs answer most
        self._lock = threading.Lock()
        self._loaded = False  # the cache read, or a listing made
        self._listed = False  # a listing made: every committed pack is known
        #: Indexes that do not read (pack id -> why): skipped, so the rest stay readable;
        #: fsck reports them and ``--repair`` rebuilds them from their packs.
        self.damaged: dict[str, str] = {}

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
            self._loaded = True
        return None

    def refresh(self, *, reread: bool = False) -> None:
        """Read the indexes of packs not seen yet (and forget removed ones); with
        ``reread``, every index again from the root, not from memory or the cache
        (fsck: what the root holds is what is checked)."""
        names = self.storage.listdir(PACKS)
        ids = {n[:-4] for n in names if n.endswith(".idx") and is_id(n[:-4])}
        with self._lock:
            if reread:
                self._indexes.clear()
                self.damaged.clear()
            new = ids - self._indexes.keys() - self.damaged.keys()
            for pack_id in sorted(new):
                index = None if reread else self._from_cache(pack_id)
                if index is None:
                    try:
                        raw = self.storage.read(index_path(pack_id))
                        index = PackIndex(pack_id, raw)
                    except FileNotFoundError:
                        continue  # removed by gc since the listing
                    except IntegrityError as exc:
                        self.damaged[pack_id] = str(exc)
                        continue
                    self._to_cache(pack_id, raw)
                self._indexes[pack_id] = index
            for gone in self.damaged.keys() - ids:
                del self.damaged[gone]
            for gone in self._indexes.keys() - ids:
                del self._indexes[gone]
            if self.cache is not None:
                for gone in self._cached_ids() - ids:
                    (self.cache / f"{gone}.idx").unlink(missing_ok=True)
            self._order = [self._indexes[p] for p in sorted(self._indexes)]
            self._loaded = self._listed = True

    def _cached_ids(self) -> set[str]:
        assert self.cache is not None
        try:
            names = os.listdir(self.cache)
        except FileNotFoundError:
            return set()
        return {n[:-4] for n in names if n.endswith(".idx") and is_id(n[:-4])}

    def _from_cache(self, pack_id: str) -> PackIndex | None:
        if self.cache is None:
            return None
        path = self.cache / f"{pack_id}.idx"
        try:
            return PackIndex(pack_id, path.read_bytes())
        except FileNotFoundError:
            return None
        except IntegrityError:  # a damaged cache file: read the root's instead
            path.unlink(missing_ok=True)
            return None

    def _to_cache(self, pack_id: str, raw: bytes) -> None:
        if self.cache is None:
            return
        try:  # derived and verified on read: no fsync; a failure only costs a read later
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = self.cache / f".tmp-{pack_id}-{os.getpid()}-{threading.get_ident()}"
            tmp.write_bytes(raw)
            os.replace(tmp, self.cache / f"{pack_id}.idx")
        except OSError:
            pass

    def add(self, pack_id: str, index: bytes) -> None:
        """Make a pack this process just committed visible without a listing."""
        with self._lock:
            if pack_id not in self._indexes:
                self._indexes[pack_id] = PackIndex(pack_id, index)
                self._order.insert(0, self._indexes[pack_id])
        self._to_cache(pack_id, index)

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
        for idx in self._order:
            where = idx.find(oid)
            if where is not None:
                return where
        return None

    def before(self, where: Where) -> tuple[ObjectId, Where] | None:
        """The object just before ``where`` in its pack (:meth:`PackIndex.before`)."""
        index = self._indexes.get(where.pack)
        return None if index is None else index.before(where)

    def ids(self) -> list[str]:
        if not self._listed:
            self.refresh()
        return sorted(self._indexes)

    def index(self, pack_id: str) -> PackIndex:
        if not self._listed:
            self.refresh()
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
