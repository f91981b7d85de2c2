"""Reading a chunked blob: its chunks in order, read ahead on a pool, chunks that lie
side by side in a pack read as one range (one request on an object store), and a
stream of them whose whole hash is checked at its end.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

import blake3

from cas.errors import IntegrityError
from cas.objects import codec, packs
from cas.objects.ids import ObjectId
from cas.objects.kinds import ChunkList
from cas.objects.pack_set import PackSet

#: Chunks side by side in one pack are read together up to this many stored bytes.
READ_SPAN: Final = 8 << 20
#: On a local disk a range read costs little more than a read per chunk: short ranges,
#: so a stream's memory stays a few chunks.
LOCAL_READ_SPAN: Final = 2 << 20
#: Bytes of ranges read ahead at once on an object store (a window of ranges).
READ_AHEAD: Final = 32 << 20

#: (header, payload) of a stored form: decoded, and verified or not as the caller asks.
Decode = Callable[[ObjectId, bytes], tuple[codec.Header, bytes]]


class Part(NamedTuple):
    oid: ObjectId
    size: int
    where: packs.Where | None


def groups(
    pack_set: PackSet, listing: ChunkList, span_limit: int = READ_SPAN
) -> Iterator[list[Part]]:
    """A chunk list's chunks in order, as groups to read at once: runs of chunks that
    lie side by side in one pack (up to :data:`READ_SPAN`), and loose chunks alone."""
    group: list[Part] = []
    span = 0
    for cid, size in listing.chunks:
        where = pack_set.find(cid)
        last = group[-1].where if group else None
        if (
            where is not None and last is not None and last.pack == where.pack
            and 0 <= where.offset - (last.offset + last.length) <= packs.NEAR
            and span + where.length <= span_limit
        ):  # fmt: skip
            group.append(Part(cid, size, where))
            span += where.length
            continue
        if group:
            yield group
        group = [Part(cid, size, where)]
        span = where.length if where is not None else 0
    if group:
        yield group


def read_group(
    group: list[Part],
    pack_set: PackSet,
    decode: Decode,
    one_by_one: Callable[[Part], bytes],
) -> list[bytes]:
    """The content of a group's chunks: packed ones in one read of their pack, decoded
    by ``decode``; a loose chunk, or all of them if the pack is gone, by ``one_by_one``."""
    if len(group) == 1 or group[0].where is None:
        return [one_by_one(p) for p in group]
    try:
        stored = pack_set.read_many([p.where for p in group if p.where is not None])
    except FileNotFoundError:  # gc rewrote the pack meanwhile: look each up again
        return [one_by_one(p) for p in group]
    out = []
    for part, raw in zip(group, stored, strict=True):
        header, data = decode(part.oid, raw)
        if header.kind != "blob" or len(data) != part.size:
            raise IntegrityError(
                part.oid, f"chunk {part.oid} is not a blob of {part.size} bytes; run 'cas fsck'"
            )
        out.append(data)
    return out


def check_total(oid: ObjectId, got: str) -> None:
    if got != oid:
        raise IntegrityError(
            oid,
            f"object {oid} is corrupt (its chunks hash to {got[:12]}…); "
            "run 'cas fsck' to list affected artifacts",
        )


class ChunkedReader(io.RawIOBase):
    """Chunks fetched ahead on the pool, verified one by one, total hash at the end."""

    def __init__(self, oid: ObjectId, chunks: Iterator[bytes]) -> None:
        self._oid = oid
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._total = blake3.blake3()
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            data = next(self._chunks, None)
            if data is None:
                if not self._done:
                    self._done = True
                    check_total(self._oid, self._total.hexdigest())
                return 0
            self._total.update(data)
            self._buf = memoryview(data)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()
