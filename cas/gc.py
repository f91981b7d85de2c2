"""Garbage collection: plan, then execute (restic's prune).

Roots: every ref; every ref-history entry younger than the retention period; every
record the catalog holds; every deleted record whose deletion is younger than the
retention period; and every object younger than the grace period (a writer may be
mid-way through a save that will point at it). Marking follows record -> content ->
chunks / tree entries, and record -> parents.

The planner is pure: it reads and returns a frozen :class:`GcPlan`. If any root source
cannot be read (a listing fails, a record is corrupt), planning raises and nothing is
deleted. :func:`execute` deletes only what the plan names, after re-reading the refs
(a ref that moved meanwhile makes its new target and all it reaches live again) and
re-checking each object's age just before deleting it (a writer that found it present
refreshed it, and keeps it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from cas import codec
from cas.artifacts import ArtifactStore, ref_errors
from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.ids import ObjectId, is_id
from cas.journal import stamp_time
from cas.objects import references
from cas.objectspace import object_path
from cas.storage import Stat

DEFAULT_GRACE: Final = 24 * 3600.0
DEFAULT_RETENTION: Final = 30 * 24 * 3600.0

Progress = Callable[[str, int], None]


class GcRefused(CasError):
    """gc could not read a root source, so it deletes nothing."""


@dataclass(frozen=True, slots=True)
class GcPlan:
    """What gc would delete, and why the rest stays."""

    grace: float
    retention: float
    started: float
    objects: int
    roots: int
    reachable: int
    young: int
    delete: tuple[tuple[ObjectId, int], ...]  # (id, stored bytes), unreachable and old
    temp_files: tuple[str, ...]  # writers' leftovers older than the grace period
    missing: tuple[ObjectId, ...]  # referenced but absent (fsck reports these)
    ref_snapshot: tuple[tuple[str, str], ...] = field(repr=False, default=())
    listed: frozenset[ObjectId] = field(repr=False, default=frozenset())
    root_ids: frozenset[str] = field(repr=False, default=frozenset())

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.delete)

    def summary(self) -> dict[str, int | float]:
        return {
            "objects": self.objects,
            "roots": self.roots,
            "reachable": self.reachable,
            "young_unreachable_kept": self.young,
            "to_delete": len(self.delete),
            "bytes_freed": self.bytes_freed,
            "temp_files": len(self.temp_files),
            "missing": len(self.missing),
        }


class _Marker:
    """Marks everything reachable from given roots, reading only what can point on."""

    def __init__(self, store: ArtifactStore, present: dict[ObjectId, Stat]) -> None:
        self.store = store
        self.present = present
        self.marked: set[ObjectId] = set()
        self.missing: set[ObjectId] = set()

    def mark(self, roots: Iterable[str], *, may_be_gone: bool = False) -> None:
        """Mark ``roots`` and all they reach. ``may_be_gone``: roots that an earlier gc
        may rightly have collected (old history, deleted records) are not "missing"."""
        stack = [ObjectId(r) for r in roots if is_id(r)]
        gone_ok = set(stack) if may_be_gone else set()
        while stack:
            oid = stack.pop()
            if oid in self.marked:
                continue
            if oid not in self.present:
                if oid not in gone_ok:
                    self.missing.add(oid)
                continue
            self.marked.add(oid)
            stack.extend(r for r in self._children(oid) if r not in self.marked)

    def _children(self, oid: ObjectId) -> list[ObjectId]:
        storage = self.store.storage
        try:
            head = storage.read_head(object_path(oid), codec.HEADER_SIZE)
            kind = codec.read_header(oid, head).kind
            if kind == "blob":
                return []
            _, payload = self.store.space.read_object(oid)
            return references(kind, oid, payload)
        except ObjectNotFound:
            self.missing.add(oid)
            return []
        except IntegrityError as exc:
            raise GcRefused(
                f"gc deletes nothing: {exc}. Repair first ('cas fsck --repair'), then run gc again"
            ) from exc


def plan(
    store: ArtifactStore,
    *,
    grace: float = DEFAULT_GRACE,
    retention: float = DEFAULT_RETENTION,
    now: float | None = None,
    progress: Progress | None = None,
) -> GcPlan:
    """Decide what to delete; read-only."""
    now = time.time() if now is None else now
    step = progress or (lambda what, n: None)
    # Listing first: anything written after this moment is not a candidate at all.
    present = dict(store.space.iter_stats())
    step("listed objects", len(present))
    temp = tuple(rel for rel, st in store.space.iter_temp() if now - st.mtime > grace)

    with ref_errors():
        refs = sorted(store.refs.items())
        kept: set[str] = set()  # history within retention: may have been collected
        for name in store.refs.log_names():
            for entry in store.refs.log(name):
                if now - entry.time <= retention:
                    kept.update(i for i in (entry.old, entry.new) if i)
    store.sync()
    engine = store.index.catalog
    roots: set[str] = {rid for _, rid in refs} | set(engine.ids())
    kept.update(
        rid for rid, stamp in engine.tombstones().items() if now - stamp_time(stamp) <= retention
    )
    step("roots", len(roots) + len(kept))

    marker = _Marker(store, present)
    marker.mark(roots)
    marker.mark(kept, may_be_gone=True)
    young = [oid for oid, st in present.items() if now - st.mtime <= grace and oid not in marker.marked]
    marker.mark(young)
    step("marked", len(marker.marked))
    delete = tuple(
        (oid, st.size) for oid, st in sorted(present.items()) if oid not in marker.marked
    )
    return GcPlan(
        grace=grace,
        retention=retention,
        started=now,
        objects=len(present),
        roots=len(roots | kept),
        reachable=len(marker.marked) - len(young),
        young=len(young),
        delete=delete,
        temp_files=temp,
        missing=tuple(sorted(marker.missing)),
        ref_snapshot=tuple(refs),
        listed=frozenset(present),
        root_ids=frozenset(roots),
    )


def _reachable_doomed(
    store: ArtifactStore, roots: Iterable[str], doomed: set[ObjectId], listed: frozenset[ObjectId]
) -> set[ObjectId]:
    """Which condemned objects the new roots reach. An object that was listed and not
    condemned was marked by the plan with all it reaches, so the walk stops there."""
    found: set[ObjectId] = set()
    seen: set[ObjectId] = set()
    stack = [ObjectId(r) for r in roots if is_id(r)]
    while stack:
        oid = stack.pop()
        if oid in seen or (oid in listed and oid not in doomed):
            continue
        seen.add(oid)
        if oid in doomed:
            found.add(oid)
        try:
            head = store.storage.read_head(object_path(oid), codec.HEADER_SIZE)
            if codec.read_header(oid, head).kind == "blob":
                continue
            kind, payload = store.space.read_object(oid)
            stack.extend(references(kind, oid, payload))
        except (FileNotFoundError, ObjectNotFound):
            continue
        except IntegrityError as exc:
            raise GcRefused(f"gc stops before deleting: {exc}") from exc
    return found


@dataclass(frozen=True, slots=True)
class GcResult:
    deleted: int
    bytes_freed: int
    spared: int  # planned, but reachable again or refreshed by a writer meanwhile
    temp_removed: int
    log_entries_pruned: int


def execute(store: ArtifactStore, gc_plan: GcPlan, *, progress: Progress | None = None) -> GcResult:
    """Delete what the plan names, sparing anything that became live since."""
    step = progress or (lambda what, n: None)
    doomed = {oid: size for oid, size in gc_plan.delete}
    # Roots that appeared since planning (a ref moved, a save registered a record):
    # they and everything they reach live again, even content the plan condemned.
    with ref_errors():
        now_refs = {rid for _, rid in store.refs.items()}
    store.sync()
    fresh = (now_refs | set(store.index.catalog.ids())) - gc_plan.root_ids
    for oid in _reachable_doomed(store, fresh, set(doomed), gc_plan.listed):
        doomed.pop(oid, None)
    spared = len(gc_plan.delete) - len(doomed)
    deleted = freed = 0
    batch: list[str] = []
    for oid, size in doomed.items():
        st = store.storage.stat(object_path(oid))
        if st is None:
            continue
        if time.time() - st.mtime <= gc_plan.grace:
            spared += 1  # a writer found it present and refreshed it: it is in use
            continue
        batch.append(object_path(oid))
        freed += size
        if len(batch) >= 1000:
            deleted += store.storage.delete_many(batch)
            step("deleted", deleted)
            batch = []
    if batch:
        deleted += store.storage.delete_many(batch)
    step("deleted", deleted)
    temp_removed = store.storage.delete_many(list(gc_plan.temp_files))
    pruned = 0
    cutoff = gc_plan.started - gc_plan.retention
    with ref_errors():
        for name in store.refs.log_names():
            pruned += store.refs.prune_log(name, cutoff)
    return GcResult(deleted, freed, spared, temp_removed, pruned)
