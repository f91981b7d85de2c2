"""Writing a large blob as chunks: the content is cut on the caller's thread; each
chunk is hashed, compressed (a delta against the chunk at its place in the previous
version, when one is like it) and written on a pool, a window of them at a time, so
memory stays flat however long the stream is. The chunk list is the caller's to store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, Protocol

import blake3

from cas.errors import CasError
from cas.objects import delta
from cas.objects.ids import ObjectId, blob_id
from cas.objects.kinds import ChunkList
from cas.objects.pools import ahead

#: On object stores, after this many chunks of one put in a row were new, the next ones
#: are written with a conditional create (one request) instead of a HEAD and then a PUT;
#: the first chunk found present goes back to checking first. So new content costs one
#: request a chunk, and content that is mostly stored already (a new version of a large
#: file) uploads at most a window of chunks (``inflight``) twice per run of new ones.
CREATE_AFTER: Final = 8


class NewRun:
    """How many chunks of one put in a row were new: past :data:`CREATE_AFTER`, the next
    chunk is most likely new too, and is written without a check first. Chunks finish
    on many threads; a race between them only blurs the count, never what is stored."""

    __slots__ = ("misses",)

    def __init__(self) -> None:
        self.misses = 0

    def likely_new(self) -> bool:
        return self.misses >= CREATE_AFTER

    def saw(self, *, new: bool) -> None:
        self.misses = self.misses + 1 if new else 0


class StoreChunk(Protocol):
    """Write one chunk unless present: (True if this call wrote it, the delta base it
    was written against or None)."""

    def __call__(
        self,
        oid: ObjectId,
        data: bytes | memoryview,
        *,
        create_first: bool,
        bases: tuple[ObjectId, ...],
        order: int,
    ) -> tuple[bool, ObjectId | None]: ...


def write_chunks(
    pieces: Iterator[bytes] | Iterator[memoryview],
    store: StoreChunk,
    *,
    pool: ThreadPoolExecutor,
    inflight: int,
    ticket: Callable[[], int],
    previous: Sequence[tuple[ObjectId, int]] | None,
    expect: ObjectId | None = None,
    hashed: bool = False,
) -> tuple[ObjectId, ChunkList, NewRun]:
    """(content id, chunk list, the run of new chunks at its end) of ``pieces``, each
    written by ``store``. ``previous``: the chunks of the previous version, whose chunk
    at a piece's place is its delta base. ``hashed``: ``expect`` is the hash of these
    very bytes (a buffer in memory), so the whole is not hashed again."""
    total = blake3.blake3()
    run = NewRun()
    aligner = delta.Aligner(previous) if previous else None

    def tasks() -> Iterator[tuple[bytes | memoryview, int, int]]:
        at = 0
        for data in pieces:
            if not hashed:
                total.update(data)
            # The chunk's place in the pack is taken now, in content order (chunks
            # finish out of order): a read of the content finds them side by side.
            yield data, at, ticket()
            at += len(data)

    def put(task: tuple[bytes | memoryview, int, int]) -> tuple[ObjectId, int]:
        return _put_chunk(store, run, aligner, *task)

    chunks = list(ahead(pool, inflight, put, tasks()))
    oid = expect if hashed and expect is not None else ObjectId(total.hexdigest())
    if expect is not None and oid != expect:
        raise CasError(f"file changed while it was stored (hashed {expect}, read {oid})")
    return oid, ChunkList(sum(n for _, n in chunks), tuple(chunks)), run


def _put_chunk(
    store: StoreChunk,
    run: NewRun,
    aligner: delta.Aligner | None,
    data: bytes | memoryview,
    at: int,
    order: int,
) -> tuple[ObjectId, int]:
    oid = blob_id(data, threads=False)
    bases: tuple[ObjectId, ...] = ()
    if aligner is not None and not aligner.shared(at, oid) and aligner.worth_trying():
        bases = aligner.candidates(at, len(data))
    new, used = store(oid, data, create_first=run.likely_new(), bases=bases, order=order)
    if aligner is not None and used is not None:
        aligner.matched(at, len(data), used)
    elif aligner is not None and bases:
        aligner.missed()
    run.saw(new=new)
    return oid, len(data)
