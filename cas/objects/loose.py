"""Loose objects: one file each under ``<root>/objects/``, at the path its id maps to
(the one mapping, :func:`object_path`), and the listings that find them.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from cas.objects.ids import ObjectId, is_id
from cas.objects.pack_set import PackSet
from cas.storage import TEMP_PREFIX, Stat, Storage

OBJECTS: Final = "objects"


def object_path(oid: ObjectId) -> str:
    """The one mapping from an id to a path: ``objects/ab/cdef...``."""
    return f"{OBJECTS}/{oid[:2]}/{oid[2:]}"


def listed(storage: Storage, wanted: set[ObjectId]) -> set[ObjectId]:
    """Which of ``wanted`` are loose, from listings of their fan-out folders."""
    if storage.listing_stats and len(wanted) > 64:
        # An object store lists 1,000 keys a request: one walk beats 256 folders.
        return wanted & {o for o, _ in iter_loose(storage)}
    by_dir: dict[str, set[str]] = {}
    for o in wanted:
        by_dir.setdefault(o[:2], set()).add(o[2:])

    def one(fan: str) -> set[ObjectId]:
        names = set(storage.listdir(f"{OBJECTS}/{fan}"))
        return {ObjectId(fan + r) for r in by_dir[fan] & names}

    # On an object store each folder is a request: they go side by side (a save of a
    # 40-file folder listed 40 folders one after another, 2 s at 20 ms each way).
    threads = min(storage.io_threads, len(by_dir))
    if threads <= 1:
        found = [one(fan) for fan in by_dir]
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="cas-list") as pool:
            found = list(pool.map(one, by_dir))
    return set().union(*found)


def iter_loose(storage: Storage) -> Iterator[tuple[ObjectId, Stat]]:
    """Every loose object with its stored size and age, from listings."""
    for rel, st in storage.walk(OBJECTS):
        parts = rel.split("/")
        if len(parts) == 3 and is_id(parts[1] + parts[2]):
            yield ObjectId(parts[1] + parts[2]), st


def iter_packed(pack_set: PackSet) -> Iterator[tuple[ObjectId, Stat]]:
    """Every packed object with its stored size, aged as its pack, from listings."""
    pack_set.refresh()
    for pack_id in pack_set.ids():
        st = pack_set.stat(pack_id)
        if st is None:
            continue  # rewritten by gc since the listing
        for oid, where in pack_set.index(pack_id).entries():
            yield oid, Stat(where.length, st.mtime)


def iter_temp(storage: Storage) -> Iterator[tuple[str, Stat]]:
    """Temporary files left by writers that died mid-write (gc removes old ones)."""
    for rel, st in storage.walk(OBJECTS):
        if rel.rsplit("/", 1)[-1].startswith(TEMP_PREFIX):
            yield rel, st
