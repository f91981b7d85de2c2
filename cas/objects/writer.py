"""Writing objects: hash first and write nothing when the object exists (dedup),
refreshing an old object's age so a concurrent gc's grace period counts from this
write; new objects are written atomically (temp name + rename locally, one PUT on
object stores), alone or held by a batch and written together (a pack, then one sync),
plain or as deltas against a base (:mod:`cas.objects.delta_bases`).

:class:`ObjectWriter` is the writing half of :class:`cas.objects.space.ObjectSpace`;
what it reads (dedup checks, delta bases) it reads through
:class:`cas.objects.reader.ObjectReader`'s one decode-and-verify step.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Final

import blake3

from cas.errors import CasError, ObjectNotFound
from cas.objects import chunk_writes, codec, delta_bases, loose, marker
from cas.objects.batch import Batches, Pending
from cas.objects.chunking import (
    ChunkParams,
    Reader,
    cut,
    cut_at,
    cut_buffer,
    cut_buffer_at,
    read_up_to,
)
from cas.objects.ids import ObjectId, blob_id, kind_id, parse_id
from cas.objects.kinds import ChunkList, pack
from cas.objects.loose import object_path
from cas.objects.marker import DELTAS_FROM, PACKS_FROM, XOR_FROM
from cas.objects.pools import worker_pool
from cas.objects.reader import ObjectReader
from cas.storage import Stat

#: A dedup hit refreshes an object older than this, so gc's grace period (default one
#: day, never below this) counts from the latest write that relied on it.
FRESHEN_AFTER: Final = 3600.0


class ObjectWriter(ObjectReader):
    """Writes of objects of every kind (see the module docstring)."""

    level: int
    params: ChunkParams
    cpu_inflight: int
    _batches: Batches
    _hints: delta_bases.Hints
    format: int  # the marker's, as this process last read or raised it

    # -- the marker -------------------------------------------------------------------

    def mark_packed(self) -> None:
        """Call before writing a pack. Before the first pack of a format-1 store: mark it format 2, so that a cas
        that cannot read packs refuses the store instead of missing objects."""
        self._raise_format(PACKS_FROM)

    def mark_deltas(self) -> None:
        """Call before writing a delta: a store of an older format is marked format 3,
        so that a cas that cannot read deltas refuses it instead of misreading them."""
        self._raise_format(DELTAS_FROM)

    def mark_xor(self) -> None:
        """Call before writing an XOR delta: the store is marked format 4, so that a cas
        that cannot read them refuses it."""
        self._raise_format(XOR_FROM)

    def holds_deltas(self) -> bool:
        """True if the store may hold deltas (its marker says format 3 or later), read again:
        another process may have written the first delta since this one opened it."""
        if self.format < DELTAS_FROM:
            found = marker.stored_format(self.storage)
            if found is not None:
                self.format = max(self.format, found)
        return self.format >= DELTAS_FROM

    def _raise_format(self, version: int) -> None:
        if self.format >= version:
            return
        with marker.format_lock:
            marker.raise_format(self.storage, version)
            self.format = max(self.format, version)

    # -- batches ----------------------------------------------------------------------

    def batch(self, *, keep_on_error: bool = False) -> contextlib.AbstractContextManager[Pending]:
        """New objects written by this thread inside the block (and by the chunk workers
        it starts) are held and written together: a pack when there are many, loose
        objects when few, then one sync. Nested blocks join the outermost. Anything that
        publishes a name reaching them calls :meth:`flush` first. If the block raises,
        what it holds is dropped (a refused save writes nothing), unless
        ``keep_on_error`` (a copy that a later run resumes): then it is written, if
        every pack before it was."""
        return self._batches.open(keep_on_error=keep_on_error)

    def _new_batch(self) -> Pending:
        return Pending(
            self.storage, self.packs, object_path, self.mark_packed, self._present_loose,
            self.pending.ticket,
        )  # fmt: skip

    def joining(self, held: Pending | None = None) -> contextlib.AbstractContextManager[None]:
        """A worker thread's writes join ``held``, a batch its coordinator holds open
        (flushed when the coordinator's block ends, not this one)."""
        return self._batches.joining(held)

    def in_batch(self) -> bool:
        return self._batches.current() is not None

    def _held(self, batched: bool | Pending | None) -> Pending | None:
        """The batch a write goes to: the one given, or this thread's when True."""
        if batched is True:
            return self._batches.current()
        return batched or None

    def flush(self, *, durable: bool = True) -> None:
        """Write every object this thread's batch holds; with ``durable``, sync so they
        survive a crash (outside a batch: nothing is held)."""
        held = self._batches.current()
        if held is not None:
            held.flush(durable=durable)

    # -- delta bases ------------------------------------------------------------------

    def bases_from(self, previous: str | None) -> contextlib.AbstractContextManager[None]:
        """Content put by this thread inside the block may be stored as deltas against
        ``previous``: the content id of the previous version of what is put (a blob, a
        chunked blob or a tree; None: no base). A whole blob takes that blob (or the
        chunk at its place) as its base, a large file's chunks the chunks at their
        place in the previous version, a tree that tree; :func:`cas.objects.trees.store_dir`
        gives each file and folder the same path in the previous version.

        A blob with no such base (a file new at its path, every file of a first
        version) may take the most similar blob put earlier in the outermost block
        (:class:`cas.objects.delta.Sketches`)."""
        return self._hints.scope(previous)

    def previous_version(self) -> ObjectId | None:
        """The ``previous`` of this thread's innermost :meth:`bases_from` block."""
        return self._hints.previous()

    #: False: every new object is stored plain (the reader still reads deltas).
    deltas: bool = True

    def _encode(
        self,
        oid: ObjectId,
        kind: str,
        payload: bytes | memoryview,
        bases: tuple[ObjectId, ...] = (),
    ) -> bytes:
        """The stored form of a new object (:func:`cas.objects.delta_bases.encode`);
        the base it used, if any, is left in ``self._hints.used``."""
        self._hints.used = None
        if not self.deltas:
            return codec.encode(kind, payload, self.level)
        stored, self._hints.used = delta_bases.encode(
            self, oid, kind, payload, bases, level=self.level, hints=self._hints,
            freshen=self._freshen,
        )  # fmt: skip
        return stored

    def _remember(
        self, oid: ObjectId, kind: str, payload: bytes | memoryview, stored: bytes
    ) -> None:
        """Keep an object just encoded as ``stored`` (its own header gives its depth)."""
        if self._recent is not None:
            self._recent.add(oid, kind, payload, codec.read_header(oid, stored).depth)

    # -- writing ----------------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview | BinaryIO | Reader) -> ObjectId:
        """Store blob content (bytes or a binary stream); return its id (``b3sum``)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.put_buffer(data)
        head = read_up_to(data, self.params.threshold + 1)
        if len(head) <= self.params.threshold:
            return self._put_whole(head)
        return self._put_chunked(head, data)

    def put_buffer(self, data: Any, chunking: ChunkParams | None = None) -> ObjectId:
        """Store content held in memory (bytes, bytearray, memoryview, or any buffer
        such as a contiguous numpy array). Hashed first on every core, so content
        stored already costs one hash and one lookup; new content is cut into slices of
        the buffer itself (no copy of the payload on the way).

        ``chunking``: how to cut this content instead of the store's parameters, for a
        kind of content whose versions share more in smaller chunks (Parquet). It
        decides which chunks are shared, never the id, and reads need nothing of it."""
        params = chunking if chunking is not None else self.params
        view = memoryview(data)
        if not view.c_contiguous:
            raise CasError(
                "cannot store a non-contiguous buffer: copy it first (numpy: np.ascontiguousarray)"
            )
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(view) <= params.threshold:
            oid = blob_id(view)
            self._store(oid, "blob", view, batched=self.in_batch())
            return oid
        oid = blob_id(view)
        if self._freshen(oid):
            return oid
        previous = self._previous_chunks()
        sizes = _same_size(previous, len(view), lambda at, n: view[at : at + n], self.level)
        pieces = cut_buffer_at(view, sizes) if sizes else cut_buffer(view, params)
        return self._put_chunked_from(pieces, expect=oid, hashed=True, previous=previous)

    def put_file(self, path: str | os.PathLike[str]) -> ObjectId:
        """Store a local file. Hashes it first (all cores) so existing content costs one
        hash and one stat, then cuts and compresses only what is new."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= self.params.threshold:
                return self._put_whole(f.read())
            oid = _hash_file(f)
            if self._freshen(oid):
                return oid
            previous = self._previous_chunks()
            sizes = _same_size(previous, size, functools.partial(_read_at, f), self.level)
            f.seek(0)  # after the hash, and the samples _same_size may read
            pieces = cut_at(b"", f, sizes) if sizes else cut(b"", f, self.params)
            return self._put_chunked_from(pieces, expect=oid, previous=previous)

    def put_value(self, kind: str, value: Any) -> ObjectId:
        """Store a structured object (tree, record, event) by its canonical msgpack."""
        payload = pack(value)
        oid = kind_id(kind, payload)
        # A record carries its creation time: it is new but for a copy between stores.
        self._store(oid, kind, payload, create_first=kind == "record", batched=self.in_batch())
        return oid

    def put_payload(self, kind: str, payload: bytes) -> ObjectId:
        """Store an already-canonical payload of a structured kind (trees)."""
        oid = kind_id(kind, payload)
        self._store(oid, kind, payload, batched=self.in_batch())
        return oid

    def put_stored(self, oid: ObjectId, stored: bytes) -> bool:
        """Store an object already in its stored form (a copy from another root), after
        checking it decodes to ``oid``; True if this call wrote it. Inside a batch it
        joins the batch's pack."""
        header, payload = self._checked(oid, stored)
        if self._freshen(oid):
            return False
        if header.base is not None:
            if not self._freshen(header.base):  # it read just now: a gc took it since
                raise ObjectNotFound(header.base, f"delta base {header.base} of {oid} is gone")
            if header.flags & codec.FLAG_XOR:
                self.mark_xor()
            else:
                self.mark_deltas()
        held = self._held(True)
        if held is not None:
            return held.add(oid, stored)
        self.storage.write_atomic(object_path(oid), stored)
        return True

    def put_listing(self, oid: str, listing: ChunkList) -> bool:
        """Store a chunk list under ``oid``, the id of the content it assembles, whose
        chunks are present here; the caller has checked that they hash to ``oid`` in
        order (a copy, streamed and verified). True if this call wrote it."""
        return self._store(parse_id(oid), "chunks", listing.payload(), batched=self.in_batch())

    def _put_whole(self, data: bytes) -> ObjectId:
        oid = blob_id(data)
        self._store(oid, "blob", data, batched=self.in_batch())
        return oid

    def _store(
        self,
        oid: ObjectId,
        kind: str,
        payload: bytes | memoryview,
        *,
        create_first: bool = False,
        batched: bool | Pending | None = False,
        bases: tuple[ObjectId, ...] = (),
        order: int | None = None,
    ) -> bool:
        """Write one object unless present; True if this call wrote it. ``bases``:
        delta bases to try, in order (see :meth:`_encode`).

        By default a check for presence (dedup: a hit uploads nothing), then a write. With
        ``create_first``, for objects that are most likely new, on storage whose service
        checks a conditional create itself: the write is the check, one request for a
        new object; only if the object was there does a second request ask its age, to
        refresh it as a dedup hit must (gc's grace counts from that refresh).
        """
        path = object_path(oid)
        held = self._held(batched)
        if held is not None:
            if self.storage.listing_stats:
                # An object store: whether it is loose already is asked for the whole
                # batch at its flush (one listing, or a few requests in parallel).
                if oid in self.pending or self._freshen_packed(oid):
                    return False
                encoded = self._encode(oid, kind, payload, bases)
                self._remember(oid, kind, payload, encoded)
                return held.add(oid, encoded, unchecked=True, order=order)
            if self._freshen(oid):
                return False
            return held.add(oid, self._encode(oid, kind, payload, bases), order=order)
        if create_first and self.storage.creates:
            encoded = self._encode(oid, kind, payload, bases)
            if self.storage.create(path, encoded):
                return True
            if self._freshen(oid):
                return False
            # It went between the two requests (a gc deleted it): write it again.
            self.storage.write_atomic(path, encoded)
            return True
        if self._freshen(oid):
            return False
        encoded = self._encode(oid, kind, payload, bases)
        self.storage.write_atomic(path, encoded)
        self._remember(oid, kind, payload, encoded)
        return True

    def _freshen(self, oid: ObjectId) -> bool:
        """True if the object is present (refreshed if old); False if it must be written.

        A gc may delete an old unreachable object between our stat and our touch; touch
        then finds nothing and we write the object again, so it is never lost.
        """
        if oid in self.pending or self._freshen_packed(oid):
            return True
        return self._freshen_loose(oid)

    def _freshen_packed(self, oid: ObjectId) -> bool:
        where = self.packs.find(oid)
        return where is not None and self._freshen_pack(where.pack)

    def _freshen_loose(self, oid: ObjectId) -> bool:
        path = object_path(oid)
        return self._refresh(self.storage.stat(path), lambda: self.storage.touch(path))

    def _refresh(self, st: Stat | None, touch: Callable[[], bool]) -> bool:
        """True if the file is there (refreshed by ``touch`` if old), False if not.
        Locally a refresh is one utime: done on every hit, so any grace period holds.
        On object stores it is a copy request: only for files older than an hour, and
        gc's grace there must exceed that (docs/gc.md)."""
        if st is None:
            return False
        after = 0.0 if self.storage.cheap_touch else FRESHEN_AFTER
        if time.time() - st.mtime > after:
            return touch()
        return True

    def _present_loose(self, oids: list[ObjectId]) -> set[ObjectId]:
        """Which of these are loose objects already (each refreshed as a dedup hit):
        a few are asked in parallel, many by listing their folders."""
        if len(oids) <= 16:
            pool = self._chunk_pool()
            hits = pool.map(self._freshen_loose, oids)
            return {o for o, hit in zip(oids, hits, strict=True) if hit}
        listed = loose.listed(self.storage, set(oids))
        return {o for o in listed if self._freshen_loose(o)}

    def _freshen_pack(self, pack_id: str) -> bool:
        """A dedup hit on a packed object refreshes its pack's age as a loose hit does;
        False if the pack is gone (gc rewrote it): the object is then looked up again."""
        return self._refresh(self.packs.stat(pack_id), lambda: self.packs.touch(pack_id))

    def _store_chunk(
        self,
        batched: Pending | None,
        oid: ObjectId,
        data: bytes | memoryview,
        *,
        create_first: bool,
        bases: tuple[ObjectId, ...],
        order: int,
    ) -> tuple[bool, ObjectId | None]:
        self._hints.used = None
        new = self._store(
            oid, "blob", data, create_first=create_first, batched=batched, bases=bases,
            order=order,
        )  # fmt: skip
        return new, self._hints.used

    def _put_chunked(
        self, head: bytes, rest: Reader | BinaryIO, expect: ObjectId | None = None
    ) -> ObjectId:
        pieces = cut(head, rest, self.params)
        return self._put_chunked_from(pieces, expect=expect, previous=self._previous_chunks())

    def _previous_chunks(self) -> list[tuple[ObjectId, int]] | None:
        """The chunks of this thread's previous version (:meth:`bases_from`), if any."""
        previous = self.previous_version()
        return delta_bases.previous_chunks(self, previous) if previous is not None else None

    def _put_chunked_from(
        self,
        pieces: Iterator[bytes] | Iterator[memoryview],
        *,
        expect: ObjectId | None = None,
        hashed: bool = False,
        previous: list[tuple[ObjectId, int]] | None,
    ) -> ObjectId:
        """``previous``: the previous version's chunks (:meth:`_previous_chunks`)."""
        batched = self._held(True)  # this thread's batch: the chunk workers write to it
        # Into a batch, a chunk's work is CPU alone (hash, compress, hold): the CPU pool
        # and its window, not the object store's many request threads (each with its
        # own zstd context and malloc arena: +100 MiB for nothing on 2 cores).
        cpu_only = batched is not None
        oid, listing, run = chunk_writes.write_chunks(
            pieces,
            functools.partial(self._store_chunk, batched),
            pool=worker_pool() if cpu_only else self._chunk_pool(),
            inflight=self.cpu_inflight if cpu_only else self.inflight,
            ticket=self.pending.ticket,
            previous=previous or None,
            expect=expect,
            hashed=hashed,
        )
        # put_file checked just now that the content is not stored (the chunk list's id
        # is the content's): its list is new, as it is after a run of new chunks.
        self._store(
            oid, "chunks", listing.payload(),
            create_first=expect is not None or run.likely_new(), batched=batched,
        )  # fmt: skip
        return oid


def _same_size(
    previous: list[tuple[ObjectId, int]] | None,
    size: int,
    read_at: Callable[[int, int], bytes | memoryview],
    level: int,
) -> list[int] | None:
    """The previous version's chunk sizes when it had exactly ``size`` bytes in two
    chunks or more and the new content is dense (zstd keeps most of a sample of it,
    ``read_at(offset, n)``: floats, media), else None. Such a version is cut where the
    old one was (the same numbers at the same places: a model's weights after a
    training step), so each chunk has a base of its own length at its place, which an
    XOR delta needs; content-defined cuts move wherever the bytes changed, and in
    numbers that all moved that is everywhere. Compressible content keeps its
    content-defined cuts: they find again what moved within a file of the same length
    (one file of a tar grown by a block, another shrunk by one)."""
    if previous is None or len(previous) < 2 or sum(n for _, n in previous) != size:
        return None
    w = codec.PROBE_WINDOW
    sample = b"".join(bytes(read_at(at, w)) for at in (0, size // 2 - w // 2, size - w))
    if codec.estimate(sample, level) < len(sample) * delta_bases.DENSE:
        return None
    return [n for _, n in previous]


def _read_at(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return read_up_to(f, n)


#: A file is hashed in blocks of this many bytes through one reused buffer: on every
#: core within a block, and never more of the file in memory (a mapping of the whole
#: file made every page of it resident: +200 MiB of peak RSS for a 200 MiB file).
HASH_BLOCK: Final = 8 << 20


def _hash_file(f: BinaryIO) -> ObjectId:
    """The blob id of an open file's content, read from its start."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    while n := f.readinto(buf):  # type: ignore[attr-defined]
        hasher.update(view[:n])
    return ObjectId(hasher.hexdigest())
