"""What gc reads: the listing of every object (as compact digests), and the marking of
everything reachable from given roots, reading only what can point on.

Memory stays small at millions of objects: the listing is kept as 32-byte digests in
one sorted buffer (:class:`~cas.objects.digests.Digests`), the mark set as one byte per
listed object. Locally a directory read gives names alone (ages are stat-ed only for
objects nothing reaches); object stores give size and age in the listing, read one
fan-out folder at a time, several in parallel.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from cas.admin.local_objects import LocalObjects
from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects import codec, packs
from cas.objects.digests import Digests
from cas.objects.ids import ObjectId, is_id
from cas.objects.kinds import BASE, CHUNK, FILE, RECORD, TREE, Reference, map_references, references
from cas.objects.pack_set import PackSet
from cas.objects.space import OBJECTS, object_path
from cas.repo.repository import Repository
from cas.storage import TEMP_PREFIX, Stat, Storage

#: How many pending objects one marking round takes off the stack; each round's reads
#: run in parallel, in slices of :data:`SLICE` (four at once: at 200,000 cold objects
#: 6.0-6.4 s against 6.5-7.1 s in eight slices and 7.5-8.7 s in more; the reads' Python
#: work, not the disk, bounds it, and fewer threads contend less).
ROUND: Final = 256
SLICE: Final = 64
#: On an object store each read waits on the network: smaller slices, more in flight.
REMOTE_SLICE: Final = 32

_FANS: Final = tuple(f"{i:02x}" for i in range(256))
_FAN_SET: Final = frozenset(_FANS)
#: Keys an object store's listing request returns at most.
_PAGE: Final = 1000
#: Below an average of ``_PAGE / _SPARSE`` objects a folder, the whole ``objects/``
#: is listed at once (sequential pages) rather than folder by folder (in parallel):
#: at most a quarter of the requests, and a store that small lists in a few pages.
_SPARSE: Final = 4

REPAIR: Final = (
    "Run 'cas fsck' to see every problem, 'cas fsck --repair' to set them aside, then gc again"
)


class GcRefused(CasError):
    """gc could not read a root source, so it deletes nothing."""


@dataclass(slots=True)
class Listing:
    digests: Digests
    stats: tuple[array[int], array[float]] | None  # sizes, mtimes; None: stat when needed
    temp: list[tuple[str, Stat | None]]
    #: Per position: the number of its pack in ``packs``, or -1 for a loose object.
    pack_of: array[int] = field(default_factory=lambda: array("i"))
    packed_size: array[int] = field(default_factory=lambda: array("q"))
    packs: list[str] = field(default_factory=list)
    pack_mtimes: list[float] = field(default_factory=list)
    #: Per position: a 64-bit hash of the object's version (its listed version token;
    #: its pack's id if packed), 0 if unknown; empty where listings give no tokens.
    versions: array[int] = field(default_factory=lambda: array("Q"))

    def packed(self, pos: int) -> bool:
        return bool(self.pack_of) and self.pack_of[pos] >= 0


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

    threads = storage.io_threads
    if not threads:
        yield from ((fan, one(fan)) for fan in _FANS)
        return
    # Fewer objects than folders would hold in one page each: one listing of the
    # whole folder, a page of 1,000 at a time, costs fewer requests than one per
    # fan-out folder (the first folder's count tells, at one request).
    first = one(_FANS[0])
    if len(first) * len(_FANS) < _PAGE * len(_FANS) // _SPARSE:
        by_fan: dict[str, list[tuple[str, Stat | None]]] = {}
        for rel, st in storage.walk(OBJECTS):
            parts = rel.split("/")
            if len(parts) == 3 and parts[1] in _FAN_SET:
                by_fan.setdefault(parts[1], []).append((parts[2], st))
        yield from ((fan, sorted(by_fan.get(fan, []), key=lambda e: e[0])) for fan in _FANS)
        return
    # Else a few folders at a time: requests in parallel, and only those folders'
    # listings held in memory.
    yield _FANS[0], first
    with ThreadPoolExecutor(threads, thread_name_prefix="cas-gc-list") as pool:
        for i in range(1, len(_FANS), threads):
            group = _FANS[i : i + threads]
            yield from zip(group, pool.map(one, group), strict=True)


_LOOSE: Final = -1


def _loose(
    storage: Storage, temp: list[tuple[str, Stat | None]]
) -> Iterator[tuple[bytes, int, Stat | None]]:
    """Loose objects in id order, as (digest, -1, stat from the listing or None)."""
    for fan, entries in _fan_listings(storage):
        for name, st in entries:
            if name.startswith(TEMP_PREFIX):
                temp.append((f"{OBJECTS}/{fan}/{name}", st))
            elif len(name) == 62 and name == name.lower():  # ids are lower-case hex
                try:
                    yield bytes.fromhex(fan + name), _LOOSE, st
                except ValueError:
                    continue  # not an object's name


def _loose_local(storage: Storage, temp: list[tuple[str, Stat | None]]) -> bytearray:
    """:func:`_loose` of a local root, as one buffer of sorted digests: a fan-out
    folder's names are decoded in one call, not one each (a million objects listed in
    a fraction of the time)."""
    buf = bytearray()
    for fan in _FANS:
        names = storage.listdir(f"{OBJECTS}/{fan}")
        ids = [name for name in names if len(name) == 62 and name == name.lower()]
        temp.extend((f"{OBJECTS}/{fan}/{n}", None) for n in names if n.startswith(TEMP_PREFIX))
        try:  # fan + id, fan + id, ...
            decoded = bytes.fromhex(fan + fan.join(ids)) if ids else b""
        except ValueError:
            decoded = b""
        if len(decoded) != 32 * len(ids):  # not all hex (or blanks, which it skips)
            decoded = b"".join(d for d in (_digest(fan, n) for n in ids) if d)
        buf += decoded
    return buf


def _digest(fan: str, name: str) -> bytes:
    try:
        digest = bytes.fromhex(fan + name)
    except ValueError:
        return b""  # not an object's name
    return digest if len(digest) == 32 else b""


def _packed(pack_set: PackSet, number: int, pack_id: str) -> Iterator[tuple[bytes, int, int]]:
    for oid, where in pack_set.index(pack_id).entries():
        yield bytes.fromhex(oid), number, where.length


def _pack_files(
    storage: Storage, pack_set: PackSet, temp: list[tuple[str, Stat | None]]
) -> tuple[list[str], list[float]]:
    """Committed packs and their ages; packs without an index (a writer killed between
    the two) and temporary files join ``temp``."""
    names = storage.listdir(packs.PACKS)
    pack_set.refresh()
    committed, mtimes = [], []
    for pack_id in pack_set.ids():
        st = pack_set.stat(pack_id)
        if st is not None:
            committed.append(pack_id)
            mtimes.append(st.mtime)
    present = set(names)
    known = set(committed)  # its index may have come between the two listings
    for name in names:
        orphan = (
            name.endswith(".pack") and f"{name[:-5]}.idx" not in present and name[:-5] not in known
        )
        if name.startswith(TEMP_PREFIX) or orphan:
            temp.append((f"{packs.PACKS}/{name}", None))
    return committed, mtimes


def _order(entry: tuple[bytes, int, Any]) -> tuple[bytes, int]:
    return entry[0], entry[1]  # by id; loose (-1) before packed


def list_objects(storage: Storage, pack_set: PackSet | None = None) -> Listing:
    """Every object, loose and packed, in id order, in compact form (an object both
    loose and packed is listed once, as loose)."""
    buf = bytearray()
    sizes: array[int] = array("q")
    mtimes: array[float] = array("d")
    pack_of: array[int] = array("i")
    packed_size: array[int] = array("q")
    with_stats = storage.listing_stats
    temp: list[tuple[str, Stat | None]] = []
    committed, pack_mtimes = _pack_files(storage, pack_set, temp) if pack_set else ([], [])
    if not committed and not with_stats and storage.local_dir is not None:
        loose = _loose_local(storage, temp)
        n = len(loose) // 32
        return Listing(
            Digests(loose), None, temp, array("i", [_LOOSE]) * n, array("q", bytes(8 * n))
        )
    sources: list[Iterator[tuple[bytes, int, Any]]] = [_loose(storage, temp)]
    sources += [_packed(pack_set, k, p) for k, p in enumerate(committed) if pack_set]
    versions: array[int] = array("Q")
    pack_versions = [version_hash(f"pack:{pack_id}") for pack_id in committed]
    last = b""
    merged = heapq.merge(*sources, key=_order) if len(sources) > 1 else sources[0]
    for digest, number, info in merged:
        if digest == last:
            continue
        last = digest
        buf += digest
        pack_of.append(number)
        packed_size.append(info if number != _LOOSE else 0)
        if with_stats:
            st = info if number == _LOOSE else Stat(info, pack_mtimes[number])
            sizes.append(st.size)
            mtimes.append(st.mtime)
            if number != _LOOSE:
                versions.append(pack_versions[number])
            else:
                versions.append(0 if st.version is None else version_hash(st.version))
    stats = (sizes, mtimes) if with_stats else None
    if not any(versions):
        versions = array("Q")
    return Listing(
        Digests(buf), stats, temp, pack_of, packed_size, committed, pack_mtimes, versions
    )


def version_hash(token: str) -> int:
    """A non-zero 64-bit hash of a version token (0 stands for "unknown")."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little") or 1


# -- marking ---------------------------------------------------------------------------

# How to learn what an object points at: a chunk points at nothing (a chunk list names
# blobs only) but, in a store that holds deltas, its delta base; a file's content is read
# by its header first (a blob, maybe a delta, or a chunk list hiding behind a file
# entry); a tree or record is read whole; a delta's base by its header alone (only its
# own base is needed to decode it, not what it points at).
PROBE, READ, HEAD = 1, 2, 3
#: Mark levels: reached only as a delta base (only its own base is needed), or whole.
AS_BASE, WHOLE = 1, 2

Pending = tuple[bytes, int]


HOW = {TREE: READ, RECORD: READ, FILE: PROBE, BASE: HEAD}


def references_of(
    kind: str, oid: str, payload: bytes, base: str | None = None, *, deltas: bool = False
) -> tuple[list[bytes], list[Pending]]:
    """What one object points at (:func:`cas.objects.kinds.references`), as (chunks,
    other ids with how to read them). ``deltas``: the store may hold deltas, so each
    chunk's header is read for a base."""
    return _split(references(kind, oid, payload, base), deltas)


def _split(refs: list[Reference], deltas: bool) -> tuple[list[bytes], list[Pending]]:
    chunks: list[bytes] = []
    pending: list[Pending] = []
    for ref, role in refs:
        if role == CHUNK and not deltas:
            chunks.append(bytes.fromhex(ref))
        else:
            pending.append((bytes.fromhex(ref), HEAD if role == CHUNK else HOW[role]))
    return chunks, pending


#: Where marking may find a record without reading its object: the catalog.
Records = Callable[[str], Mapping[str, Any] | None]


def children(
    repo: Repository,
    digest: bytes,
    how: int,
    *,
    deltas: bool = False,
    records: Records | None = None,
) -> tuple[list[bytes], list[Pending]] | None:
    """What one object points at; None if it is absent. ``records``: where a record
    can be had without a read (on an object store, one request spared per record)."""
    oid = ObjectId(digest.hex())
    if how == READ and records is not None:
        value = records(oid)
        if value is not None:
            try:
                return _split(map_references("record", oid, value), deltas)
            except IntegrityError as exc:
                raise GcRefused(f"gc deletes nothing: {exc}. {REPAIR}") from exc
    try:
        if how in (PROBE, HEAD):
            header = repo.space.head(oid)
            if how == HEAD or header.kind == "blob":
                base = [] if header.base is None else [(bytes.fromhex(header.base), HEAD)]
                return [], base
        header, payload = repo.space.read_entry(oid)
        return references_of(header.kind, oid, payload, header.base, deltas=deltas)
    except (FileNotFoundError, ObjectNotFound):
        return None
    except IntegrityError as exc:
        raise GcRefused(f"gc deletes nothing: {exc}. {REPAIR}") from exc


class Marker:
    """Marks everything reachable from given roots, reading only what can point on:
    one byte per listed object, a stack of what is still to read."""

    def __init__(
        self, repo: Repository, listed: Digests, pool: ThreadPoolExecutor, *, deltas: bool = False,
        records: Records | None = None, local: LocalObjects | None = None,
    ) -> None:  # fmt: skip
        self.repo = repo
        #: A local root's fan-out folders, open (only where no pack holds objects: a
        #: header is then read from the loose file, as the object space would).
        self.local = local
        self.deltas = deltas  # the store may hold deltas: chunks are read for a base
        self.records = records  # records known without a read (the catalog's)
        #: Per listed object: 1 if it points at nothing at its listed version (a blob
        #: with no delta base), known from a read or from the leaves a gc before
        #: learned (:mod:`cas.admin.leaves`): marking reads it no more.
        self.leaf = bytearray(len(listed))
        self.learned = 0  # leaves learned by a read this time
        self.listed = listed
        self.pool = pool
        self.slice = SLICE if repo.storage.local_dir is not None else REMOTE_SLICE
        self.marked = bytearray(len(listed))
        self.count = 0
        self.missing: set[ObjectId] = set()

    def _take(self, digest: bytes, gone_ok: set[bytes], how: int = READ) -> bool:
        """Mark one object: True if it is listed and was not marked yet, or was marked
        only as a delta base (its header read) and is now reached as content, whose
        references must be read too (a folder unchanged in a new version may also be the
        base of a changed one)."""
        pos = self.listed.find(digest)
        if pos < 0:
            if digest not in gone_ok:
                self.missing.add(ObjectId(digest.hex()))
            return False
        level = AS_BASE if how == HEAD else WHOLE
        if self.marked[pos] >= level:
            return False
        if not self.marked[pos]:
            self.count += 1
        self.marked[pos] = level
        return True

    def as_base(self) -> Iterator[bytes]:
        """Digests of the objects marked only as delta bases."""
        pos = self.marked.find(AS_BASE)
        while pos >= 0:
            yield self.listed.digest(pos)
            pos = self.marked.find(AS_BASE, pos + 1)

    def mark(self, roots: Iterable[bytes], how: int, *, may_be_gone: bool = False) -> None:
        """Mark ``roots`` and all they reach. ``may_be_gone``: roots that an earlier gc
        may rightly have collected (old history, deleted records) are not "missing"."""
        stack: list[Pending] = [(d, how) for d in roots]
        gone_ok = {d for d, _ in stack} if may_be_gone else set()
        while stack:
            batch = stack[-ROUND:]
            del stack[-ROUND:]
            todo = [
                (d, h)
                for d, h in batch
                if self._take(d, gone_ok, h) and not (h != READ and self._is_leaf(d))
            ]
            for (digest, how), found in zip(todo, self._read(todo), strict=True):
                if found is None:
                    self.missing.add(ObjectId(digest.hex()))  # listed, then gone
                    continue
                chunks, pending = found
                if how == PROBE and not chunks and not pending:
                    # A blob without a base (a HEAD read says nothing of the kind).
                    self.leaf[self.listed.find(digest)] = 1
                    self.learned += 1
                for chunk in chunks:
                    self._take(chunk, set())
                stack.extend(pending)

    def _is_leaf(self, digest: bytes) -> bool:
        """Known to point at nothing at its listed version: no read needed."""
        return bool(self.leaf[self.listed.find(digest)])

    def _head_local(self, digest: bytes, how: int) -> tuple[list[bytes], list[Pending]] | None:
        """:func:`children` of a header read (``PROBE``, ``HEAD``) from a loose file by its
        fan-out folder's descriptor; None where it takes more (the file is absent, or a
        probe finds a chunk list, a tree or a record: read whole by :func:`children`)."""
        oid = digest.hex()
        stored = self.local.head(oid) if self.local is not None else None
        if stored is None:
            return None
        try:
            header = codec.read_header(oid, stored)
        except IntegrityError as exc:
            raise GcRefused(f"gc deletes nothing: {exc}. {REPAIR}") from exc
        if how != HEAD and header.kind != "blob":
            return None
        return [], ([] if header.base is None else [(bytes.fromhex(header.base), HEAD)])

    def _read(self, todo: list[Pending]) -> list[tuple[list[bytes], list[Pending]] | None]:
        """Each object's references, read in parallel slices."""

        def one(d: bytes, h: int) -> tuple[list[bytes], list[Pending]] | None:
            if h != READ and self.local is not None:
                found = self._head_local(d, h)
                if found is not None:
                    return found
            return children(self.repo, d, h, deltas=self.deltas, records=self.records)

        size = self.slice
        if len(todo) <= size:
            return [one(d, h) for d, h in todo]
        slices = [todo[i : i + size] for i in range(0, len(todo), size)]
        out: list[tuple[list[bytes], list[Pending]] | None] = []
        for part in self.pool.map(lambda s: [one(d, h) for d, h in s], slices):
            out.extend(part)
        return out


def digests(ids: Iterable[str]) -> list[bytes]:
    return [bytes.fromhex(i) for i in ids if is_id(i)]


def ages(
    storage: Storage, listing: Listing, positions: Iterator[int], pool: ThreadPoolExecutor,
    local: LocalObjects | None = None,
) -> Iterator[tuple[int, Stat | None]]:  # fmt: skip
    """Size and age of listed objects: from the listing, or (locally) one stat each,
    a round at a time in parallel (an inode not in the cache waits on the disk);
    ``local``: by the fan-out folder's descriptor."""
    if listing.stats is not None:
        sizes, mtimes = listing.stats
        for pos in positions:
            yield pos, Stat(sizes[pos], mtimes[pos])
        return

    def one(pos: int) -> Stat | None:
        if listing.packed(pos):
            return Stat(listing.packed_size[pos], listing.pack_mtimes[listing.pack_of[pos]])
        if local is not None:
            return local.stat(listing.digests.oid(pos))
        return storage.stat(object_path(listing.digests.oid(pos)))

    def stat(part: list[int]) -> list[Stat | None]:
        return [one(pos) for pos in part]

    while group := list(itertools.islice(positions, 4 * ROUND)):
        parts = [group[i : i + SLICE] for i in range(0, len(group), SLICE)]
        stats = itertools.chain.from_iterable(pool.map(stat, parts))
        yield from zip(group, stats, strict=True)


def unmarked(marked: bytearray) -> Iterator[int]:
    pos = marked.find(0)
    while pos >= 0:
        yield pos
        pos = marked.find(0, pos + 1)
