"""The object space: immutable objects under ``<root>/objects/``, keyed by their ids.

Writes hash first and write nothing when the object exists (dedup), refreshing an old
object's age so a concurrent gc's grace period counts from this write. New objects are
written atomically (temp name + rename locally, one PUT on object stores), so no reader
ever sees a partial object under its final name. Every read verifies: the bytes returned
hash to the id asked for, or an :class:`IntegrityError` names the object.

The parts of its work that stand alone live beside it: the format marker
(:mod:`cas.objects.marker`), loose objects' paths and listings (:mod:`cas.objects.loose`),
batches (:mod:`cas.objects.batch`), choosing delta bases
(:mod:`cas.objects.delta_bases`), the chunked write and read paths
(:mod:`cas.objects.chunk_writes`, :mod:`cas.objects.chunk_reads`) and the thread pools
they run on (:mod:`cas.objects.pools`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Final

import blake3

from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects import chunk_reads, chunk_writes, codec, delta, delta_bases, loose, marker, packs
from cas.objects.batch import Batches, Held, Pending
from cas.objects.chunk_writes import CREATE_AFTER
from cas.objects.chunking import ChunkParams, Reader, cut, cut_buffer, read_up_to
from cas.objects.ids import ObjectId, blob_id, kind_id, parse_id, verify
from cas.objects.kinds import ChunkList, pack, unpack
from cas.objects.loose import OBJECTS, object_path
from cas.objects.marker import DELTAS_FROM, FORMAT_VERSION, MARKER, PACKS_FROM
from cas.objects.pack_set import PackSet
from cas.objects.pools import ahead, io_pool, worker_pool
from cas.storage import Stat, Storage, open_storage
from cas.storage.cache import remote_cache

__all__ = [
    "CREATE_AFTER",
    "DELTAS_FROM",
    "FORMAT_VERSION",
    "FRESHEN_AFTER",
    "MARKER",
    "OBJECTS",
    "PACKS_FROM",
    "ObjectSpace",
    "io_pool",
    "object_path",
    "worker_pool",
]

#: A dedup hit refreshes an object older than this, so gc's grace period (default one
#: day, never below this) counts from the latest write that relied on it.
FRESHEN_AFTER: Final = 3600.0


def _index_cache(storage: Storage) -> Path | None:
    """Where this machine keeps a remote root's pack indexes between processes."""
    if storage.local_dir is not None or storage.url.startswith("memory://"):
        return None  # a local root reads its own indexes as fast as a cache would
    return remote_cache(storage.url) / "packs"


#: A record read from a pack on an object store brings the object before it (most
#: often its content's root: a tree, a chunk list, a small blob) in the same range when
#: that object is at most this big.
WITH_PREVIOUS: Final = 2 << 20


class ObjectSpace:
    """Objects of every kind under one root, on any :class:`Storage`."""

    def __init__(
        self, storage: Storage, *, create: bool = True, level: int = codec.DEFAULT_LEVEL
    ) -> None:
        self.storage = storage
        self.level = level
        self.params, self.format = marker.open_marker(storage, create)
        self.packs = PackSet(storage, cache=_index_cache(storage))
        self._ahead: dict[ObjectId, bytes] = {}  # stored forms read with a neighbour
        self.pending = Held()  # the objects every open batch holds, readable at once
        self._batches = Batches(self.pending, self._new_batch)  # each thread's open batch
        self._hints = delta_bases.Hints()  # each thread's previous version, for bases
        # On an object store, small objects just written or read stay at hand as bases.
        self._recent = delta_bases.Recent() if storage.local_dir is None else None
        self.cpu_inflight = 2 * max(2, os.cpu_count() or 2)  # chunks on the CPU pool
        io_threads = storage.io_threads  # object stores: chunk requests in parallel
        self._pool = io_pool(io_threads) if io_threads else None
        self.inflight = max(self.cpu_inflight, io_threads)

    def _chunk_pool(self) -> ThreadPoolExecutor:
        return self._pool or worker_pool()

    @classmethod
    def from_url(
        cls, url: str | os.PathLike[str], *, fsync: bool = True, create: bool = True, **options: Any
    ) -> ObjectSpace:
        return cls(open_storage(url, fsync=fsync, **options), create=create)

    @property
    def url(self) -> str:
        return self.storage.url

    # -- the marker -------------------------------------------------------------------

    def mark_packed(self) -> None:
        """Call before writing a pack. Before the first pack of a format-1 store: mark it format 2, so that a cas
        that cannot read packs refuses the store instead of missing objects."""
        self._raise_format(PACKS_FROM)

    def mark_deltas(self) -> None:
        """Call before writing a delta: a store of an older format is marked format 3,
        so that a cas that cannot read deltas refuses it instead of misreading them."""
        self._raise_format(DELTAS_FROM)

    def holds_deltas(self) -> bool:
        """True if the store may hold deltas (its marker says format 3), read again:
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

    def recent_base(self, oid: ObjectId, kind: str) -> delta.Base | None:
        """A small object of ``kind`` this space wrote or read a moment ago, as a delta
        base (:class:`cas.objects.delta_bases.Recent`), or None: read it."""
        return self._recent.get(oid, kind) if self._recent is not None else None

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
        return self._put_chunked_from(cut_buffer(view, params), expect=oid, hashed=True)

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
            f.seek(0)
            return self._put_chunked(b"", f, expect=oid)

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
        return self._put_chunked_from(cut(head, rest, self.params), expect=expect)

    def _put_chunked_from(
        self,
        pieces: Iterator[bytes] | Iterator[memoryview],
        *,
        expect: ObjectId | None = None,
        hashed: bool = False,
    ) -> ObjectId:
        batched = self._held(True)  # this thread's batch: the chunk workers write to it
        previous = self.previous_version()
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
            previous=delta_bases.previous_chunks(self, previous) if previous is not None else None,
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

    # -- reading ----------------------------------------------------------------------

    def read_stored(self, oid: str) -> bytes:
        """An object's stored form (header and body), unverified: for copies and probes."""
        return self._read_stored(parse_id(oid))

    def _read_stored(self, oid: ObjectId) -> bytes:
        """An object's stored bytes: held by a batch, packed, or loose (a pack written
        since by another process is found by one listing, on a miss)."""
        held = self.pending.get(oid) or self._ahead.get(oid)
        if held is not None:
            return held
        where = self.packs.find(oid)
        if where is not None:
            with contextlib.suppress(FileNotFoundError):  # rewritten by gc meanwhile
                return self.packs.read(where)
        try:
            return self.storage.read(object_path(oid))
        except FileNotFoundError:
            pass
        where = self.packs.find(oid, refresh=True)
        if where is not None:
            with contextlib.suppress(FileNotFoundError):
                return self.packs.read(where)
        raise ObjectNotFound(oid, f"object {oid} not found in {self.url}") from None

    def _read_with_previous(self, oid: ObjectId) -> bytes:
        where = None if self.storage.local_dir is not None else self.packs.find(oid)
        previous = None if where is None else self.packs.before(where)
        if where is not None and previous is not None and previous[1].length <= WITH_PREVIOUS:
            with contextlib.suppress(FileNotFoundError):  # rewritten by gc meanwhile
                before, stored = self.packs.read_many([previous[1], where])
                if len(self._ahead) >= 8:
                    self._ahead.clear()  # a few at a time: bounded, safe beside threads
                self._ahead[previous[0]] = before
                return stored
        return self._read_stored(oid)

    def read_object(self, oid: str) -> tuple[str, bytes]:
        """(kind, payload) of one object, verified — except a chunk list, whose id is the
        hash of the content it assembles: that is verified when the content is read."""
        header, payload = self.read_entry(oid)
        return header.kind, payload

    def read_entry(self, oid: str) -> tuple[codec.Header, bytes]:
        """(header, payload) of one object, verified as :meth:`read_object`; a delta is
        decoded through its chain of bases (``header.base`` names the first)."""
        oid = parse_id(oid)
        header, payload = self._checked(oid, self._read_stored(oid))
        if self._recent is not None:  # verified: a delta base for what is saved next
            self._recent.add(oid, header.kind, payload, header.depth)
        return header, payload

    def _decode(self, oid: ObjectId, stored: bytes) -> tuple[codec.Header, bytes]:
        """(header, payload) of a stored form, a delta decoded through its bases;
        unverified."""
        header = codec.read_header(oid, stored)
        if header.base is None:
            return header, codec.decode_body(oid, header, stored)
        return header, delta.resolve(oid, header, stored, self._read_stored)

    def _checked(self, oid: ObjectId, stored: bytes) -> tuple[codec.Header, bytes]:
        """:meth:`_decode`, then verified against ``oid`` (but a chunk list); a delta
        that does not verify names the level of its chain that is bad."""
        header, payload = self._decode(oid, stored)
        if header.kind != "chunks":
            try:
                _verify(oid, header.kind, payload)
            except IntegrityError:
                if header.base is None:
                    raise
                raise delta.culprit(oid, header, stored, self._read_stored) from None
        return header, payload

    def kind(self, oid: str) -> str:
        """The kind of an object, from its header alone (48 bytes read at most)."""
        return self.head(oid).kind

    def head(self, oid: str) -> codec.Header:
        """An object's header (kind, sizes, a delta's base), from its first bytes."""
        return codec.read_header(oid, self.read_head(oid))

    def read_head(self, oid: str) -> bytes:
        """The first bytes of an object's stored form: its header (and a delta's base)."""
        oid = parse_id(oid)
        n = codec.HEAD_SIZE
        held = self.pending.get(oid)
        if held is not None:
            return held[:n]
        where = self.packs.find(oid)
        if where is None:
            try:
                return self.storage.read_head(object_path(oid), n)
            except FileNotFoundError:
                where = self.packs.find(oid, refresh=True)
        if where is not None:
            with contextlib.suppress(FileNotFoundError):
                return self.packs.read(packs.Where(where.pack, where.offset, min(n, where.length)))
        return self._read_stored(oid)[:n]  # rewritten meanwhile, or absent: it says

    def get(self, oid: str) -> bytes:
        """The verified content of a blob (whole or chunked)."""
        kind, payload = self.read_object(oid)
        if kind == "blob":
            return payload
        if kind != "chunks":
            raise CasError(f"object {oid} is a {kind}, not a blob")
        # Nothing is returned before the whole content is verified, so each chunk need
        # not be hashed on its own too: one hash of the whole, on every core. Only if it
        # fails are the chunks checked one by one, to name the bad one.
        listing = ChunkList.parse(oid, payload)
        # Each chunk is copied into one growing buffer as it arrives and let go (a join
        # holds every chunk until the end: twice the content in memory, every page of
        # it faulted in twice); the buffer becomes the bytes returned without a copy.
        out = io.BytesIO()
        for chunk in self._chunks(listing, ObjectId(oid), verify=False):
            out.write(chunk)
        data = out.getvalue()
        got = blob_id(data)
        if got != oid:
            for cid, size in listing.chunks:
                self._get_chunk(cid, size, of=ObjectId(oid))
            chunk_reads.check_total(ObjectId(oid), got)
        return data

    def _chunks(self, listing: ChunkList, of: ObjectId, *, verify: bool = True) -> Iterator[bytes]:
        """A chunk list's chunks in order, read ahead on the pool, each verified (unless
        the caller verifies the whole before anything leaves it). Chunks that lie side
        by side in a pack are read as one range (one request on an object store)."""
        pool = self._chunk_pool()
        if self.storage.io_threads:  # an object store: long ranges, a bounded window
            span, window = chunk_reads.READ_SPAN, chunk_reads.READ_AHEAD // chunk_reads.READ_SPAN
        else:
            span, window = chunk_reads.LOCAL_READ_SPAN, self.inflight
        todo = chunk_reads.groups(self.packs, listing, span)
        task = functools.partial(self._get_group, verify=verify, of=of)
        with contextlib.closing(ahead(pool, window, task, todo)) as groups:
            for group in groups:
                yield from group

    def _get_group(self, group: list[chunk_reads.Part], verify: bool, of: ObjectId) -> list[bytes]:
        return chunk_reads.read_group(
            group, self.packs, self._checked if verify else self._decode,
            lambda p: self._get_chunk(p.oid, p.size, verify, of),
        )  # fmt: skip

    def get_value(self, oid: str, kind: str, *, with_previous: bool = False) -> Any:
        """The verified, decoded value of a structured object of ``kind``.
        ``with_previous`` (a record, whose content's root is written just before it): on
        an object store, read the object before it in its pack in the same request, so
        that the read of the content that follows costs none."""
        if with_previous:
            header, payload = self._checked(parse_id(oid), self._read_with_previous(parse_id(oid)))
            got_kind = header.kind
        else:
            got_kind, payload = self.read_object(oid)
        if got_kind != kind:
            raise CasError(f"object {oid} is a {got_kind}, not a {kind}")
        return unpack(oid, payload)

    def open(self, oid: str) -> BinaryIO:
        """A stream of a blob's content. Each chunk is verified before its bytes are
        returned; the whole content's hash is checked at the end of the stream."""
        kind, payload = self.read_object(oid)
        if kind == "blob":
            return io.BytesIO(payload)
        if kind != "chunks":
            raise CasError(f"object {oid} is a {kind}, not a blob")
        return self._open_chunked(ObjectId(oid), ChunkList.parse(oid, payload))

    def _open_chunked(self, oid: ObjectId, listing: ChunkList) -> BinaryIO:
        reader = chunk_reads.ChunkedReader(oid, self._chunks(listing, oid))
        return io.BufferedReader(reader, buffer_size=1 << 20)

    def _get_chunk(
        self, oid: ObjectId, size: int, verify: bool = True, of: ObjectId | None = None
    ) -> bytes:
        try:
            return self._read_chunk(oid, size, verify)
        except ObjectNotFound as exc:
            if of is None:
                raise
            raise ObjectNotFound(
                oid,
                f"chunk {oid} of chunk list {of} is not in {self.url}: it was deleted, or "
                "the list is damaged; run 'cas fsck'",
            ) from exc

    def _read_chunk(self, oid: ObjectId, size: int, verify: bool) -> bytes:
        if verify:
            kind, data = self.read_object(oid)
        else:
            header, data = self._decode(oid, self._read_stored(oid))
            kind = header.kind
        if kind != "blob" or len(data) != size:
            raise IntegrityError(oid, f"chunk {oid} is not a blob of {size} bytes; run 'cas fsck'")
        return data

    def size(self, oid: str) -> int:
        """The content size of a blob (chunked or not) or payload size of another kind."""
        oid = parse_id(oid)
        header = codec.read_header(oid, self._read_stored(oid))
        if header.kind != "chunks":
            return header.raw_size
        _, payload = self.read_object(oid)
        return ChunkList.parse(oid, payload).size

    # -- presence, listing, deletion --------------------------------------------------

    def has(self, oid: str) -> bool:
        oid = parse_id(oid)
        if oid in self.pending or self.packs.find(oid) is not None:
            return True
        if self.storage.stat(object_path(oid)) is not None:
            return True
        return self.packs.find(oid, refresh=True) is not None

    def has_many(self, oids: Iterable[str]) -> set[ObjectId]:
        """Which of these ids are present: one listing per fan-out folder, not one
        request per id (a few ids are simply checked one by one)."""
        wanted = {parse_id(o) for o in oids}
        self.packs.refresh()
        held = {o for o in wanted if o in self.pending or self.packs.find(o) is not None}
        wanted -= held
        if len(wanted) <= 8:
            return held | {o for o in wanted if self.has(o)}
        return held | loose.listed(self.storage, wanted)

    def __iter__(self) -> Iterator[ObjectId]:
        return (oid for oid, _ in self.iter_stats())

    def iter_stats(self) -> Iterator[tuple[ObjectId, Stat]]:
        """Every object with its stored size and age, from listings: the loose ones,
        then the packed ones (aged as their pack). One present both ways comes twice."""
        yield from self.iter_loose()
        yield from loose.iter_packed(self.packs)

    def iter_loose(self) -> Iterator[tuple[ObjectId, Stat]]:
        """Every loose object with its stored size and age, from listings."""
        return loose.iter_loose(self.storage)

    def iter_temp(self) -> Iterator[tuple[str, Stat]]:
        """Temporary files left by writers that died mid-write (gc removes old ones)."""
        return loose.iter_temp(self.storage)

    def delete(self, oid: str) -> bool:
        """Remove a loose object (a packed one goes when gc rewrites its pack)."""
        return self.storage.delete(object_path(parse_id(oid)))


_verify = verify  # the one check, in cas.objects.ids


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
