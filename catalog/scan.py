"""Index scans and their intersection, newest first.

A *stream* walks the postings of one term in key order, which is newest first (see
``keys``). It knows its size without scanning (``mdb_cursor_count`` for a term, the
sub-database's entry count for the whole catalog), can step to the next posting and
can seek to the first posting ``>=`` a given one.

``intersect`` is a leapfrog join: the smallest stream leads, every other stream seeks
to the leader's candidate; a mismatch moves the candidate forward to the larger
posting. The cost is bounded by the smallest stream, whatever the others hold, and
stops as soon as ``limit`` records matched, so filters apply *before* the limit.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .engine import Txn


class Stream(Protocol):
    """A sorted walk over postings."""

    size: int

    def first(self) -> bytes | None: ...

    def next(self) -> bytes | None: ...

    def seek(self, target: bytes) -> bytes | None: ...


class TermStream:
    """The postings of one term of a dupsort index."""

    def __init__(self, txn: Txn, db: Any, key: bytes) -> None:
        self.cur = txn.cursor(db=db)
        self.key = key
        self.size = self.cur.count() if self.cur.set_key(key) else 0

    def first(self) -> bytes | None:
        if not self.size or not self.cur.set_key(self.key):
            return None
        return self.cur.value()

    def next(self) -> bytes | None:
        return self.cur.value() if self.cur.next_dup() else None

    def seek(self, target: bytes) -> bytes | None:
        return self.cur.value() if self.cur.set_range_dup(self.key, target) else None


class AllStream:
    """Every live record (the ``time`` sub-database)."""

    def __init__(self, txn: Txn, db: Any) -> None:
        self.cur = txn.cursor(db=db)
        self.size = int(txn.stat(db)["entries"])

    def first(self) -> bytes | None:
        return self.cur.key() if self.cur.first() else None

    def next(self) -> bytes | None:
        return self.cur.key() if self.cur.next() else None

    def seek(self, target: bytes) -> bytes | None:
        return self.cur.key() if self.cur.set_range(target) else None


class PrefixStream:
    """The merged postings of every name starting with a prefix.

    A heap holds the next posting of each name; building it reads one entry per name.
    """

    def __init__(self, txn: Txn, db: Any, prefix: bytes) -> None:
        self.cur = txn.cursor(db=db)
        self.heap: list[tuple[bytes, bytes]] = []
        self.size = 0
        cur = self.cur
        found = cur.set_range(prefix)
        while found:
            name = cur.key()
            if not name.startswith(prefix):
                break
            self.heap.append((cur.value(), name))
            self.size += cur.count()
            found = cur.next_nodup()
        heapq.heapify(self.heap)

    def first(self) -> bytes | None:
        return self.heap[0][0] if self.heap else None

    def next(self) -> bytes | None:
        if not self.heap:
            return None
        post, name = self.heap[0]
        if self.cur.set_key_dup(name, post) and self.cur.next_dup():
            heapq.heapreplace(self.heap, (self.cur.value(), name))
        else:
            heapq.heappop(self.heap)
        return self.first()

    def seek(self, target: bytes) -> bytes | None:
        while self.heap and self.heap[0][0] < target:
            _, name = self.heap[0]
            if self.cur.set_range_dup(name, target):
                heapq.heapreplace(self.heap, (self.cur.value(), name))
            else:
                heapq.heappop(self.heap)
        return self.first()


def intersect(streams: list[Stream], limit: int) -> list[bytes]:
    """The first ``limit`` postings present in every stream, newest first."""
    if limit <= 0 or not streams:
        return []
    streams = sorted(streams, key=lambda s: s.size)
    if streams[0].size == 0:
        return []
    lead, others = streams[0], streams[1:]
    out: list[bytes] = []
    cand = lead.first()
    while cand is not None:
        for s in others:
            got = s.seek(cand)
            if got is None:
                return out
            if got != cand:
                cand = lead.seek(got)
                break
        else:
            out.append(cand)
            if len(out) >= limit:
                return out
            cand = lead.next()
    return out


def posting_ids(posts: list[bytes]) -> list[bytes]:
    """The raw record ids inside postings."""
    return [p[8:] for p in posts]
