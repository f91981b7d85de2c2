"""Garbage collection: plan, then execute (restic's prune).

Roots: every ref; every ref-history entry younger than the retention period; every
record the catalog holds; every deleted record whose deletion is younger than the
retention period; and every object younger than the grace period (a writer may be
mid-way through a save that will point at it). Marking follows record -> content ->
chunks / tree entries, and record -> parents, and every delta to its base (and the
base's base): a base is kept while a delta that reaches it lives, though what the base
itself points at (an old version's files) may go.

The planner is pure: it reads and returns a frozen :class:`GcPlan`. If any root source
cannot be read (a listing fails, a record is corrupt), planning raises and nothing is
deleted. :func:`execute` deletes only what the plan names, after re-reading the refs
(a ref that moved meanwhile makes its new target and all it reaches live again) and
re-checking each object's age just before deleting it (a writer that found it present
refreshed it, and keeps it).

Memory stays small at millions of objects (:mod:`cas.admin.marking`): the plan's
deletions are kept as digests and sizes (:class:`Condemned`): about 33 bytes per object
on a local root (49 on object stores, whose listings also carry size and age), plus 40
per object condemned, not a Python object per object.
"""

from __future__ import annotations

import contextlib
import time
from array import array
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Final

from cas.admin import leaves, local_objects
from cas.admin.local_objects import LocalObjects
from cas.admin.marking import (
    HEAD,
    PROBE,
    READ,
    REPAIR,
    ROUND,
    GcRefused,
    Listing,
    Marker,
    Pending,
    ages,
    children,
    digests,
    list_objects,
    unmarked,
)  # fmt: skip
from cas.admin.repack import pack_loose, repack
from cas.admin.window import repack_window
from cas.errors import IntegrityError
from cas.objects import multipack
from cas.objects.digests import Condemned, Digests
from cas.objects.ids import ObjectId
from cas.objects.space import OBJECTS, object_path
from cas.repo.journal import stamp_time
from cas.repo.repository import HasRepository, Repository, repository
from cas.storage import Stat

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_RETENTION",
    "GcPlan",
    "GcRefused",
    "GcResult",
    "execute",
    "plan",
]

DEFAULT_GRACE: Final = 24 * 3600.0
#: ``cas gc --pack`` packs the loose objects that live once there are this many of them
#: (single saves write loose objects; a pack of them lists, copies and backs up as one
#: file). Plain gc leaves them, as ``git prune`` does.
PACK_LOOSE_FROM: Final = 1000
DEFAULT_RETENTION: Final = 30 * 24 * 3600.0
#: A writer's temporary file, or a pack whose index is not written yet, is removed only
#: once it is this old (15 minutes), whatever the grace: far above any one write.
TEMP_AGE: Final = 900.0

#: Object stores delete up to this many keys a request; local deletes go in such batches too.
DELETE_BATCH: Final = 1000
#: Threads reading records, trees and headers while marking, and deleting, on a local
#: disk: reads of objects not in the page cache and unlinks wait on the disk, and
#: overlap (measured here: 100,000 cold header reads 10-36 s on one thread, 4-5 s on
#: eight; 30,000 unlinks 3-5 s on one, 1-2 s on eight; gc of 50,000 cold objects
#: 3.3 s on eight, 2.5 s on 32, no better on 64: then the CPU bounds it).
_LOCAL_THREADS: Final = 32

Progress = Callable[[str, int], None]


# -- the plan ------------------------------------------------------------------------------


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
    delete: Condemned  # (id, stored bytes) pairs, unreachable and old, sorted by id
    temp_files: tuple[str, ...]  # writers' leftovers older than the grace period
    missing: tuple[ObjectId, ...]  # referenced but absent (fsck reports these)
    ref_snapshot: tuple[tuple[str, str], ...] = field(repr=False, default=())
    listed: Digests = field(repr=False, compare=False, default_factory=Digests)
    root_ids: frozenset[str] = field(repr=False, default=frozenset())
    #: Objects the plan kept only as delta bases (their references were not followed).
    as_base: frozenset[bytes] = field(repr=False, compare=False, default=frozenset())
    #: Unreachable, old objects inside packs, and the packs that hold them (rewritten
    #: without them, or removed when nothing in them lives).
    pack_garbage: Condemned = field(
        repr=False, compare=False, default_factory=lambda: Condemned(Digests(), array("q"))
    )
    repack: tuple[str, ...] = ()
    #: Loose objects that live, to move into packs (``cas gc --pack``).
    to_pack: Digests = field(repr=False, compare=False, default_factory=Digests)

    @property
    def bytes_freed(self) -> int:
        return self.delete.total + self.pack_garbage.total

    def summary(self) -> dict[str, int | float]:
        return {
            "objects": self.objects,
            "roots": self.roots,
            "reachable": self.reachable,
            "young_unreachable_kept": self.young,
            "to_delete": len(self.delete) + len(self.pack_garbage),
            "packs_to_rewrite": len(self.repack),
            "loose_to_pack": len(self.to_pack),
            "bytes_freed": self.bytes_freed,
            "temp_files": len(self.temp_files),
            "missing": len(self.missing),
        }


def _old_temp_files(repo: Repository, listing: Listing, now: float, grace: float) -> list[str]:
    """Writers' temporary files (and packs without an index) older than the grace
    period and than :data:`TEMP_AGE`: a writer that is writing one is alive, whatever
    the grace (``--grace 0`` frees what nothing reaches, not what a writer is
    finishing: a pack whose index was being written was lost beside ``--grace 0``)."""
    temp = []
    for rel, st in listing.temp:
        st = st or repo.storage.stat(rel)
        if st is not None and now - st.mtime > max(grace, TEMP_AGE):
            temp.append(rel)
    return temp


def _roots(
    repo: Repository, now: float, retention: float
) -> tuple[list[tuple[str, str]], set[str], set[str]]:
    """(refs, roots, kept): every ref and catalog record; and what history within
    retention and recent deletions point at (which an earlier gc may have collected).
    Raises :class:`GcRefused` if any of it does not read."""
    try:
        kept: set[str] = set()
        state = repo.names.state()
        if state is not None:  # an object store: every ref and entry in a few listings
            refs = state.items()
            for _, _, entry in state.history():
                if now - entry.time <= retention:
                    kept.update(i for i in (entry.old, entry.new) if i)
        else:
            refs = sorted(repo.names.items())
            for name in repo.names.log_names():
                for entry in repo.names.log(name):
                    if now - entry.time <= retention:
                        kept.update(i for i in (entry.old, entry.new) if i)
    except IntegrityError as exc:
        why = str(exc).removesuffix("; run 'cas fsck'")
        raise GcRefused(f"gc deletes nothing: {why}. {REPAIR}") from exc
    repo.sync()
    if repo.index.damaged:
        _, (_, why) = min(repo.index.damaged.items())
        why = why.removesuffix("; run 'cas fsck'")
        more = len(repo.index.damaged) - 1
        raise GcRefused(
            f"gc deletes nothing: {why}"
            + (f" (and {more} more catalog entries do not read)" if more else "")
            + f": what it names may be a root. {REPAIR}"
        )
    engine = repo.index.catalog
    roots: set[str] = {rid for _, rid in refs} | set(engine.ids())
    kept.update(
        rid for rid, stamp in engine.tombstones().items() if now - stamp_time(stamp) <= retention
    )
    return refs, roots, kept


def _mark_young(
    repo: Repository, listing: Listing, marker: Marker, pool: ThreadPoolExecutor,
    now: float, grace: float,
) -> tuple[int, array[int], array[int]]:  # fmt: skip
    """Only what nothing reaches needs its age: young ones are roots (marked as they
    come, a round at a time), old ones go unless a young one reaches them. Returns
    (young count, positions and sizes of the old unreached)."""
    young = 0
    batch: list[bytes] = []
    old_pos: array[int] = array("q")
    old_size: array[int] = array("q")
    for pos, st in ages(repo.storage, listing, unmarked(marker.marked), pool, marker.local):
        if st is None or marker.marked[pos]:
            continue  # gone since the listing, or reached from a young one meanwhile
        if now - st.mtime <= grace:
            young += 1
            batch.append(listing.digests.digest(pos))
            if len(batch) >= ROUND:
                marker.mark(batch, PROBE)
                batch = []
        else:
            old_pos.append(pos)
            old_size.append(st.size)
    marker.mark(batch, PROBE)
    return young, old_pos, old_size


def _local_objects(
    repo: Repository, listing: Listing | None
) -> AbstractContextManager[LocalObjects | None]:
    """A local root's fan-out folders, open for reads and deletes by name; None on an
    object store, and for reads (``listing`` given) where packs hold objects too (the
    object space then says where each object is read from)."""
    root = repo.storage.local_dir
    if root is None or not local_objects.supported() or (listing is not None and listing.packs):
        return contextlib.nullcontext()
    return LocalObjects(root)


def plan(
    target: Repository | HasRepository,
    *,
    grace: float = DEFAULT_GRACE,
    retention: float = DEFAULT_RETENTION,
    now: float | None = None,
    progress: Progress | None = None,
    pack_loose_from: int | None = None,
) -> GcPlan:
    """Decide what to delete; with ``pack_loose_from`` (``cas gc --pack``: at least
    :data:`PACK_LOOSE_FROM`), also which loose objects that live to move into packs,
    when there are at least that many. Deletes nothing; what it writes are caches (it
    brings this machine's catalog up to date with the journal and, on an object store,
    may leave a ref snapshot and the leaves it learned for the next gc:
    :mod:`cas.admin.leaves`)."""
    repo = repository(target)
    now = time.time() if now is None else now
    step = progress or (lambda what, n: None)
    # Listing first: anything written after this moment is not a candidate at all.
    listing = list_objects(repo.storage, repo.space.packs)
    listed = listing.digests
    # Read after the listing: a delta listed was written after its store was marked.
    deltas = repo.space.holds_deltas()
    step("listed objects", len(listed))
    temp = _old_temp_files(repo, listing, now, grace)
    refs, roots, kept = _roots(repo, now, retention)
    step("roots", len(roots | kept))
    threads = repo.storage.io_threads or _LOCAL_THREADS
    with (
        _local_objects(repo, listing) as local,
        ThreadPoolExecutor(threads, thread_name_prefix="cas-gc") as pool,
    ):
        # On an object store a record is had from the catalog (synced above), not by
        # a request; locally reading it is cheap and verifies it.
        records = repo.index.catalog.get if repo.storage.listing_stats else None
        marker = Marker(repo, listed, pool, deltas=deltas, records=records, local=local)
        leaves.load(repo.storage, listing, marker)  # what needs no read, at its version
        marker.mark(digests(roots), READ)
        marker.mark(digests(kept), READ, may_be_gone=True)
        young, old_pos, old_size = _mark_young(repo, listing, marker, pool, now, grace)
    step("marked", marker.count)
    leaves.save(repo.storage, listing, marker)
    loose, packed = _Doomed(), _Doomed()
    repack: set[str] = set()
    for pos, size in zip(old_pos, old_size, strict=True):
        if not marker.marked[pos]:
            if listing.packed(pos):
                packed.add(listed.digest(pos), size)
                repack.add(listing.packs[listing.pack_of[pos]])
            else:
                loose.add(listed.digest(pos), size)
    return GcPlan(
        grace=grace, retention=retention, started=now, objects=len(listed),
        roots=len(roots | kept), reachable=marker.count - young, young=young,
        delete=loose.condemned(), temp_files=tuple(temp),
        missing=tuple(sorted(marker.missing)), ref_snapshot=tuple(refs), listed=listed,
        root_ids=frozenset(roots), pack_garbage=packed.condemned(), repack=tuple(sorted(repack)),
        as_base=frozenset(marker.as_base()),
        to_pack=_loose_live(listing, marker, pack_loose_from),
    )  # fmt: skip


def _loose_live(listing: Listing, marker: Marker, least: int | None) -> Digests:
    """Loose objects that live (reachable, or young and kept), if there are at least
    ``least`` of them (as ``git gc --auto``, which packs from 6,700). Moving a live
    object into a pack is safe at any age: it is readable all the while."""
    if least is None:
        return Digests()
    marked = marker.marked
    live = [p for p in range(len(marked)) if marked[p] and not listing.packed(p)]
    if len(live) < least:
        return Digests()
    return Digests(b"".join(listing.digests.digest(p) for p in live))


class _Doomed:
    def __init__(self) -> None:
        self.digests = bytearray()
        self.sizes: array[int] = array("q")

    def add(self, digest: bytes, size: int) -> None:
        self.digests += digest
        self.sizes.append(size)

    def condemned(self) -> Condemned:
        return Condemned(Digests(self.digests), self.sizes)


def _index_packs(repo: Repository, grace: float) -> None:
    """After packs were rewritten: a multi-pack index covering every pack, if the newest
    does not (a new machine then reads one file, not each pack's index); then the
    multi-pack indexes that name a removed pack, or that it supersedes, once older than
    the grace period (a reader that listed one a moment ago may still read it)."""
    pack_set = repo.space.packs
    pack_set.refresh()
    if len(pack_set.ids()) >= 2 and not pack_set.covers_all():
        pack_set.write_midx()
    multipack.sweep(repo.storage, grace)


# -- execution -------------------------------------------------------------------------


def _reachable_doomed(
    repo: Repository, roots: Iterable[str], doomed: _Either, listed: Digests,
    as_base: frozenset[bytes] = frozenset(),
) -> set[bytes]:  # fmt: skip
    """Which condemned objects the new roots reach (their digests). An object that was
    listed and not condemned was marked by the plan with all it reaches, so the walk
    stops there."""
    found: set[bytes] = set()
    seen: set[bytes] = set()
    deltas = repo.space.holds_deltas()
    stack: list[Pending] = [(d, READ) for d in digests(roots)]
    while stack:
        digest, how = stack.pop()
        key = digest + (b"b" if how == HEAD else b"")  # as a base, or whole (see Marker)
        if key in seen or digest in seen:
            continue
        condemned = digest in doomed.digests
        whole_now = how != HEAD and digest in as_base  # kept as a base, now content
        if not condemned and digest in listed and not whole_now:
            continue
        seen.add(key)
        if condemned:
            found.add(digest)
        try:
            found_below = children(repo, digest, how, deltas=deltas)
        except GcRefused as exc:
            raise GcRefused(f"gc stops before deleting: {exc.__cause__}") from exc.__cause__
        if found_below is None:
            continue
        chunks, pending = found_below
        found.update(c for c in chunks if c in doomed.digests)
        stack.extend(pending)
    return found


@dataclass(frozen=True, slots=True)
class _Either:
    """The condemned of both kinds, as one set for the walk from new roots."""

    loose: Digests
    packed: Digests

    @property
    def digests(self) -> _Either:
        return self

    def __contains__(self, digest: object) -> bool:
        return digest in self.loose or digest in self.packed


@dataclass(frozen=True, slots=True)
class GcResult:
    deleted: int
    bytes_freed: int
    spared: int  # planned, but reachable again or refreshed by a writer meanwhile
    temp_removed: int
    log_entries_pruned: int
    packed: int = 0  # old loose objects moved into packs
    #: ``aggressive``: objects written again with bases chosen anew, and the bytes
    #: of their stored forms before and after.
    repacked: int = 0
    repacked_from: int = 0
    repacked_to: int = 0


def _current_ages(
    repo: Repository, gc_plan: GcPlan, fan: int, todo: list[int]
) -> dict[int, Stat | None]:
    """The age of condemned objects now, by fewest requests: locally one stat each; on
    an object store a fresh listing of their fan-out folder (one request per 1,000 keys)
    unless a request per object is fewer."""
    doomed = gc_plan.delete.digests
    storage = repo.storage
    listed_here = len(gc_plan.listed.fan(fan))
    if not storage.listing_stats or len(todo) <= -(-listed_here // 1000):
        return {i: storage.stat(object_path(doomed.oid(i))) for i in todo}
    now: dict[str, Stat] = {}
    for rel, st in storage.walk(f"{OBJECTS}/{fan:02x}"):
        now[rel] = st
    return {i: now.get(object_path(doomed.oid(i))) for i in todo}


def _sweep_local(
    repo: Repository, local: LocalObjects, gc_plan: GcPlan, todo: list[int]
) -> tuple[int, int, int]:
    """:func:`_sweep` on a local root: each object's age read, and the object removed,
    by name under its fan-out folder's descriptor, one after the other."""
    doomed = gc_plan.delete
    deleted = freed = spared = 0
    for i in todo:
        oid = doomed.digests.oid(i)
        # Its age re-read just before deleting: a writer that found the object
        # present refreshed it, and it is in use.
        st = local.stat(oid)
        if st is None:
            continue
        if time.time() - st.mtime <= gc_plan.grace:
            spared += 1
            continue
        try:
            gone = local.unlink(oid)
        except OSError:  # refused (a read-only store): the storage says it as it should
            gone = repo.storage.delete(object_path(oid))
        if gone:
            deleted += 1
            freed += doomed.sizes[i]
    return deleted, freed, spared


def _sweep(
    repo: Repository, gc_plan: GcPlan, fan: int, revived: set[bytes],
    local: LocalObjects | None = None,
) -> tuple[int, int, int]:  # fmt: skip
    """Delete one fan-out folder's condemned objects that are still old and not reached
    again: (deleted, bytes freed, spared)."""
    doomed = gc_plan.delete
    todo = [i for i in doomed.digests.fan(fan) if doomed.digests.digest(i) not in revived]
    if not todo:
        return 0, 0, 0
    if local is not None:
        return _sweep_local(repo, local, gc_plan, todo)
    deleted = freed = spared = 0
    batch: list[str] = []
    # Ages re-read just before deleting: a writer that found an object present
    # refreshed it, and it is in use.
    for i, st in _current_ages(repo, gc_plan, fan, todo).items():
        if st is None:
            continue
        if time.time() - st.mtime <= gc_plan.grace:
            spared += 1
            continue
        batch.append(object_path(doomed.digests.oid(i)))
        freed += doomed.sizes[i]
        if len(batch) >= DELETE_BATCH:
            deleted += repo.storage.delete_many(batch)
            batch = []
    if batch:
        deleted += repo.storage.delete_many(batch)
    return deleted, freed, spared


def execute(
    target: Repository | HasRepository,
    gc_plan: GcPlan,
    *,
    progress: Progress | None = None,
    aggressive: bool = False,
) -> GcResult:
    """Delete what the plan names, sparing anything that became live since. With
    ``aggressive`` (``cas gc --pack --aggressive``), then rewrite every pack with delta
    bases chosen again over a window of similar objects (:mod:`cas.admin.window`)."""
    repo = repository(target)
    step = progress or (lambda what, n: None)
    # Roots that appeared since planning (a ref moved, a save registered a record):
    # they and everything they reach live again, even content the plan condemned.
    state = repo.names.state()  # an object store: listings, not a read per name
    now_refs = {rid for _, rid in (repo.names.items() if state is None else state.items())}
    repo.sync()
    if repo.index.since_checkpoint():
        repo.index.checkpoint()  # a new machine then reads it, not the entries since the last
    fresh = (now_refs | set(repo.index.catalog.ids())) - gc_plan.root_ids
    either = _Either(gc_plan.delete.digests, gc_plan.pack_garbage.digests)
    revived = _reachable_doomed(repo, fresh, either, gc_plan.listed, gc_plan.as_base)
    deleted = freed = 0
    spared = len(revived)
    # Fan-out folders are swept in parallel: a local unlink waits on the disk's
    # journal, and an object store's delete request on the network. (An object store's
    # storage runs its own requests in parallel too: fewer folders at once there.)
    local = not repo.storage.io_threads
    threads = _LOCAL_THREADS if local else max(1, repo.storage.io_threads // 4)
    with (
        _local_objects(repo, None) as objects,
        ThreadPoolExecutor(threads, thread_name_prefix="cas-gc-sweep") as pool,
    ):
        sweep = partial(_sweep, repo, gc_plan, revived=revived, local=objects)
        for d, f, s in pool.map(sweep, range(256)):
            deleted, freed, spared = deleted + d, freed + f, spared + s
            if d:
                step("deleted", deleted)
    d, f, s = repack(
        repo, gc_plan.repack, gc_plan.pack_garbage.digests, gc_plan.grace, revived,
        planned=gc_plan.started,
    )  # fmt: skip
    deleted, freed, spared = deleted + d, freed + f, spared + s
    step("deleted", deleted)
    temp_removed = repo.storage.delete_many(list(gc_plan.temp_files))
    pruned = 0
    cutoff = gc_plan.started - gc_plan.retention
    for name in repo.names.log_names() if state is None else state.prunable(cutoff):
        pruned += repo.names.prune_log(name, cutoff)
    packed = pack_loose(repo, gc_plan.to_pack)
    if packed:
        step("packed loose objects", packed)
    done = repack_window(repo, progress=progress) if aggressive else None
    _index_packs(repo, gc_plan.grace)
    return GcResult(
        deleted, freed, spared, temp_removed, pruned, packed,
        *((done.objects, done.bytes_before, done.bytes_after) if done else ()),
    )  # fmt: skip
