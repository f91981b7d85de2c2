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

Memory stays small at millions of objects: the listing is kept as 32-byte digests in
one sorted buffer (:class:`Digests`), the mark set as one byte per listed object, and
the plan's deletions as digests and sizes (:class:`Condemned`): about 33 bytes per
object on a local root (49 on object stores, whose listings also carry size and age),
plus 40 per object condemned, not a Python object per object. Locally only objects
that nothing reaches are stat-ed (for their age and size); object stores give both in
the listing, read one fan-out folder at a time, several in parallel.
"""

from __future__ import annotations

import itertools
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects import codec
from cas.objects.digests import Condemned, Digests
from cas.objects.ids import ObjectId, is_id
from cas.objects.kinds import CHUNK, FILE, RECORD, TREE, references
from cas.objects.space import OBJECTS, object_path
from cas.repo.journal import stamp_time
from cas.repo.repository import HasRepository, Repository, repository
from cas.storage import TEMP_PREFIX, Stat, Storage

DEFAULT_GRACE: Final = 24 * 3600.0
DEFAULT_RETENTION: Final = 30 * 24 * 3600.0

#: Object stores delete up to this many keys a request; local deletes go in such batches too.
DELETE_BATCH: Final = 1000
#: How many pending objects one marking round takes off the stack; each round's reads
#: run in parallel, in slices of :data:`_SLICE`.
_ROUND: Final = 256
_SLICE: Final = 32
#: Threads reading records, trees and headers while marking, and deleting, on a local
#: disk: reads of objects not in the page cache and unlinks wait on the disk, and
#: overlap (measured here: 100,000 cold header reads 10-36 s on one thread, 4-5 s on
#: eight; 30,000 unlinks 3-5 s on one, 1-2 s on eight).
_LOCAL_THREADS: Final = 8

Progress = Callable[[str, int], None]

_FANS: Final = tuple(f"{i:02x}" for i in range(256))


_REPAIR = (
    "Run 'cas fsck' to see every problem, 'cas fsck --repair' to set them aside, then gc again"
)


class GcRefused(CasError):
    """gc could not read a root source, so it deletes nothing."""


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

    @property
    def bytes_freed(self) -> int:
        return self.delete.total

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


@dataclass(slots=True)
class _Listing:
    digests: Digests
    stats: tuple[array[int], array[float]] | None  # sizes, mtimes; None: stat when needed
    temp: list[tuple[str, Stat | None]]


def _fan_listings(storage: Storage) -> Iterator[tuple[str, list[tuple[str, Stat | None]]]]:
    """Each fan-out folder's file names, sorted, with their size and age when the
    listing gives them (object stores). Locally a directory read gives names alone."""
    if not storage.listing_stats:
        for fan in _FANS:
            yield fan, [(name, None) for name in storage.listdir(f"{OBJECTS}/{fan}")]
        return

    def one(fan: str) -> list[tuple[str, Stat | None]]:
        out: list[tuple[str, Stat | None]] = []
        for rel, st in storage.walk(f"{OBJECTS}/{fan}"):
            parts = rel.split("/")
            if len(parts) == 3 and parts[1] == fan:
                out.append((parts[2], st))
        return sorted(out, key=lambda e: e[0])

    # A few folders at a time: requests in parallel, and only those folders' listings
    # held in memory.
    threads = storage.io_threads
    if not threads:
        yield from ((fan, one(fan)) for fan in _FANS)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="cas-gc-list") as pool:
        for i in range(0, len(_FANS), threads):
            group = _FANS[i : i + threads]
            yield from zip(group, pool.map(one, group), strict=True)


def _list(storage: Storage) -> _Listing:
    buf = bytearray()
    sizes: array[int] = array("q")
    mtimes: array[float] = array("d")
    with_stats = storage.listing_stats
    temp: list[tuple[str, Stat | None]] = []
    for fan, entries in _fan_listings(storage):
        last = b""
        for name, st in entries:
            if name.startswith(TEMP_PREFIX):
                temp.append((f"{OBJECTS}/{fan}/{name}", st))
                continue
            hexid = fan + name
            if not is_id(hexid):
                continue
            digest = bytes.fromhex(hexid)
            if digest == last:
                continue
            last = digest
            buf += digest
            if with_stats:
                assert st is not None
                sizes.append(st.size)
                mtimes.append(st.mtime)
    return _Listing(Digests(buf), (sizes, mtimes) if with_stats else None, temp)


# -- marking ---------------------------------------------------------------------------

# How to learn what an object points at: a chunk points at nothing (a chunk list names
# blobs only); a file's content is read by its 16-byte header first (a blob, or a chunk
# list hiding behind a file entry); a tree or record is read whole.
_PROBE, _READ = 1, 2

Pending = tuple[bytes, int]


_HOW = {TREE: _READ, RECORD: _READ, FILE: _PROBE}


def _references(kind: str, oid: str, payload: bytes) -> tuple[list[bytes], list[Pending]]:
    """What one object points at (:func:`cas.objects.kinds.references`), as (chunks,
    other ids with how to read them)."""
    chunks: list[bytes] = []
    pending: list[Pending] = []
    for ref, role in references(kind, oid, payload):
        if role == CHUNK:
            chunks.append(bytes.fromhex(ref))
        else:
            pending.append((bytes.fromhex(ref), _HOW[role]))
    return chunks, pending


def _children(
    repo: Repository, digest: bytes, how: int
) -> tuple[list[bytes], list[Pending]] | None:
    """What one object points at; None if it is absent."""
    oid = ObjectId(digest.hex())
    try:
        if how == _PROBE:
            head = repo.storage.read_head(object_path(oid), codec.HEADER_SIZE)
            if codec.read_header(oid, head).kind == "blob":
                return [], []
        kind, payload = repo.space.read_object(oid)
        return _references(kind, oid, payload)
    except (FileNotFoundError, ObjectNotFound):
        return None
    except IntegrityError as exc:
        raise GcRefused(f"gc deletes nothing: {exc}. {_REPAIR}") from exc


class _Marker:
    """Marks everything reachable from given roots, reading only what can point on:
    one byte per listed object, a stack of what is still to read."""

    def __init__(self, repo: Repository, listed: Digests, pool: ThreadPoolExecutor) -> None:
        self.repo = repo
        self.listed = listed
        self.pool = pool
        self.marked = bytearray(len(listed))
        self.count = 0
        self.missing: set[ObjectId] = set()

    def _take(self, digest: bytes, gone_ok: set[bytes]) -> bool:
        """Mark one object: True if it is listed and was not marked yet."""
        pos = self.listed.find(digest)
        if pos < 0:
            if digest not in gone_ok:
                self.missing.add(ObjectId(digest.hex()))
            return False
        if self.marked[pos]:
            return False
        self.marked[pos] = 1
        self.count += 1
        return True

    def mark(self, roots: Iterable[bytes], how: int, *, may_be_gone: bool = False) -> None:
        """Mark ``roots`` and all they reach. ``may_be_gone``: roots that an earlier gc
        may rightly have collected (old history, deleted records) are not "missing"."""
        stack: list[Pending] = [(d, how) for d in roots]
        gone_ok = {d for d, _ in stack} if may_be_gone else set()
        while stack:
            batch = stack[-_ROUND:]
            del stack[-_ROUND:]
            todo = [(d, h) for d, h in batch if self._take(d, gone_ok)]
            for digest, found in zip((d for d, _ in todo), self._read(todo), strict=True):
                if found is None:
                    self.missing.add(ObjectId(digest.hex()))  # listed, then gone
                    continue
                chunks, pending = found
                for chunk in chunks:
                    self._take(chunk, set())
                stack.extend(pending)

    def _read(self, todo: list[Pending]) -> list[tuple[list[bytes], list[Pending]] | None]:
        """Each object's references, read in parallel slices."""
        if len(todo) <= _SLICE:
            return [_children(self.repo, d, h) for d, h in todo]
        slices = [todo[i : i + _SLICE] for i in range(0, len(todo), _SLICE)]
        out: list[tuple[list[bytes], list[Pending]] | None] = []
        for part in self.pool.map(lambda s: [_children(self.repo, d, h) for d, h in s], slices):
            out.extend(part)
        return out


def _digests(ids: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(i) for i in ids if is_id(i)]


def _ages(
    storage: Storage, listing: _Listing, positions: Iterator[int], pool: ThreadPoolExecutor
) -> Iterator[tuple[int, Stat | None]]:
    """Size and age of listed objects: from the listing, or (locally) one stat each,
    a round at a time in parallel (an inode not in the cache waits on the disk)."""
    if listing.stats is not None:
        sizes, mtimes = listing.stats
        for pos in positions:
            yield pos, Stat(sizes[pos], mtimes[pos])
        return

    def stat(part: list[int]) -> list[Stat | None]:
        return [storage.stat(object_path(listing.digests.oid(pos))) for pos in part]

    while group := list(itertools.islice(positions, 4 * _ROUND)):
        parts = [group[i : i + _SLICE] for i in range(0, len(group), _SLICE)]
        stats = itertools.chain.from_iterable(pool.map(stat, parts))
        yield from zip(group, stats, strict=True)


def _unmarked(marked: bytearray) -> Iterator[int]:
    pos = marked.find(0)
    while pos >= 0:
        yield pos
        pos = marked.find(0, pos + 1)


def plan(
    target: Repository | HasRepository,
    *,
    grace: float = DEFAULT_GRACE,
    retention: float = DEFAULT_RETENTION,
    now: float | None = None,
    progress: Progress | None = None,
) -> GcPlan:
    """Decide what to delete. Reads the store and writes nothing to it (it brings this
    machine's catalog up to date with the journal, which is a cache)."""
    repo = repository(target)
    now = time.time() if now is None else now
    step = progress or (lambda what, n: None)
    # Listing first: anything written after this moment is not a candidate at all.
    listing = _list(repo.storage)
    listed = listing.digests
    step("listed objects", len(listed))
    temp = []
    for rel, st in listing.temp:
        st = st or repo.storage.stat(rel)
        if st is not None and now - st.mtime > grace:
            temp.append(rel)

    try:
        refs = sorted(repo.names.items())
        kept: set[str] = set()  # history within retention: may have been collected
        for name in repo.names.log_names():
            for entry in repo.names.log(name):
                if now - entry.time <= retention:
                    kept.update(i for i in (entry.old, entry.new) if i)
    except IntegrityError as exc:
        why = str(exc).removesuffix("; run 'cas fsck'")
        raise GcRefused(f"gc deletes nothing: {why}. {_REPAIR}") from exc
    repo.sync()
    if repo.index.damaged:
        _, (_, why) = min(repo.index.damaged.items())
        why = why.removesuffix("; run 'cas fsck'")
        more = len(repo.index.damaged) - 1
        raise GcRefused(
            f"gc deletes nothing: {why}"
            + (f" (and {more} more catalog entries do not read)" if more else "")
            + f": what it names may be a root. {_REPAIR}"
        )
    engine = repo.index.catalog
    roots: set[str] = {rid for _, rid in refs} | set(engine.ids())
    kept.update(
        rid for rid, stamp in engine.tombstones().items() if now - stamp_time(stamp) <= retention
    )
    step("roots", len(roots | kept))

    threads = repo.storage.io_threads or _LOCAL_THREADS
    with ThreadPoolExecutor(threads, thread_name_prefix="cas-gc") as pool:
        marker = _Marker(repo, listed, pool)
        marker.mark(_digests(roots), _READ)
        marker.mark(_digests(kept), _READ, may_be_gone=True)
        # Only what nothing reaches needs its age: young ones are roots (marked as they
        # come, a round at a time), old ones go unless a young one reaches them.
        young = 0
        batch: list[bytes] = []
        old_pos: array[int] = array("q")
        old_size: array[int] = array("q")
        for pos, st in _ages(repo.storage, listing, _unmarked(marker.marked), pool):
            if st is None or marker.marked[pos]:
                continue  # gone since the listing, or reached from a young one meanwhile
            if now - st.mtime <= grace:
                young += 1
                batch.append(listed.digest(pos))
                if len(batch) >= _ROUND:
                    marker.mark(batch, _PROBE)
                    batch = []
            else:
                old_pos.append(pos)
                old_size.append(st.size)
        marker.mark(batch, _PROBE)
    step("marked", marker.count)
    doomed = bytearray()
    sizes: array[int] = array("q")
    for pos, size in zip(old_pos, old_size, strict=True):
        if not marker.marked[pos]:
            doomed += listed.digest(pos)
            sizes.append(size)
    return GcPlan(
        grace=grace,
        retention=retention,
        started=now,
        objects=len(listed),
        roots=len(roots | kept),
        reachable=marker.count - young,
        young=young,
        delete=Condemned(Digests(doomed), sizes),
        temp_files=tuple(temp),
        missing=tuple(sorted(marker.missing)),
        ref_snapshot=tuple(refs),
        listed=listed,
        root_ids=frozenset(roots),
    )


# -- execution -------------------------------------------------------------------------


def _reachable_doomed(
    repo: Repository, roots: Iterable[str], doomed: Condemned, listed: Digests
) -> set[bytes]:
    """Which condemned objects the new roots reach (their digests). An object that was
    listed and not condemned was marked by the plan with all it reaches, so the walk
    stops there."""
    found: set[bytes] = set()
    seen: set[bytes] = set()
    stack: list[Pending] = [(d, _READ) for d in _digests(roots)]
    while stack:
        digest, how = stack.pop()
        if digest in seen:
            continue
        condemned = digest in doomed.digests
        if not condemned and digest in listed:
            continue
        seen.add(digest)
        if condemned:
            found.add(digest)
        try:
            children = _children(repo, digest, how)
        except GcRefused as exc:
            raise GcRefused(f"gc stops before deleting: {exc.__cause__}") from exc.__cause__
        if children is None:
            continue
        chunks, pending = children
        found.update(c for c in chunks if c in doomed.digests)
        stack.extend(pending)
    return found


@dataclass(frozen=True, slots=True)
class GcResult:
    deleted: int
    bytes_freed: int
    spared: int  # planned, but reachable again or refreshed by a writer meanwhile
    temp_removed: int
    log_entries_pruned: int


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


def _sweep(
    repo: Repository, gc_plan: GcPlan, fan: int, revived: set[bytes]
) -> tuple[int, int, int]:
    """Delete one fan-out folder's condemned objects that are still old and not reached
    again: (deleted, bytes freed, spared)."""
    doomed = gc_plan.delete
    todo = [i for i in doomed.digests.fan(fan) if doomed.digests.digest(i) not in revived]
    if not todo:
        return 0, 0, 0
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
    target: Repository | HasRepository, gc_plan: GcPlan, *, progress: Progress | None = None
) -> GcResult:
    """Delete what the plan names, sparing anything that became live since."""
    repo = repository(target)
    step = progress or (lambda what, n: None)
    # Roots that appeared since planning (a ref moved, a save registered a record):
    # they and everything they reach live again, even content the plan condemned.
    now_refs = {rid for _, rid in repo.names.items()}
    repo.sync()
    fresh = (now_refs | set(repo.index.catalog.ids())) - gc_plan.root_ids
    revived = _reachable_doomed(repo, fresh, gc_plan.delete, gc_plan.listed)
    deleted = freed = 0
    spared = len(revived)
    # Fan-out folders are swept in parallel: a local unlink waits on the disk's
    # journal, and an object store's delete request on the network. (An object store's
    # storage runs its own requests in parallel too: fewer folders at once there.)
    local = not repo.storage.io_threads
    threads = _LOCAL_THREADS if local else max(1, repo.storage.io_threads // 4)
    with ThreadPoolExecutor(threads, thread_name_prefix="cas-gc-sweep") as pool:
        for d, f, s in pool.map(lambda fan: _sweep(repo, gc_plan, fan, revived), range(256)):
            deleted, freed, spared = deleted + d, freed + f, spared + s
            if d:
                step("deleted", deleted)
    step("deleted", deleted)
    temp_removed = repo.storage.delete_many(list(gc_plan.temp_files))
    pruned = 0
    cutoff = gc_plan.started - gc_plan.retention
    for name in repo.names.log_names():
        pruned += repo.names.prune_log(name, cutoff)
    return GcResult(deleted, freed, spared, temp_removed, pruned)
