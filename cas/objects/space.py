"""The object space: immutable objects under ``<root>/objects/``, keyed by their ids.

Writes hash first and write nothing when the object exists (dedup), refreshing an old
object's age so a concurrent gc's grace period counts from this write. New objects are
written atomically (temp name + rename locally, one PUT on object stores), so no reader
ever sees a partial object under its final name. Every read verifies: the bytes returned
hash to the id asked for, or an :class:`IntegrityError` names the object.

:class:`ObjectSpace` is its two halves joined on one state: reading
(:mod:`cas.objects.reader`, every read through one decode-and-verify step) and writing
(:mod:`cas.objects.writer`: dedup, batches, deltas, the format marker). The parts of
their work that stand alone live beside them: the format marker
(:mod:`cas.objects.marker`), loose objects' paths and listings (:mod:`cas.objects.loose`),
batches (:mod:`cas.objects.batch`), choosing delta bases
(:mod:`cas.objects.delta_bases`), the chunked write and read paths
(:mod:`cas.objects.chunk_writes`, :mod:`cas.objects.chunk_reads`) and the thread pools
they run on (:mod:`cas.objects.pools`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cas.objects import codec, delta_bases, marker
from cas.objects.batch import Batches, Held
from cas.objects.chunk_writes import CREATE_AFTER
from cas.objects.ids import ObjectId, parse_id
from cas.objects.loose import OBJECTS, object_path
from cas.objects.marker import DELTAS_FROM, FORMAT_VERSION, MARKER, PACKS_FROM
from cas.objects.pack_set import PackSet
from cas.objects.pools import io_pool, worker_pool
from cas.objects.reader import WITH_PREVIOUS, ObjectReader
from cas.objects.writer import FRESHEN_AFTER, ObjectWriter
from cas.storage import Storage, open_storage
from cas.storage.cache import remote_cache

__all__ = [
    "CREATE_AFTER",
    "DELTAS_FROM",
    "FORMAT_VERSION",
    "FRESHEN_AFTER",
    "MARKER",
    "OBJECTS",
    "PACKS_FROM",
    "WITH_PREVIOUS",
    "ObjectReader",
    "ObjectSpace",
    "ObjectWriter",
    "io_pool",
    "object_path",
    "worker_pool",
]


def _index_cache(storage: Storage) -> Path | None:
    """Where this machine keeps a remote root's pack indexes between processes."""
    if storage.local_dir is not None or storage.url.startswith("memory://"):
        return None  # a local root reads its own indexes as fast as a cache would
    return remote_cache(storage.url) / "packs"


class ObjectSpace(ObjectWriter):
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

    @classmethod
    def from_url(
        cls, url: str | os.PathLike[str], *, fsync: bool = True, create: bool = True, **options: Any
    ) -> ObjectSpace:
        return cls(open_storage(url, fsync=fsync, **options), create=create)

    # -- deletion --------------------------------------------------------------------

    def delete(self, oid: str) -> bool:
        """Remove a loose object (a packed one goes when gc rewrites its pack)."""
        return self.storage.delete(object_path(parse_id(oid)))
