"""push and pull: copy from one store to another what the other lacks, then move refs.

For the names chosen the transfer copies their records, their parents' records
(transitively), their content, the chunks of chunked content and the entries of trees,
then the catalog entries (put and tag events), then moves each ref by compare-and-swap.
With no names, it copies the whole repo: every ref, and every artifact the source's
catalog holds (older versions of a name too: they are artifacts of the repo, kept by
gc, listed and loadable by id, so a store round trips exactly). Nothing from the source
is trusted: every object is read with verification and written through the
destination's normal put path, so its id is recomputed there, and a mismatch stops the
transfer.

Deltas are carried: an object stored at the source as a delta against a base the
destination holds (or receives first in this transfer: bases are written before the
deltas on them, and older versions of a large file before newer ones) is copied as it
is stored, and verified there through that base; one whose base the destination lacks
is stored there plain. Only objects the chosen artifacts reach are copied, never a base
alone, so what is present at the destination keeps everything below it.

Objects are written bottom-up (blobs, then trees deepest first, then records parents
first), so an object present at the destination always has everything below it; an
interrupted transfer leaves only complete pieces, and running it again copies only
what is still missing (existence is checked in batches from listings, never one
request per object). Records the destination's catalog already holds are not walked.

A ref whose destination value differs from the source's is moved only when the
source's history of that name (ref log or catalog versions) contains the destination's
value, i.e. the source has moved on from it; otherwise it is reported as a conflict and
left alone, unless ``force``. Conflicts are decided before anything is copied: a
rejected name's artifacts are not copied, so the destination's catalog never lists them
as versions of a name that never held them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from cas.errors import IntegrityError, ObjectNotFound, RefConflict
from cas.objects import codec
from cas.objects.batch import Pending
from cas.objects.codec import Header
from cas.objects.ids import ObjectId
from cas.objects.kinds import ChunkList, Tree, unpack
from cas.repo.names import check_name
from cas.repo.records import check_record
from cas.repo.repository import HasRepository, Repository, repository

#: Parallel object copies; bounded so an object store sees steady, not bursty, load.
DEFAULT_WORKERS: Final = 8

Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True, slots=True)
class RefUpdate:
    """What happened to one name at the destination."""

    name: str
    old: str | None  # the destination's value before
    new: str  # the source's value
    status: str  # "new" | "updated" | "forced" | "up-to-date" | "rejected"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransferResult:
    objects: int  # objects written to the destination
    bytes: int  # content bytes of those objects
    records: int  # artifacts newly indexed at the destination
    refs: tuple[RefUpdate, ...] = field(default=())

    @property
    def conflicts(self) -> tuple[RefUpdate, ...]:
        return tuple(u for u in self.refs if u.status == "rejected")

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "records": self.records,
            "refs": [asdict(u) for u in self.refs],
            "conflicts": len(self.conflicts),
        }


class _Plan:
    """What the destination lacks, found by walking down from the chosen records."""

    def __init__(self, src: Repository, dst: Repository, pool: ThreadPoolExecutor) -> None:
        self.src = src
        self.dst = dst
        self.pool = pool
        self.records: dict[ObjectId, dict[str, Any]] = {}  # not indexed at dst
        self.record_payloads: dict[ObjectId, bytes] = {}
        self.record_height: dict[ObjectId, int] = {}
        self.blobs: dict[ObjectId, None] = {}  # whole content the dst lacks
        self.chunked: dict[ObjectId, None] = {}  # chunk lists (large files) the dst lacks
        self.base_of: dict[ObjectId, ObjectId] = {}  # a delta's base at the source
        self.trees: dict[ObjectId, bytes] = {}
        self.tree_height: dict[ObjectId, int] = {}
        self._dst_loose: set[ObjectId] | None = None

    def present(self, oids: Iterable[ObjectId]) -> set[ObjectId]:
        """Which of these the destination holds. On an object store, its loose objects
        are listed once for the whole transfer (a listing of 1,000 keys a request)
        instead of once per level of the walk; packs are looked up in their indexes,
        which the first call reads."""
        wanted = set(oids)
        space = self.dst.space
        if not self.dst.storage.listing_stats or len(wanted) <= 8:
            return space.has_many(wanted)
        if self._dst_loose is None:
            space.packs.refresh()
            self._dst_loose = {o for o, _ in space.iter_loose()}
        loose = self._dst_loose
        return {o for o in wanted if o in loose or o in space.pending or space.packs.find(o)}

    def walk_records(self, roots: Iterable[str]) -> None:
        """Records the destination's catalog does not hold, read and verified."""
        indexed = self.dst.index.catalog
        frontier = list(dict.fromkeys(ObjectId(r) for r in roots))
        while frontier:
            todo = [r for r in frontier if r not in self.records and indexed.get(r) is None]
            nxt: list[ObjectId] = []
            for rid, payload in zip(todo, self.pool.map(self._read_record, todo), strict=True):
                record = check_record(rid, unpack(rid, payload))
                self.records[rid] = record
                self.record_payloads[rid] = payload
                nxt.extend(ObjectId(p) for p in record.get("parent_ids") or ())
            frontier = list(dict.fromkeys(nxt))
        below = {
            rid: [ObjectId(p) for p in r.get("parent_ids") or () if p in self.records]
            for rid, r in self.records.items()
        }
        self.record_height = _heights(below)

    def _read_record(self, rid: ObjectId) -> bytes:
        kind, payload = self.src.space.read_object(rid)  # verified
        if kind != "record":
            raise IntegrityError(rid, f"object {rid} in {self.src.url} is a {kind}, not a record")
        return payload

    def walk_content(self) -> None:
        """Blobs and trees below the records that the destination lacks (batched checks)."""
        level = {ObjectId(r["content_id"]) for r in self.records.values() if r.get("content_id")}
        below: dict[ObjectId, list[ObjectId]] = {}
        while level:
            missing = sorted(level - self.present(level))
            nxt: set[ObjectId] = set()
            for oid, (header, payload) in zip(
                missing, self.pool.map(self._read_content, missing), strict=True
            ):
                if header.base is not None:
                    self.base_of[oid] = header.base
                if header.kind == "tree":
                    self.trees[oid] = payload
                    below[oid] = [e.id for e in Tree.parse(oid, payload).entries]
                    nxt.update(below[oid])
                elif header.kind == "chunks":
                    self.chunked[oid] = None
                else:
                    self.blobs[oid] = None
            level = nxt - self.trees.keys() - self.blobs.keys() - self.chunked.keys()
        self.tree_height = _heights(
            {oid: [c for c in kids if c in self.trees] for oid, kids in below.items()}
        )

    def _read_content(self, oid: ObjectId) -> tuple[Header, bytes]:
        """A tree's header and verified payload; for a blob only its header (its bytes
        are read once, when copied)."""
        header = self.src.space.head(oid)
        if header.kind == "tree":
            return self.src.space.read_entry(oid)
        if header.kind not in ("blob", "chunks"):
            raise IntegrityError(
                oid, f"object {oid} in {self.src.url} is a {header.kind}, not content"
            )
        return header, b""

    def chunked_in_order(self) -> list[list[ObjectId]]:
        """Chunk lists to copy as sequences, each a name's versions oldest first (a
        version's chunks are deltas on the chunks of the one before), then the rest."""
        by_name: dict[str, list[tuple[str, ObjectId]]] = {}
        for record in self.records.values():
            content = record.get("content_id")
            if content in self.chunked:
                at = str(record.get("created_at") or "")
                by_name.setdefault(str(record.get("name")), []).append((at, ObjectId(content)))
        taken: set[ObjectId] = set()
        out: list[list[ObjectId]] = []
        for versions in by_name.values():
            seq = [o for _, o in sorted(versions) if o not in taken]
            taken.update(seq)
            out.append(list(dict.fromkeys(seq)))
        out.extend([o] for o in self.chunked if o not in taken)
        return [seq for seq in out if seq]


def _heights(below: dict[ObjectId, list[ObjectId]]) -> dict[ObjectId, int]:
    """1 + the tallest height below each node (0 below a leaf): writing in order of
    height writes everything an object points at before the object itself."""
    height: dict[ObjectId, int] = {}
    for start in below:
        stack = [(start, False)]
        while stack:  # iterative: lineage chains and folder trees can be deep
            oid, ready = stack.pop()
            if oid in height:
                continue
            if ready:
                height[oid] = 1 + max((height[c] for c in below[oid]), default=0)
                continue
            stack.append((oid, True))
            stack.extend((c, False) for c in below[oid] if c not in height)
    return height


def _rounds(oids: Sequence[ObjectId], base_of: dict[ObjectId, ObjectId]) -> list[list[ObjectId]]:
    """``oids`` in rounds: each object after the round holding its delta base, when the
    base is among them (so the base is at the destination before the delta is)."""
    members = set(oids)
    rounds: dict[int, list[ObjectId]] = {}
    for oid in oids:
        depth, at = 0, base_of.get(oid)
        while at in members and depth < 64:
            depth += 1
            at = base_of.get(at)
        rounds.setdefault(depth, []).append(oid)
    return [rounds[d] for d in sorted(rounds)]


def _by_height(heights: dict[ObjectId, int]) -> list[list[ObjectId]]:
    """Groups to write in order: everything in a group only points at earlier groups."""
    groups: dict[int, list[ObjectId]] = {}
    for oid, h in heights.items():
        groups.setdefault(h, []).append(oid)
    return [sorted(groups[h]) for h in sorted(groups)]


class _Copier:
    """Writes objects to the destination, each verified and re-hashed there."""

    def __init__(self, plan: _Plan, pool: ThreadPoolExecutor, progress: Progress) -> None:
        self.plan = plan
        self.pool = pool
        self.progress = progress
        self.objects = 0
        self.bytes = 0
        self.total = len(plan.blobs) + len(plan.chunked) + len(plan.trees) + len(plan.records)
        self._held: Pending | None = None  # the destination's batch, which workers join

    def run(self) -> None:
        """Everything goes into the destination's packs (a pack's worth a write, one
        request on an object store), bottom-up: a pack holds, or follows the packs
        holding, everything its objects point at."""
        with self.plan.dst.space.batch(keep_on_error=True) as held:
            self._held = held
            self._run()

    def _run(self) -> None:
        plan = self.plan
        self.progress("copying objects", 0, self.total)
        for group in _rounds(list(plan.blobs), plan.base_of):
            self._parallel(group, self._copy_blob)
        self._in_sequences(plan.chunked_in_order(), self._copy_chunked)
        for height in _by_height(plan.tree_height):
            for group in _rounds(height, plan.base_of):
                self._parallel(group, self._copy_tree)
        missing = set(plan.records) - plan.present(plan.records)
        for group in _by_height(plan.record_height):
            todo = [rid for rid in group if rid in missing]
            self._parallel(todo, lambda rid: self._put("record", rid, plan.record_payloads[rid]))
        self.progress("copying objects", self.total, self.total)

    def _parallel(self, oids: Sequence[ObjectId], copy: Callable[[ObjectId], int]) -> None:
        def joined(oid: ObjectId) -> int:
            with self.plan.dst.space.joining(self._held):
                return copy(oid)

        for size in self.pool.map(joined, oids):
            self._count(size)

    def _count(self, size: int) -> None:
        self.objects += 1
        self.bytes += size
        self.progress("copying objects", self.objects, self.total)

    def _in_sequences(
        self, sequences: Sequence[Sequence[ObjectId]], copy: Callable[[ObjectId], int]
    ) -> None:
        """Each sequence in order, the sequences in parallel."""

        def joined(seq: Sequence[ObjectId]) -> list[int]:
            with self.plan.dst.space.joining(self._held):
                return [copy(oid) for oid in seq]

        for sizes in self.pool.map(joined, sequences):
            for size in sizes:
                self._count(size)

    def _as_stored(self, oid: ObjectId, base: ObjectId | None) -> int | None:
        """Copy a delta as it is stored when the destination holds its base (verified
        there through that base); the payload size, or None to store it plain."""
        dst = self.plan.dst.space
        if base is None or not dst.has(base):
            return None
        stored = self.plan.src.space.read_stored(oid)
        try:
            dst.put_stored(oid, stored)
        except (IntegrityError, ObjectNotFound):
            return None  # the destination's base does not read: store it plain
        return codec.read_header(oid, stored).raw_size

    def _copy_blob(self, oid: ObjectId) -> int:
        size = self._as_stored(oid, self.plan.base_of.get(oid))
        if size is not None:
            return size
        kind, payload = self.plan.src.space.read_object(oid)
        self._check(oid, self.plan.dst.space.put(payload))
        return len(payload)

    def _copy_chunked(self, oid: ObjectId) -> int:
        src, dst = self.plan.src.space, self.plan.dst.space
        _, payload = src.read_object(oid)
        listing = ChunkList.parse(oid, payload)
        if src.params != dst.params:
            # Stream it (every chunk verified, then the whole) and let the destination
            # cut it with its own parameters; chunks it has are not rewritten.
            with src.open(oid) as stream:
                self._check(oid, dst.put(stream))
            return listing.size
        # The same chunks: each one the destination lacks is copied, a delta as it is
        # stored when its base is there; the stream verifies every chunk and the whole.
        have = self.plan.present(c for c, _ in listing.chunks)
        with src.open(oid) as stream:
            for cid, size in listing.chunks:
                data = stream.read(size)
                if cid in have:
                    continue
                if self._as_stored(cid, src.head(cid).base) is None:
                    self._check(cid, dst.put(data))
                have.add(cid)
            if stream.read(1):
                raise IntegrityError(oid, f"chunk list {oid} in {self.plan.src.url} is too short")
        dst.put_listing(oid, listing)
        return listing.size

    def _copy_tree(self, oid: ObjectId) -> int:
        size = self._as_stored(oid, self.plan.base_of.get(oid))
        if size is not None:
            return size
        return self._put("tree", oid, self.plan.trees[oid])

    def _put(self, kind: str, oid: ObjectId, payload: bytes) -> int:
        self._check(oid, self.plan.dst.space.put_payload(kind, payload))
        return len(payload)

    def _check(self, oid: ObjectId, got: ObjectId) -> None:
        if got != oid:
            raise IntegrityError(
                oid,
                f"object {oid} from {self.plan.src.url} hashed to {got} at "
                f"{self.plan.dst.url}; nothing points at it yet: run 'cas fsck' on the source",
            )


def _index(plan: _Plan, roots: Iterable[str]) -> int:
    """Journal the copied records (put) and the source's tags, then catch the
    destination's catalog up. Tags the destination set itself are kept."""
    src, dst = plan.src, plan.dst
    new = 0
    for rid in sorted(plan.records, key=lambda r: plan.record_height[r]):
        if src.index.catalog.get(rid) is None:
            continue  # deleted at the source: copied for lineage, not listed
        dst.journal.append({"op": "put", "id": rid})
        new += 1
    for tagged in dict.fromkeys([*plan.records, *roots]):
        rid = ObjectId(tagged)
        theirs = src.index.catalog.get(rid)
        if theirs is None:
            continue
        ours = dst.index.catalog.get(rid)
        have = dict((ours or {}).get("tags") or {})
        if rid in plan.records:
            have = dict(plan.records[rid].get("tags") or {})
        changed = {k: v for k, v in (theirs.get("tags") or {}).items() if have.get(k) != v}
        if changed:
            dst.journal.append({"op": "tag", "id": rid, "tags": changed})
    dst.sync()
    return new


def _superseded(src: Repository, name: str, old: str) -> bool:
    """True if the source once held ``old`` under ``name`` and has moved on from it."""
    for entry in src.names.log(name):
        if old in (entry.old, entry.new):
            return True
    record = src.index.catalog.get(old)
    return record is not None and record.get("name") == name


def _decide(src: Repository, dst: Repository, name: str, new: str, force: bool) -> RefUpdate:
    """What to do with one name, before anything is copied: a rejected name's
    artifacts are not copied at all (nor indexed there as versions of that name)."""
    old = dst.names.read(name)
    if old == new:
        return RefUpdate(name, old, new, "up-to-date")
    if old is None:
        return RefUpdate(name, old, new, "new")
    if _superseded(src, name, old):
        return RefUpdate(name, old, new, "updated")
    if force:
        return RefUpdate(name, old, new, "forced")
    return RefUpdate(
        name, old, new, "rejected",
        f"the destination holds {old[:12]}, which the source's history of {name!r} "
        "does not contain; pull it first, or use --force to overwrite",
    )  # fmt: skip


def _move(dst: Repository, update: RefUpdate, message: str) -> RefUpdate:
    """Move one name by compare-and-swap against the value the decision saw."""
    if update.status in ("up-to-date", "rejected"):
        return update
    try:
        dst.names.set(update.name, update.new, expected=update.old, message=message)
    except RefConflict as exc:  # moved meanwhile, or a parent/child name exists
        return RefUpdate(update.name, update.old, update.new, "rejected", str(exc))
    return update


def select(source: Repository | HasRepository, names: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(name, record id) of the refs to transfer: ``names`` exactly, or the refs below a
    name used as a folder (``models`` selects ``models/a`` and ``models/b``); all if none."""
    src = repository(source)
    if not names:
        return src.names.items()
    chosen: dict[str, str] = {}
    for name in names:
        check_name(name)
        rid = src.names.read(name)
        below = src.names.items(name + "/") if rid is None else [(name, rid)]
        if not below:
            raise ObjectNotFound(
                name, f"no artifact named {name!r} in {src.url} ('cas ls' lists names)"
            )
        chosen.update(below)
    return sorted(chosen.items())


def _versions(src: Repository, refused: set[str]) -> list[str]:
    """Every artifact the source's catalog holds, but those of a refused name (the
    destination's catalog must not list them as versions of a name that never held them)."""
    catalog = src.index.catalog
    out: list[str] = []
    for rid in catalog.ids():
        record = catalog.get(rid)
        if record is not None and record.get("name") not in refused:
            out.append(rid)
    return out


def transfer(
    source: Repository | HasRepository,
    destination: Repository | HasRepository,
    names: Sequence[str] = (),
    *,
    force: bool = False,
    message: str = "transfer",
    workers: int = DEFAULT_WORKERS,
    progress: Progress | None = None,
) -> TransferResult:
    """Copy what ``dst`` lacks for ``names`` (default: every ref and every artifact)
    from ``src``, then move the refs. Conflicting refs are reported in the result
    (status ``rejected``)."""
    step: Progress = progress or (lambda what, done, total: None)
    src, dst = repository(source), repository(destination)
    chosen = select(src, names)
    decided = [_decide(src, dst, name, rid, force) for name, rid in chosen]
    roots = [u.new for u in decided if u.status != "rejected"]
    if not names:
        roots += _versions(src, {u.name for u in decided if u.status == "rejected"})
    step("finding what is missing", 0, None)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cas-transfer") as pool:
        plan = _Plan(src, dst, pool)
        plan.walk_records(roots)
        plan.walk_content()
        copier = _Copier(plan, pool, step)
        copier.run()
    records = _index(plan, roots)
    updates = tuple(_move(dst, u, message) for u in decided)
    return TransferResult(copier.objects, copier.bytes, records, updates)
