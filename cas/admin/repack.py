"""gc's work on packs: a pack holding garbage is rewritten without it, as ``git gc`` and
``restic prune`` do, and removed when nothing in it lives.

Order keeps every reader whole: the live objects are written to a new pack and its
index is committed first; only then does the old index go (the old pack vanishes from
lookups) and then the old pack. A reader holding the old index finds the old pack
gone, lists the packs again and reads the new one. A writer that relied on an object
of the old pack since the plan refreshed the pack's age (a dedup hit touches its
pack), and a pack younger than the grace period is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from cas.objects import packs
from cas.objects.digests import Digests
from cas.objects.ids import ObjectId
from cas.objects.space import object_path
from cas.repo.repository import Repository


def repack(
    repo: Repository,
    pack_ids: Sequence[str],
    garbage: Digests,
    grace: float,
    revived: set[bytes],
    *,
    planned: float,
) -> tuple[int, int, int]:
    """Rewrite ``pack_ids`` without their ``garbage`` (unless ``revived``) when they are
    still older than ``grace`` and untouched since the plan began (``planned``): a
    dedup hit on one of a pack's objects since then refreshed it. Returns (objects
    deleted, bytes freed, packs or objects spared)."""
    pack_set = repo.space.packs
    deleted = freed = spared = 0

    def untouched(pack_id: str) -> bool:
        st = pack_set.stat(pack_id)
        return st is not None and st.mtime < planned and time.time() - st.mtime > grace

    for pack_id in pack_ids:
        if not untouched(pack_id):
            spared += 1
            continue
        live: list[tuple[ObjectId, packs.Where]] = []
        dead = dead_bytes = 0
        for oid, where in pack_set.index(pack_id).entries():
            digest = bytes.fromhex(oid)
            if digest in garbage and digest not in revived:
                dead += 1
                dead_bytes += where.length
            else:
                live.append((oid, where))
        if not dead:
            continue  # all of it was reached again since the plan
        _write_live(repo, live)
        if not untouched(pack_id):  # relied on meanwhile: keep both copies
            spared += dead
            continue
        repo.storage.delete(packs.index_path(pack_id))
        repo.storage.delete(packs.pack_path(pack_id))
        deleted += dead
        freed += dead_bytes
    if pack_ids:
        pack_set.refresh()
    return deleted, freed, spared


def pack_loose(repo: Repository, oids: Digests) -> int:
    """Move loose objects into packs: each pack is committed (pack, then index) before
    its objects' loose files are removed, so every object is readable throughout (a
    reader that misses a loose file finds the pack). Returns the objects packed."""
    group: list[tuple[ObjectId, bytes]] = []
    size = done = 0

    def commit() -> int:
        repo.space.mark_packed()
        pack_id, index = packs.write(repo.storage, group)
        repo.space.packs.add(pack_id, index)
        repo.storage.delete_many([object_path(oid) for oid, _ in group])
        return len(group)

    for i in range(len(oids)):
        oid = oids.oid(i)
        try:
            stored = repo.storage.read(object_path(oid))
        except FileNotFoundError:
            continue  # gone since the plan (another gc)
        group.append((oid, stored))
        size += len(stored)
        if size >= packs.PACK_SIZE:
            done += commit()
            group, size = [], 0
    if group:
        done += commit()
    return done


def _write_live(repo: Repository, live: list[tuple[ObjectId, packs.Where]]) -> None:
    """Copy live objects into new packs (a pack's worth at a time, read in ranges)."""
    live.sort(key=lambda e: e[1].offset)
    group: list[tuple[ObjectId, packs.Where]] = []
    size = 0
    for oid, where in live:
        group.append((oid, where))
        size += where.length
        if size >= packs.PACK_SIZE:
            _write_group(repo, group)
            group, size = [], 0
    if group:
        _write_group(repo, group)


def _write_group(repo: Repository, group: list[tuple[ObjectId, packs.Where]]) -> None:
    stored = repo.space.packs.read_many([w for _, w in group])
    objects = [(oid, data) for (oid, _), data in zip(group, stored, strict=True)]
    repo.space.mark_packed()
    pack_id, index = packs.write(repo.storage, objects)
    repo.space.packs.add(pack_id, index)
