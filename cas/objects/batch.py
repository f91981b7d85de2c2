"""A batch of new objects, held until one write makes them durable together.

While a batch is open (:meth:`ObjectSpace.batch`), new objects are encoded and held
here instead of being written one file (one fsync, one request) each. They are
readable from here at once by this process. When the batch closes, or holds a pack's
worth, they are written: as one pack when there are enough of them to be worth it,
else as loose objects, unsynced, followed by one sync of the storage. Whoever
publishes a name that reaches them flushes first (:meth:`ObjectSpace.flush`), so no
name is ever published before what it reaches is durable.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Final

from cas.objects import packs
from cas.objects.ids import ObjectId
from cas.objects.pack_set import PackSet
from cas.storage import Storage

#: Fewer new objects than this are written loose (as git keeps loose objects): a pack
#: of two objects would cost its index too, and many tiny packs slow every lookup.
PACK_FROM: Final = 16

#: ... or when they hold this many bytes (a large file's few chunks: on an object store,
#: one pack of them is read back with a few range requests, not one GET a chunk).
PACK_BYTES_FROM: Final = 4 << 20

#: Full packs written at once in the background, while the next one fills; a batch
#: holds at most this many more packs' worth of objects in memory than the one it is
#: filling. On an object store an upload holds its pack twice (its bytes, and the HTTP
#: client's copy of them): four at once made a 200 MiB save on S3 peak at +318 MiB over
#: an idle process, and one at a time puts as fast as s3fs does (docs/performance.md).
WRITING: Final = 1


class Pending:
    """New objects of open batches, in the order they came, deduplicated. A full pack
    is written in the background (object stores: uploads overlap the work that fills
    the next one), readable from here until it is committed; :meth:`flush` waits."""

    def __init__(
        self,
        storage: Storage,
        pack_set: PackSet,
        loose_path: Callable[[ObjectId], str],
        before_pack: Callable[[], None],
        present_loose: Callable[[list[ObjectId]], set[ObjectId]],
        tickets: Callable[[], int],
    ) -> None:
        self.storage = storage
        self.packs = pack_set
        self.loose_path = loose_path
        self.before_pack = before_pack  # e.g. mark the root as format 2, once
        self.present_loose = present_loose  # which are loose already (refreshed)
        self._unchecked: set[ObjectId] = set()  # not yet looked for as loose objects
        self._order: dict[ObjectId, int] = {}  # each held object's place in its pack
        self._tickets = tickets
        self.lock = threading.RLock()
        self.wrote_pack = False
        self._objects: dict[ObjectId, bytes] = {}
        self._bytes = 0
        # Full packs being written: their objects, or (once a pack's bytes are built)
        # views of its bytes, so that a pack in flight is held once, not twice.
        self._sealed: list[dict[ObjectId, Any]] = []  # bytes, or memoryview of a pack
        self._writes: deque[Future[None]] = deque()
        self._pool: ThreadPoolExecutor | None = None

    def get(self, oid: ObjectId) -> bytes | None:
        with self.lock:
            held = self._objects.get(oid)
            if held is None:
                for sealed in self._sealed:
                    held = sealed.get(oid)
                    if held is not None:
                        break
            return held if held is None or isinstance(held, bytes) else bytes(held)

    def __contains__(self, oid: object) -> bool:
        with self.lock:
            return oid in self._objects or any(oid in s for s in self._sealed)

    def ticket(self) -> int:
        """A place in the order of packs, taken before the object is ready."""
        return self._tickets()

    def add(
        self, oid: ObjectId, stored: bytes, *, unchecked: bool = False, order: int | None = None
    ) -> bool:
        """Hold a new object; False if it is held already. ``unchecked``: it may be a
        loose object already, which is asked for all such at once when written. A full
        pack is sealed and written in the background (at most :data:`WRITING` at once)."""
        with self.lock:
            if oid in self:
                return False
            self._objects[oid] = stored
            self._order[oid] = self.ticket() if order is None else order
            if unchecked:
                self._unchecked.add(oid)
            self._bytes += len(stored)
            if self._bytes < packs.PACK_SIZE:
                return True
            sealed, self._objects, self._bytes = self._objects, {}, 0
            self._sealed.append(sealed)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WRITING, thread_name_prefix="cas-pack")
            after = self._writes[-1] if self._writes else None
            self._writes.append(self._pool.submit(self._write_sealed, sealed, after))
            oldest = self._writes.popleft() if len(self._writes) > WRITING else None
        if oldest is not None:  # bounded memory: wait for the oldest upload
            oldest.result()
        return True

    def _write_sealed(self, sealed: dict[ObjectId, Any], after: Future[None] | None) -> None:
        try:
            self._write(list(sealed.items()), full=True, after=after, hold=sealed)
        finally:
            with self.lock:
                self._sealed.remove(sealed)

    def flush(self, *, durable: bool = True) -> int:
        """Write everything held and wait for the packs being written; then, with
        ``durable``, sync the storage once if anything was written unsynced. Returns
        the number of objects this call wrote."""
        with self.lock:
            objects, self._objects, self._bytes = self._objects, {}, 0
            self._sealed.append(objects)  # readable until written
            writes, self._writes = list(self._writes), deque()
        try:
            # Packs are committed in the order they were filled, so a pack never lands
            # before one holding what its objects point at (an interrupted push leaves
            # only complete pieces).
            for fut in writes:
                fut.result()
            self._write(list(objects.items()))
        finally:
            with self.lock:
                self._sealed.remove(objects)
        if durable:
            self.storage.sync()  # a no-op unless something was written unsynced
        return len(objects)

    def _create_loose(self, objects: list[tuple[ObjectId, bytes]]) -> None:
        """A few new objects on an object store: conditional creates in parallel; one
        that was there already is refreshed as a dedup hit (``present_loose``)."""

        def one(item: tuple[ObjectId, bytes]) -> None:
            oid, stored = item
            if not self.storage.create(self.loose_path(oid), stored):
                self.present_loose([oid])

        if len(objects) == 1:
            one(objects[0])
            return
        with ThreadPoolExecutor(len(objects), thread_name_prefix="cas-loose") as pool:
            list(pool.map(one, objects))

    def _write(
        self,
        objects: list[tuple[ObjectId, bytes]],
        *,
        full: bool = False,
        after: Future[None] | None = None,
        hold: dict[ObjectId, Any] | None = None,
    ) -> None:
        """Write objects unsynced: as one pack if there are enough of them (a full
        pack's worth, :data:`PACK_FROM` objects, or :data:`PACK_BYTES_FROM` bytes), else
        loose. The caller keeps them readable from memory until this returns (``hold``:
        where it does so, read from the pack's bytes once they are built)."""
        with self.lock:
            unchecked = [oid for oid, _ in objects if oid in self._unchecked]
            self._unchecked.difference_update(unchecked)
            places = {oid: self._order.pop(oid, 0) for oid, _ in objects}
        pack = (
            full or len(objects) >= PACK_FROM
            or sum(len(stored) for _, stored in objects) >= PACK_BYTES_FROM
        )  # fmt: skip
        if unchecked and not pack and self.storage.creates:
            self._create_loose(objects)  # the write is the check: one request each
            return
        if unchecked:  # dedup exact across loose objects too: those present are not written
            present = self.present_loose(unchecked)
            objects = [(oid, stored) for oid, stored in objects if oid not in present]
        if not objects:
            return
        if pack:
            objects.sort(key=lambda o: places[o[0]])  # as they were asked for
            self.before_pack()
            pack_id, parts, index = packs.build(objects)
            data = b"".join(parts)
            if hold is not None:  # the objects are read from the pack's bytes from now on
                view = memoryview(data)
                with self.lock:
                    for oid, at, length in packs.scan(data):
                        hold[oid] = view[at : at + length]
                del parts
                objects.clear()
            self.storage.write_atomic(packs.pack_path(pack_id), data, durable=False)
            if after is not None:
                after.result()  # the pack filled before this one is committed first
            self.storage.write_atomic(packs.index_path(pack_id), index, durable=False)
            self.packs.add(pack_id, index)
            self.wrote_pack = True
        elif len(objects) == 1 or self.storage.local_dir is not None:
            for oid, stored in objects:
                self.storage.write_atomic(self.loose_path(oid), stored, durable=False)
        else:  # an object store: the few requests in parallel, one round trip
            with ThreadPoolExecutor(len(objects), thread_name_prefix="cas-loose") as pool:
                list(
                    pool.map(
                        lambda o: self.storage.write_atomic(self.loose_path(o[0]), o[1]), objects
                    )
                )

    def index_packs(self) -> None:
        """After a flush that wrote packs: list the packs and write a multi-pack index
        if :data:`cas.objects.multipack.WRITE_FROM` or more are not covered by one, as
        a reader that lists them does (best effort). A root filled by batches then
        never holds more than that many packs outside a multi-pack index: a new
        machine's first lookup reads one index and fewer than that many pack indexes,
        not one per pack the writers left."""
        if not self.wrote_pack:
            return
        self.wrote_pack = False
        try:
            self.packs.refresh()
        except Exception as exc:  # noqa: BLE001 - it only saves reads
            logging.getLogger("cas").warning("packs not indexed after a batch: %s", exc)

    def close(self) -> None:
        """The batch is over (written, or dropped after a failure)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class Held:
    """Every open batch of one object space: what any of them holds reads at once, as
    if written (each batch writes and drops its own; a failed one takes nothing of
    another with it)."""

    def __init__(self) -> None:
        self._open: list[Pending] = []
        self._lock = threading.Lock()
        self._tickets = itertools.count()

    def ticket(self) -> int:
        """Places in pack order, shared by the batches (only the order matters)."""
        return next(self._tickets)

    def open(self, batch: Pending) -> None:
        with self._lock:
            self._open = [*self._open, batch]

    def close(self, batch: Pending) -> None:
        with self._lock:
            self._open = [b for b in self._open if b is not batch]
        batch.close()

    def get(self, oid: ObjectId) -> bytes | None:
        for batch in self._open:  # a snapshot: the list is replaced, never changed
            held = batch.get(oid)
            if held is not None:
                return held
        return None

    def __contains__(self, oid: object) -> bool:
        return any(oid in batch for batch in self._open)


class Batches:
    """Each thread's open batch (the outermost of nested blocks, or the one it joined),
    opened by ``make`` and registered with ``held`` while it is open."""

    def __init__(self, held: Held, make: Callable[[], Pending]) -> None:
        self._held = held
        self._make = make
        self._local = threading.local()

    def current(self) -> Pending | None:
        """This thread's open batch, if any."""
        batch: Pending | None = getattr(self._local, "batch", None)
        return batch

    @contextlib.contextmanager
    def open(self, *, keep_on_error: bool = False) -> Iterator[Pending]:
        """See :meth:`ObjectSpace.batch`."""
        held = self.current()
        if held is not None:  # nested: joins the outermost
            yield held
            return
        held = self._make()
        self._held.open(held)
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
            held.index_packs()
        finally:
            # A batch whose block or flush failed is dropped whole: what it held was never
            # visible to anyone else, and nothing reaching it was published.
            self._local.batch = None
            self._held.close(held)

    @contextlib.contextmanager
    def joining(self, held: Pending | None = None) -> Iterator[None]:
        """See :meth:`ObjectSpace.joining`."""
        before = self.current()
        self._local.batch = held
        try:
            yield
        finally:
            self._local.batch = before
