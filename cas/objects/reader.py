"""Reading objects: every read of a stored object goes through one decode-and-verify
step (:meth:`ObjectReader._checked`): the bytes returned hash to the id asked for, or an
:class:`IntegrityError` names the object (a delta through its chain of bases names the
bad level). Objects are found held by an open batch, in a pack, or loose.

:class:`ObjectReader` is the reading half of :class:`cas.objects.space.ObjectSpace`
(which builds its state); :class:`cas.objects.writer.ObjectWriter` is the writing half.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Final

from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects import chunk_reads, codec, delta, delta_bases, loose, packs
from cas.objects.batch import Held
from cas.objects.ids import ObjectId, blob_id, parse_id, verify
from cas.objects.kinds import ChunkList, unpack
from cas.objects.loose import object_path
from cas.objects.pack_set import PackSet
from cas.objects.pools import ahead, worker_pool
from cas.storage import Stat, Storage

#: A record read from a pack on an object store brings the object before it (most
#: often its content's root: a tree, a chunk list, a small blob) in the same range when
#: that object is at most this big.
WITH_PREVIOUS: Final = 2 << 20


class ObjectReader:
    """Reads of objects of every kind, each verified (see the module docstring)."""

    storage: Storage
    packs: PackSet
    pending: Held  # the objects every open batch holds, readable at once
    inflight: int
    _ahead: dict[ObjectId, bytes]  # stored forms read with a neighbour
    _recent: delta_bases.Recent | None
    _pool: ThreadPoolExecutor | None

    def _chunk_pool(self) -> ThreadPoolExecutor:
        return self._pool or worker_pool()

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def slow_reads(self) -> bool:
        """True where every read is a request (an object store), not a local file read."""
        return self.storage.io_threads > 0

    def recent_base(self, oid: ObjectId, kind: str) -> delta.Base | None:
        """A small object of ``kind`` this space wrote or read a moment ago, as a delta
        base (:class:`cas.objects.delta_bases.Recent`), or None: read it."""
        return self._recent.get(oid, kind) if self._recent is not None else None

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
        return self.read_prefix(oid, codec.HEAD_SIZE)

    def read_prefix(self, oid: str, n: int) -> bytes:
        """The first ``n`` bytes of an object's stored form (all of it if shorter): its
        header and the start of its body, unverified, in one range read."""
        oid = parse_id(oid)
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


_verify = verify  # the one check, in cas.objects.ids
