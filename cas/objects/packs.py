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
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

import blake3

from cas.errors import IntegrityError
from cas.objects.ids import ObjectId
from cas.storage import Storage

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
