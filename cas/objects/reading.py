"""Reading many objects at once: the packed ones in as few ranges as their places in
their packs allow, several ranges in flight, each object verified against its id.

A folder checkout asks for thousands of small objects. One request each is what makes
an object store slow (a round trip per file); objects written together lie side by
side in one pack, so a range of a few MiB brings hundreds of them in one request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final

from cas.errors import CasError
from cas.objects import codec, packs
from cas.objects.ids import ObjectId, verify
from cas.objects.pack_set import PackSet

if TYPE_CHECKING:
    from cas.objects.space import ObjectSpace

#: Objects of one pack closer than this are read in one range (the bytes between are
#: read and dropped: cheaper than another request).
GAP: Final = 256 << 10
#: A range is at most this long, so that memory stays bounded (times the ranges in flight).
SPAN: Final = 8 << 20

Span = tuple[str, int, int, list[tuple[ObjectId, packs.Where]]]


def spans(pack_set: PackSet, oids: Iterable[ObjectId]) -> tuple[list[Span], list[ObjectId]]:
    """(ranges of packs to read, each with the objects it holds; ids not packed)."""
    by_pack: dict[str, list[tuple[ObjectId, packs.Where]]] = {}
    loose: list[ObjectId] = []
    for oid in oids:
        where = pack_set.find(oid)
        if where is None:
            loose.append(oid)
        else:
            by_pack.setdefault(where.pack, []).append((oid, where))
    out: list[Span] = []
    for pack_id, found in by_pack.items():
        found.sort(key=lambda e: e[1].offset)
        group: list[tuple[ObjectId, packs.Where]] = []
        start = end = 0
        for oid, where in found:
            far = where.offset - end > GAP or where.offset + where.length - start > SPAN
            if group and far:
                out.append((pack_id, start, end, group))
                group = []
            if not group:
                start = where.offset
            group.append((oid, where))
            end = where.offset + where.length
        if group:
            out.append((pack_id, start, end, group))
    return out, loose


def read_objects(
    space: ObjectSpace, oids: Iterable[ObjectId]
) -> Iterator[tuple[ObjectId, str, bytes]]:
    """(id, kind, payload) of each object, verified (a chunk list: as read; its content
    is verified when it is read), in the order reads complete."""
    wanted = list(dict.fromkeys(oids))
    ranges, loose = spans(space.packs, wanted)
    pool = space._chunk_pool()
    limit = max(2, space.inflight)
    ahead: list[Future[list[tuple[ObjectId, str, bytes]]]] = []

    def drain(keep: int) -> Iterator[tuple[ObjectId, str, bytes]]:
        while len(ahead) > keep:
            yield from ahead.pop(0).result()

    try:
        for span in ranges:
            ahead.append(pool.submit(_read_span, space, span))
            yield from drain(limit)
        for oid in loose:
            ahead.append(pool.submit(lambda o: [(o, *space.read_object(o))], oid))
            yield from drain(limit)
        yield from drain(0)
    finally:
        for fut in ahead:
            fut.cancel()


def _read_span(space: ObjectSpace, span: Span) -> list[tuple[ObjectId, str, bytes]]:
    pack_id, start, end, group = span
    try:
        raw = space.storage.read_range(packs.pack_path(pack_id), start, end - start)
    except FileNotFoundError:  # rewritten by gc meanwhile: each one looked up again
        return [(oid, *space.read_object(oid)) for oid, _ in group]
    view = memoryview(raw)
    out = []
    for oid, where in group:
        stored = view[where.offset - start : where.offset - start + where.length]
        try:
            kind, payload = codec.decode(oid, stored)
        except CasError:  # damaged, or a kind only the object space reads: it says which
            out.append((oid, *space.read_object(oid)))
            continue
        if kind != "chunks":
            verify(oid, kind, payload)
        out.append((oid, kind, payload))
    return out
