"""The object space: immutable objects under ``<root>/objects/``, keyed by their ids.

Writes hash first and write nothing when the object exists (dedup), refreshing an old
object's age so a concurrent gc's grace period counts from this write. New objects are
written atomically (temp name + rename locally, one PUT on object stores), so no reader
ever sees a partial object under its final name. Every read verifies: the bytes returned
hash to the id asked for, or an :class:`IntegrityError` names the object.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, Final, NamedTuple

import blake3
import msgpack

from cas.errors import CasError, FormatError, IntegrityError, ObjectNotFound
from cas.objects import codec, delta, packs
from cas.objects.batch import Held, Pending
from cas.objects.chunking import (
    DEFAULT_PARAMS,
    ChunkParams,
    Reader,
    cut,
    cut_buffer,
    read_up_to,
)
from cas.objects.ids import ObjectId, blob_id, is_id, kind_id, parse_id
from cas.objects.kinds import ChunkList, pack, unpack
from cas.storage import TEMP_PREFIX, Stat, Storage, open_storage

MARKER: Final = "CAS"
#: 2: packs (``packs/``, :mod:`cas.objects.packs`) beside loose objects. A store of
#: format 1 is read as it is and becomes format 2 when its first pack is written.
#: 3: deltas (:mod:`cas.objects.delta`); a store of format 1 or 2 becomes 3 when its
#: first delta is written, so that a cas which cannot read deltas refuses it.
FORMAT_VERSION: Final = 3
PACKS_FROM: Final = 2
DELTAS_FROM: Final = 3
#: A new store is created at format 2 and marked 3 by its first delta, so "format 3"
#: says a store may hold deltas (gc then reads each chunk's header for a base).
OBJECTS: Final = "objects"

#: A dedup hit refreshes an object older than this, so gc's grace period (default one
#: day, never below this) counts from the latest write that relied on it.
FRESHEN_AFTER: Final = 3600.0

#: On object stores, after this many chunks of one put in a row were new, the next ones
#: are written with a conditional create (one request) instead of a HEAD and then a PUT;
#: the first chunk found present goes back to checking first. So new content costs one
#: request a chunk, and content that is mostly stored already (a new version of a large
#: file) uploads at most a window of chunks (``inflight``) twice per run of new ones.
CREATE_AFTER: Final = 8

_pool_lock = threading.Lock()
_format_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def worker_pool() -> ThreadPoolExecutor:
    """One pool for chunk work: BLAKE3 and zstd release the GIL, so threads use every core.

    Only leaf tasks run on it (hash+compress+write one chunk, read+verify one chunk);
    nothing on it waits for another task on it, so it cannot deadlock.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="cas-chunk"
            )
        return _pool


_io_pools: dict[int, ThreadPoolExecutor] = {}


def io_pool(threads: int) -> ThreadPoolExecutor:
    """A pool for chunk work on storage where each request waits on the network (object
    stores): many requests in flight, as the CPU pool's two would leave the link idle.
    The same leaf tasks as :func:`worker_pool`, so it cannot deadlock either."""
    with _pool_lock:
        pool = _io_pools.get(threads)
        if pool is None:
            pool = _io_pools[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="cas-io"
            )
        return pool


def object_path(oid: ObjectId) -> str:
    """The one mapping from an id to a path: ``objects/ab/cdef...``."""
    return f"{OBJECTS}/{oid[:2]}/{oid[2:]}"


class ObjectSpace:
    """Objects of every kind under one root, on any :class:`Storage`."""

    def __init__(
        self, storage: Storage, *, create: bool = True, level: int = codec.DEFAULT_LEVEL
    ) -> None:
        self.storage = storage
        self.level = level
        self.format = FORMAT_VERSION
        self.params = self._open_marker(create)
        self.packs = packs.PackSet(storage)
        self.pending = Held()  # the objects every open batch holds, readable at once
        self._local = threading.local()  # this thread's open batch
        self.inflight = 2 * max(2, os.cpu_count() or 2)
        io_threads = storage.io_threads  # object stores: chunk requests in parallel
        self._pool = io_pool(io_threads) if io_threads else None
        self.inflight = max(self.inflight, io_threads)

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

    def _open_marker(self, create: bool) -> ChunkParams:
        url = self.storage.url
        try:
            raw = self.storage.read(MARKER)
        except FileNotFoundError:
            raw = None
        if raw is None:
            if not create:
                raise FormatError(f"{url} is not a cas store (no CAS marker); run 'cas init'")
            if not self._root_is_empty():
                if self.storage.exists(MARKER):  # another process created it meanwhile
                    return self._open_marker(create=False)
                raise FormatError(
                    f"{url} holds files but is not a cas store (no CAS marker); "
                    "use an empty folder or bucket prefix for a new store"
                )
            marker = {
                "format": PACKS_FROM,  # 3 only once a delta is written: gc relies on it
                "hash": "blake3",
                "compression": "zstd",
                "chunking": DEFAULT_PARAMS.to_dict(),
            }
            self.storage.write_atomic(MARKER, pack(marker))
            self.format = PACKS_FROM
            return DEFAULT_PARAMS
        try:
            marker = msgpack.unpackb(raw, raw=False)
            version = marker["format"]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise FormatError(f"{url}/CAS is not a cas format marker ({exc!r})") from exc
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise FormatError(
                f"{url} is a cas store of format {version!r}; this cas reads format "
                f"{FORMAT_VERSION}: upgrade cas to use it"
            )
        try:
            params = ChunkParams.from_dict(marker["chunking"])
        except (KeyError, TypeError) as exc:
            raise FormatError(f"{url}/CAS has no valid chunking parameters ({exc!r})") from exc
        if marker.get("hash") != "blake3":
            raise FormatError(f"{url} uses hash {marker.get('hash')!r}; cas knows only blake3")
        self.format = version
        return params

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
            with contextlib.suppress(FileNotFoundError, ValueError, msgpack.UnpackException):
                found = msgpack.unpackb(self.storage.read(MARKER), raw=False).get("format")
                if isinstance(found, int) and found <= FORMAT_VERSION:
                    self.format = max(self.format, found)
        return self.format >= DELTAS_FROM

    def _raise_format(self, version: int) -> None:
        if self.format >= version:
            return
        with _format_lock:
            marker = msgpack.unpackb(self.storage.read(MARKER), raw=False)
            if marker.get("format", 1) < version:
                self.storage.write_atomic(MARKER, pack({**marker, "format": version}))
            self.format = max(self.format, version)

    def _root_is_empty(self) -> bool:
        names = [n for n in self.storage.listdir("") if not n.startswith(".")]
        if names:
            return False
        return not any(
            not rel.rsplit("/", 1)[-1].startswith(".") for rel, _ in self.storage.walk("")
        )

    # -- batches ----------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self, *, keep_on_error: bool = False) -> Iterator[Pending]:
        """New objects written by this thread inside the block (and by the chunk workers
        it starts) are held and written together: a pack when there are many, loose
        objects when few, then one sync. Nested blocks join the outermost. Anything that
        publishes a name reaching them calls :meth:`flush` first. If the block raises,
        what it holds is dropped (a refused save writes nothing), unless
        ``keep_on_error`` (a copy that a later run resumes): then it is written, if
        every pack before it was."""
        held: Pending | None = getattr(self._local, "batch", None)
        if held is not None:  # nested: joins the outermost
            yield held
            return
        held = Pending(
            self.storage, self.packs, object_path, self.mark_packed, self._present_loose,
            self.pending.ticket,
        )  # fmt: skip
        self.pending.open(held)
        self._local.batch = held
        try:
            try:
                yield held
            except BaseException:
                if keep_on_error:  # what it holds is complete: keep it (a resumed copy)
                    with contextlib.suppress(Exception):
                        held.flush()
                raise
            held.flush()
        finally:
            # A batch whose block or flush failed is dropped whole: what it held was never
            # visible to anyone else, and nothing reaching it was published.
            self._local.batch = None
            self.pending.close(held)

    @contextlib.contextmanager
    def joining(self, held: Pending | None = None) -> Iterator[None]:
        """A worker thread's writes join ``held``, a batch its coordinator holds open
        (flushed when the coordinator's block ends, not this one)."""
        before = getattr(self._local, "batch", None)
        self._local.batch = held
        try:
            yield
        finally:
            self._local.batch = before

    def in_batch(self) -> bool:
        return getattr(self._local, "batch", None) is not None

    def _held(self, batched: bool | Pending | None) -> Pending | None:
        """The batch a write goes to: the one given, or this thread's when True."""
        if batched is True:
            return getattr(self._local, "batch", None)
        return batched or None

    # -- delta bases ------------------------------------------------------------------

    @contextlib.contextmanager
    def bases_from(self, previous: str | None) -> Iterator[None]:
        """Content put by this thread inside the block may be stored as deltas against
        ``previous``: the content id of the previous version of what is put (a blob, a
        chunked blob or a tree; None: no base). A whole blob takes that blob (or the
        chunk at its place) as its base, a large file's chunks the chunks at their
        place in the previous version, a tree that tree; :func:`cas.objects.trees.store_dir`
        gives each file and folder the same path in the previous version.

        A blob with no such base (a file new at its path, every file of a first
        version) may take the most similar blob put earlier in the outermost block
        (:class:`cas.objects.delta.Sketches`)."""
        saved = getattr(self._local, "previous", None)
        outermost = getattr(self._local, "sketches", None) is None
        self._local.previous = parse_id(previous) if previous else None
        if outermost:
            self._local.sketches = delta.Sketches()
        try:
            yield
        finally:
            self._local.previous = saved
            if outermost:
                self._local.sketches = None

    def previous_version(self) -> ObjectId | None:
        """The ``previous`` of this thread's innermost :meth:`bases_from` block."""
        previous: ObjectId | None = getattr(self._local, "previous", None)
        return previous

    #: False: every new object is stored plain (the reader still reads deltas).
    deltas: bool = True

    def _encode(
        self,
        oid: ObjectId,
        kind: str,
        payload: bytes | memoryview,
        bases: tuple[ObjectId, ...] = (),
    ) -> bytes:
        """The stored form of a new object: a delta against the first of ``bases`` that
        saves at least :data:`delta.MIN_SAVING` of the plain form (with none given, a
        whole blob or a tree tries this thread's previous version, then a blob put just
        before that is like it); else the plain form."""
        self._local.used = None
        if not self.deltas:
            return codec.encode(kind, payload, self.level)
        if not bases and kind in ("blob", "tree"):
            hinted = self._hinted_base(kind, len(payload))
            bases = (hinted,) if hinted is not None else ()
        # A blob with no base at its path: the most similar one put before in this save.
        sketches: delta.Sketches | None = getattr(self._local, "sketches", None)
        sketch = None
        if not bases and sketches is not None and kind == "blob":
            sketch = sketches.sketch(payload)
            like = sketches.like(sketch) if sketch is not None else None
            bases = (like,) if like is not None else ()
        stored = self._encode_on(oid, kind, payload, bases)
        if sketches is not None and sketch is not None:
            sketches.add(oid, sketch)
        return stored

    def _encode_on(
        self, oid: ObjectId, kind: str, payload: bytes | memoryview, bases: tuple[ObjectId, ...]
    ) -> bytes:
        size = len(payload)
        bases = tuple(b for b in bases if b != oid)
        if not bases or not delta.MIN_SIZE <= size <= delta.MAX_BASE:
            return codec.encode(kind, payload, self.level)
        plain: bytes | None = None
        for bid in bases:
            found = self._base(bid, kind)
            if found is not None and found.depth >= delta.max_depth(size):
                found = self._base(self._chain_root(found.id), kind)  # a new branch
            if found is None or not delta.usable(found, size):
                continue
            if not delta.resembles(payload, found.payload):
                continue  # no bytes in common: a delta would cost a compression for nothing
            stored = delta.encode(kind, payload, found)
            if not delta.clearly_better(payload, stored, self.level):
                plain = plain if plain is not None else codec.encode(kind, payload, self.level)
                if not delta.better(plain, stored):
                    continue
            # Written against the base: it must outlive a gc that condemned it meanwhile
            # (its sweep re-reads ages), as a dedup hit refreshes what it relies on.
            if not self._freshen(found.id):
                continue
            self.mark_deltas()
            self._local.used = found.id
            return stored
        return plain if plain is not None else codec.encode(kind, payload, self.level)

    def _base(self, bid: ObjectId, kind: str) -> delta.Base | None:
        """A verified base of ``kind``, or None if it is absent or does not read (a
        damaged base is not built on: the object is stored plain)."""
        try:
            header, payload = self.read_entry(bid)
        except CasError:
            return None
        if header.kind != kind:
            return None
        return delta.Base(bid, payload, header.depth)

    def _chain_root(self, oid: ObjectId) -> ObjectId:
        """The plain object at the bottom of a delta's chain (headers read on the way)."""
        header = self.head(oid)
        for _ in range(codec.MAX_CHAIN):
            if header.base is None:
                break
            oid, header = header.base, self.head(header.base)
        return oid

    def _hinted_base(self, kind: str, size: int) -> ObjectId | None:
        previous = self.previous_version()
        if previous is None or kind == "tree":
            return previous
        chunks = self._previous_chunks(previous)
        return delta.Aligner(chunks).candidates(0, size)[0] if chunks else None

    def _previous_chunks(self, previous: ObjectId) -> list[tuple[ObjectId, int]] | None:
        """The previous version of a blob as chunks: its chunk list, or itself alone."""
        try:
            header = self.head(previous)
            if header.kind == "blob":
                return [(previous, header.raw_size)]
            if header.kind == "chunks":
                _, payload = self.read_entry(previous)
                return list(ChunkList.parse(previous, payload).chunks)
        except CasError:
            pass
        return None

    def flush(self, *, durable: bool = True) -> None:
        """Write every object this thread's batch holds; with ``durable``, sync so they
        survive a crash (outside a batch: nothing is held)."""
        held: Pending | None = getattr(self._local, "batch", None)
        if held is not None:
            held.flush(durable=durable)

    # -- writing ----------------------------------------------------------------------

    def put(self, data: bytes | bytearray | memoryview | BinaryIO | Reader) -> ObjectId:
        """Store blob content (bytes or a binary stream); return its id (``b3sum``)."""
        if isinstance(data, (bytes, bytearray, memoryview)):
            return self.put_buffer(data)
        head = read_up_to(data, self.params.threshold + 1)
        if len(head) <= self.params.threshold:
            return self._put_whole(head)
        return self._put_chunked(head, data)

    def put_buffer(self, data: Any) -> ObjectId:
        """Store content held in memory (bytes, bytearray, memoryview, or any buffer
        such as a contiguous numpy array). Hashed first on every core, so content
        stored already costs one hash and one lookup; new content is cut into slices of
        the buffer itself (no copy of the payload on the way)."""
        view = memoryview(data)
        if not view.c_contiguous:
            raise CasError(
                "cannot store a non-contiguous buffer: copy it first (numpy: np.ascontiguousarray)"
            )
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if len(view) <= self.params.threshold:
            oid = blob_id(view)
            self._store(oid, "blob", view, batched=self.in_batch())
            return oid
        oid = blob_id(view)
        if self._freshen(oid):
            return oid
        return self._put_chunked_from(cut_buffer(view, self.params), expect=oid, hashed=True)

    def put_file(self, path: str | os.PathLike[str]) -> ObjectId:
        """Store a local file. Hashes it first (all cores) so existing content costs one
        hash and one stat, then cuts and compresses only what is new."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= self.params.threshold:
                return self._put_whole(f.read())
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                oid = ObjectId(blake3.blake3(mm, max_threads=blake3.blake3.AUTO).hexdigest())
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
        self.storage.write_atomic(path, self._encode(oid, kind, payload, bases))
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
        st = self.storage.stat(path)
        if st is None:
            return False
        # Locally a refresh is one utime: do it on every hit, so any grace period holds.
        # On object stores it is a copy request: only for objects older than an hour,
        # and gc's grace there must exceed that (docs/gc.md).
        after = 0.0 if self.storage.cheap_touch else FRESHEN_AFTER
        if time.time() - st.mtime > after:
            return self.storage.touch(path)
        return True

    def _present_loose(self, oids: list[ObjectId]) -> set[ObjectId]:
        """Which of these are loose objects already (each refreshed as a dedup hit):
        a few are asked in parallel, many by listing their folders."""
        if len(oids) <= 16:
            pool = self._chunk_pool()
            hits = pool.map(self._freshen_loose, oids)
            return {o for o, hit in zip(oids, hits, strict=True) if hit}
        listed = self._list_loose(set(oids))
        return {o for o in listed if self._freshen_loose(o)}

    def _freshen_pack(self, pack_id: str) -> bool:
        """A dedup hit on a packed object refreshes its pack's age as a loose hit does;
        False if the pack is gone (gc rewrote it): the object is then looked up again."""
        st = self.packs.stat(pack_id)
        if st is None:
            return False
        after = 0.0 if self.storage.cheap_touch else FRESHEN_AFTER
        if time.time() - st.mtime > after:
            return self.packs.touch(pack_id)
        return True

    def _put_chunk(
        self,
        data: bytes | memoryview,
        run: _NewRun,
        batched: Pending | None,
        at: int = 0,
        aligner: delta.Aligner | None = None,
        order: int | None = None,
    ) -> tuple[ObjectId, int]:
        oid = blob_id(data, threads=False)
        bases: tuple[ObjectId, ...] = ()
        if aligner is not None and not aligner.shared(at, oid):
            bases = aligner.candidates(at, len(data))
        self._local.used = None
        new = self._store(
            oid, "blob", data, create_first=run.likely_new(), batched=batched, bases=bases,
            order=order,
        )
        used: ObjectId | None = getattr(self._local, "used", None)
        if aligner is not None and used is not None:
            aligner.matched(at, len(data), used)
        run.saw(new=new)
        return oid, len(data)

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
        # The content is cut on this thread; each chunk is hashed, compressed and written
        # on the pool. At most `inflight` chunks are held, so memory stays flat however
        # long the stream is. ``hashed``: ``expect`` is the hash of these very bytes
        # (a buffer in memory), so the whole is not hashed again.
        pool = self._chunk_pool()
        total = blake3.blake3()
        run = _NewRun()
        batched = self._held(True)  # this thread's batch: the chunk workers write to it
        previous = self.previous_version()
        chunked = self._previous_chunks(previous) if previous is not None else None
        aligner = delta.Aligner(chunked) if chunked else None
        pending: deque[Future[tuple[ObjectId, int]]] = deque()
        chunks: list[tuple[ObjectId, int]] = []
        at = 0
        try:
            for data in pieces:
                if not hashed:
                    total.update(data)
                # The chunk's place in the pack is taken now, in content order (chunks
                # finish out of order): a read of the content finds them side by side.
                order = self.pending.ticket()
                pending.append(
                    pool.submit(self._put_chunk, data, run, batched, at, aligner, order)
                )
                at += len(data)
                while len(pending) >= self.inflight:
                    chunks.append(pending.popleft().result())
            while pending:
                chunks.append(pending.popleft().result())
        finally:
            for fut in pending:
                fut.cancel()
        oid = expect if hashed and expect is not None else ObjectId(total.hexdigest())
        if expect is not None and oid != expect:
            raise CasError(f"file changed while it was stored (hashed {expect}, read {oid})")
        listing = ChunkList(sum(n for _, n in chunks), tuple(chunks))
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
        held = self.pending.get(oid)
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

    def read_object(self, oid: str) -> tuple[str, bytes]:
        """(kind, payload) of one object, verified — except a chunk list, whose id is the
        hash of the content it assembles: that is verified when the content is read."""
        header, payload = self.read_entry(oid)
        return header.kind, payload

    def read_entry(self, oid: str) -> tuple[codec.Header, bytes]:
        """(header, payload) of one object, verified as :meth:`read_object`; a delta is
        decoded through its chain of bases (``header.base`` names the first)."""
        oid = parse_id(oid)
        return self._checked(oid, self._read_stored(oid))

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
        data = b"".join(self._chunks(listing, ObjectId(oid), verify=False))
        got = blob_id(data)
        if got != oid:
            for cid, size in listing.chunks:
                self._get_chunk(cid, size, of=ObjectId(oid))
            _check_total(ObjectId(oid), got)
        return data

    def _chunks(self, listing: ChunkList, of: ObjectId, *, verify: bool = True) -> Iterator[bytes]:
        """A chunk list's chunks in order, read ahead on the pool, each verified (unless
        the caller verifies the whole before anything leaves it). Chunks that lie side
        by side in a pack are read as one range (one request on an object store)."""
        pool = self._chunk_pool()
        todo = _groups(self.packs, listing)
        ahead: deque[Future[list[bytes]]] = deque()
        try:
            for group in todo:
                ahead.append(pool.submit(self._get_group, group, verify, of))
                while len(ahead) >= self.inflight:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()
        finally:
            for fut in ahead:
                fut.cancel()

    def _get_group(self, group: list[_Part], verify: bool, of: ObjectId) -> list[bytes]:
        if len(group) == 1 or group[0].where is None:
            return [self._get_chunk(p.oid, p.size, verify, of) for p in group]
        try:
            stored = self.packs.read_many([p.where for p in group if p.where is not None])
        except FileNotFoundError:  # gc rewrote the pack meanwhile: look each up again
            return [self._get_chunk(p.oid, p.size, verify, of) for p in group]
        out = []
        for part, raw in zip(group, stored, strict=True):
            header, data = self._checked(part.oid, raw) if verify else self._decode(part.oid, raw)
            if header.kind != "blob" or len(data) != part.size:
                raise IntegrityError(
                    part.oid, f"chunk {part.oid} is not a blob of {part.size} bytes; run 'cas fsck'"
                )
            out.append(data)
        return out

    def get_value(self, oid: str, kind: str) -> Any:
        """The verified, decoded value of a structured object of ``kind``."""
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
        return io.BufferedReader(_ChunkedReader(self, oid, listing), buffer_size=1 << 20)

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
        return held | self._list_loose(wanted)

    def _list_loose(self, wanted: set[ObjectId]) -> set[ObjectId]:
        """Which of ``wanted`` are loose, from listings of their fan-out folders."""
        if self.storage.listing_stats and len(wanted) > 64:
            # An object store lists 1,000 keys a request: one walk beats 256 folders.
            return wanted & {o for o, _ in self.iter_loose()}
        by_dir: dict[str, set[str]] = {}
        for o in wanted:
            by_dir.setdefault(o[:2], set()).add(o[2:])
        present: set[ObjectId] = set()
        for fan, rests in by_dir.items():
            names = set(self.storage.listdir(f"{OBJECTS}/{fan}"))
            present.update(ObjectId(fan + r) for r in rests & names)
        return present

    def __iter__(self) -> Iterator[ObjectId]:
        return (oid for oid, _ in self.iter_stats())

    def iter_stats(self) -> Iterator[tuple[ObjectId, Stat]]:
        """Every object with its stored size and age, from listings: the loose ones,
        then the packed ones (aged as their pack). One present both ways comes twice."""
        yield from self.iter_loose()
        self.packs.refresh()
        for pack_id in self.packs.ids():
            st = self.packs.stat(pack_id)
            if st is None:
                continue  # rewritten by gc since the listing
            for oid, where in self.packs.index(pack_id).entries():
                yield oid, Stat(where.length, st.mtime)

    def iter_loose(self) -> Iterator[tuple[ObjectId, Stat]]:
        """Every loose object with its stored size and age, from listings."""
        for rel, st in self.storage.walk(OBJECTS):
            parts = rel.split("/")
            if len(parts) == 3 and is_id(parts[1] + parts[2]):
                yield ObjectId(parts[1] + parts[2]), st

    def iter_temp(self) -> Iterator[tuple[str, Stat]]:
        """Temporary files left by writers that died mid-write (gc removes old ones)."""
        for rel, st in self.storage.walk(OBJECTS):
            if rel.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
                yield rel, st

    def delete(self, oid: str) -> bool:
        """Remove a loose object (a packed one goes when gc rewrites its pack)."""
        return self.storage.delete(object_path(parse_id(oid)))


#: Chunks side by side in one pack are read together up to this many stored bytes.
READ_SPAN: Final = 8 << 20


class _Part(NamedTuple):
    oid: ObjectId
    size: int
    where: packs.Where | None


def _groups(pack_set: packs.PackSet, listing: ChunkList) -> Iterator[list[_Part]]:
    """A chunk list's chunks in order, as groups to read at once: runs of chunks that
    lie side by side in one pack (up to :data:`READ_SPAN`), and loose chunks alone."""
    group: list[_Part] = []
    span = 0
    for cid, size in listing.chunks:
        where = pack_set.find(cid)
        last = group[-1].where if group else None
        if (
            where is not None and last is not None and last.pack == where.pack
            and 0 <= where.offset - (last.offset + last.length) <= packs.NEAR
            and span + where.length <= READ_SPAN
        ):  # fmt: skip
            group.append(_Part(cid, size, where))
            span += where.length
            continue
        if group:
            yield group
        group = [_Part(cid, size, where)]
        span = where.length if where is not None else 0
    if group:
        yield group


class _NewRun:
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


def _verify(oid: ObjectId, kind: str, payload: bytes) -> None:
    got = blob_id(payload) if kind == "blob" else kind_id(kind, payload)
    if got != oid:
        raise IntegrityError(
            oid,
            f"object {oid} is corrupt (expected blake3 {oid[:12]}…, got {got[:12]}…); "
            "run 'cas fsck' to list affected artifacts",
        )


def _check_total(oid: ObjectId, got: str) -> None:
    if got != oid:
        raise IntegrityError(
            oid,
            f"object {oid} is corrupt (its chunks hash to {got[:12]}…); "
            "run 'cas fsck' to list affected artifacts",
        )


class _ChunkedReader(io.RawIOBase):
    """Chunks fetched ahead on the pool, verified one by one, total hash at the end."""

    def __init__(self, space: ObjectSpace, oid: ObjectId, listing: ChunkList) -> None:
        self._oid = oid
        self._chunks = space._chunks(listing, oid)
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
                    _check_total(self._oid, self._total.hexdigest())
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
