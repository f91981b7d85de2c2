"""The file objects behind ``cas://`` (:mod:`cas.api.filesystem`): a seekable, verified
reader of one content id, and a writer that saves an artifact when it is closed."""

from __future__ import annotations

import bisect
import contextlib
import io
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, Final

import blake3
from fsspec.spec import AbstractBufferedFile

from cas.errors import CasError, IntegrityError, IsAFolder, ObjectNotFound
from cas.objects.ids import ObjectId
from cas.objects.kinds import ChunkList
from cas.objects.space import ObjectSpace, io_pool, worker_pool

#: Bytes a write keeps in memory before its spool file goes to disk.
SPOOL_IN_MEMORY: Final = 8 << 20
#: Chunks a read keeps in flight ahead of the reader.
READ_AHEAD: Final = 4
#: Checked chunk lists kept per root (a list is ~40 bytes a chunk: small).
VERIFIED_LISTS: Final = 1024


class VerifiedLists:
    """Chunk lists whose content was hashed whole and matched its id, newest last.

    A chunk list is stored under its content's id, so it can only be checked by reading
    all of that content once; a list kept here lets a later open read just the chunks
    it needs, each still checked against its own id."""

    def __init__(self, limit: int = VERIFIED_LISTS) -> None:
        self._lists: OrderedDict[str, ChunkList] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, oid: str) -> ChunkList | None:
        with self._lock:
            return self._lists.get(oid)

    def add(self, oid: str, listing: ChunkList) -> None:
        with self._lock:
            self._lists[oid] = listing
            self._lists.move_to_end(oid)
            while len(self._lists) > self._limit:
                self._lists.popitem(last=False)


class ContentReader:
    """Random access to one content id's verified bytes.

    A blob (content up to the chunking threshold) is read and checked whole when opened.
    A chunk list is read chunk by chunk, each checked against its id. ``_frontier``
    counts the chunks hashed in order from the start: bytes are returned only from
    chunks behind it, so a read ahead of it first reads the chunks before (a footer read
    checks the whole file), and when it reaches the end the total must equal the content
    id, as :meth:`ObjectSpace.open` checks it; then the list is added to ``verified``.
    """

    def __init__(self, space: ObjectSpace, oid: ObjectId, verified: VerifiedLists) -> None:
        self._space = space
        self._oid = oid
        self._verified = verified
        self._whole: bytes | None = None
        listing = verified.get(oid)
        self._frontier = 0 if listing is None else len(listing.chunks)
        if listing is None:
            kind, payload = space.read_object(oid)  # a blob is verified here
            if kind == "blob":
                self._whole = payload
                listing = ChunkList(len(payload), ())
            elif kind == "chunks":
                listing = ChunkList.parse(oid, payload)
            else:
                raise IsAFolder(oid, f"object {oid} is a {kind}, not a file's content")
        self._listing = listing
        self._starts = [0]
        for _, n in listing.chunks:
            self._starts.append(self._starts[-1] + n)
        self._total = blake3.blake3()
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        self._ahead: dict[int, Future[bytes]] = {}
        io_threads = space.storage.io_threads  # object stores: requests in parallel
        self._pool: ThreadPoolExecutor = io_pool(io_threads) if io_threads else worker_pool()

    @property
    def size(self) -> int:
        return self._listing.size

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` (clipped to the size), verified."""
        end = min(end, self.size)
        if start >= end:
            return b""
        if self._whole is not None:
            return self._whole[start:end]
        first = bisect.bisect_right(self._starts, start) - 1
        last = bisect.bisect_left(self._starts, end) - 1
        while self._frontier < first:
            self._advance(self._chunk(self._frontier))
        parts = []
        for i in range(first, last + 1):
            data = self._chunk(i)
            if i == self._frontier:
                self._advance(data)
            parts.append(data)
        offset = start - self._starts[first]
        joined = b"".join(parts)
        if offset == 0 and len(joined) == end - start:
            return joined  # no second copy of a large read
        return joined[offset : offset + end - start]

    def _advance(self, data: bytes) -> None:
        """Hash the next chunk in order; after the last, check the total."""
        self._total.update(data)
        self._frontier += 1
        if self._frontier == len(self._listing.chunks):
            got = self._total.hexdigest()
            if got != self._oid:
                raise IntegrityError(
                    self._oid,
                    f"object {self._oid} is corrupt (its chunks hash to {got[:12]}…); "
                    "run 'cas fsck' to list affected artifacts",
                )
            self._verified.add(self._oid, self._listing)

    def _chunk(self, i: int) -> bytes:
        data = self._recent.get(i)
        if data is None:
            data = self._fetch(i)
            self._recent[i] = data
            while len(self._recent) > 2:  # neighbours of small reads; memory stays flat
                self._recent.popitem(last=False)
        return data

    def _fetch(self, i: int) -> bytes:
        """Chunk ``i``, verified, with the next few fetched meanwhile on the pool."""
        for k in range(i, min(i + READ_AHEAD + 1, len(self._listing.chunks))):
            if k not in self._ahead and k not in self._recent:
                cid, n = self._listing.chunks[k]
                self._ahead[k] = self._pool.submit(read_chunk, self._space, cid, n, self._oid)
        for k in [k for k in self._ahead if k < i or k > i + READ_AHEAD]:
            self._ahead.pop(k).cancel()  # a seek elsewhere: drop what is not wanted
        return self._ahead.pop(i).result()

    def close(self) -> None:
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        self._recent.clear()


def read_chunk(space: ObjectSpace, cid: ObjectId, size: int, of: ObjectId) -> bytes:
    """One chunk of content ``of``, checked against its id and its listed size."""
    try:
        kind, data = space.read_object(cid)
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            cid, f"chunk {cid} of {of} is not in {space.url}: run 'cas fsck'"
        ) from exc
    if kind != "blob" or len(data) != size:
        raise IntegrityError(cid, f"chunk {cid} is not a blob of {size} bytes; run 'cas fsck'")
    return data


class CasFile(AbstractBufferedFile):  # type: ignore[misc]
    """A read-only, seekable, verified file: fsspec's buffering over a ContentReader."""

    def __init__(self, fs: Any, path: str, content: ContentReader, **kwargs: Any) -> None:
        self._content = content
        options = {k: v for k, v in kwargs.items() if v is not None}
        super().__init__(fs, path, mode="rb", size=content.size, **options)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._content.read(start, end)

    def close(self) -> None:
        if not self.closed:
            self._content.close()
        super().close()


class CasWriteFile(io.RawIOBase):
    """Bytes written here go to a spool file (memory, then disk: constant memory); on
    close (or, in an fsspec transaction, on commit) ``save(spool, size)`` saves them and
    returns the artifact id. Nothing is saved after :meth:`discard`, when the file is
    garbage-collected unclosed, or when it is closed while an exception raised after it
    was opened propagates (a ``with`` block, a ``finally``, pandas' error paths)."""

    def __init__(
        self, path: str, save: Callable[[IO[bytes], int], str], *, autocommit: bool = True
    ) -> None:
        super().__init__()
        self.path = path
        self.autocommit = autocommit
        self.artifact_id: str | None = None
        self._save = save
        # An exception already in flight when the file was opened (it is written in an
        # except block) is no reason to discard it; one raised since then is.
        self._outer = sys.exc_info()[1]
        # The spool lives as long as this file: closed by commit() or discard().
        self._spool: IO[bytes] | None = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_IN_MEMORY
        )
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.closed or self._spool is None:
            raise ValueError(f"write to a closed cas:// file ({self.path})")
        n = self._spool.write(data)
        self._size += n
        return n

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        if self.closed:
            return
        failing = sys.exc_info()[1]
        try:
            if failing is not None and failing is not self._outer:
                self.discard()
            elif self.autocommit:
                self.commit()
        finally:
            super().close()

    def commit(self) -> None:
        """Save what was written (once: later calls do nothing)."""
        spool = self._spool
        if spool is None:
            return
        try:
            spool.seek(0)
            self.artifact_id = self._save(spool, self._size)
        finally:
            self.discard()

    def discard(self) -> None:
        """Forget what was written: nothing is saved."""
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.discard()
        self.close()

    def __del__(self) -> None:
        # Collected without close: the writer never finished, so nothing is saved.
        with contextlib.suppress(AttributeError, OSError, CasError):
            self.discard()
