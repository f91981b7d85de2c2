"""``cas gc --aggressive``: every pack rewritten with delta bases chosen again over a
window of similar objects across the whole store, as ``git gc --aggressive`` does.

A save picks each object's base from what it knows at that moment (the same path in the
previous version, a file like it in the same save). Once a store holds many versions
under many names, better bases exist: the same file in any other version, wherever it
was saved. Here every packed object small enough to be a base (whole files, folders'
trees, the last chunks of large files: up to :data:`MAX_SIZE`) is taken in git's window
order, by kind, then path (from the folders the records point at), then size, largest
first; each tries as bases the :data:`WINDOW` objects before it, its base before and
the file most like it by line sketch (a quick compression each, at
:data:`SCREEN_LEVEL`), then the :data:`FINALISTS` best and its plain form at
:data:`LEVEL`, and keeps the smallest (a delta only if it pays for its depth:
:func:`_pays`). A base always
comes earlier in that order, so no chain has a cycle, and chains keep the writer's caps
(:func:`cas.objects.delta.max_depth`). Larger objects (chunks of large files) and what
they are deltas against keep their stored form, byte for byte.

Ids never change: every object of the old packs is written again under its id (plain
or as a delta, whatever it was), so nothing a reader, a writer or gc relies on goes
away. Order keeps every reader whole, as gc's rewrite of a pack
(:mod:`cas.admin.repack`): the new packs are committed (pack, then index) first, all of
them; only then do the old indexes go, each before its pack. A process killed at any
point leaves the old packs, or both (the same objects twice: the next gc rewrites
nothing it need not, and a pack without its index is removed as a leftover).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cas.errors import CasError, IntegrityError
from cas.objects import codec, delta, packs
from cas.objects.ids import ObjectId
from cas.objects.kinds import MODE_DIR, unpack
from cas.repo.repository import Repository

#: Objects before each one in window order that are tried as its base (git: 10, and 250
#: with --aggressive). Measured on four setuptools releases saved under names of their
#: own: stored blobs 1.84 MB at 10, 1.83 at 30 for twice the time.
WINDOW: Final = 10
#: zstd level of the rewritten objects, plain and deltas (a save writes 3 and 6): on the
#: same store, 1.84 MB at 19 against 1.92 at 9.
LEVEL: Final = 19
#: The level at which each base of the window is tried, to pick the one to encode at
#: :data:`LEVEL` (a compression at 19 costs ~20 at 3).
SCREEN_LEVEL: Final = 3
#: The bases of the window with the smallest quick compressions that are encoded at
#: :data:`LEVEL` (the smaller kept).
FINALISTS: Final = 2
#: Objects above this keep their stored form: a window of MiB chunks at level 19 costs
#: seconds an object, for what the save's aligned bases already found.
MAX_SIZE: Final = 1 << 20
#: Files whose line sketches (:class:`cas.objects.delta.Sketches`) are kept to find,
#: for each one, the most similar file settled before it wherever it lies: another
#: name, a renamed file, a file of another package.
SKETCHED: Final = 16384

Progress = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class Repacked:
    """What an aggressive repack did."""

    objects: int  # objects written again
    packs_before: int
    packs_after: int
    bytes_before: int  # stored forms, old packs
    bytes_after: int  # stored forms, new packs
    deltas: int  # objects stored as deltas after it


@dataclass(slots=True)
class _Entry:
    oid: ObjectId
    where: packs.Where
    head: codec.Header
    name: str = ""


def repack_window(
    repo: Repository, *, window: int = WINDOW, level: int = LEVEL, progress: Progress | None = None
) -> Repacked:
    """Rewrite every committed pack of ``repo`` with delta bases chosen again (see the
    module's docstring). Loose objects are left as they are (``cas gc --pack`` moves
    them into packs first)."""
    step = progress or (lambda what, n: None)
    pack_set = repo.space.packs
    pack_set.refresh()
    old = pack_set.ids()
    entries = _entries(repo, old)
    if len(old) < 1 or not entries:
        return Repacked(0, len(old), len(old), 0, 0, 0)
    _name_blobs(repo, entries)
    fixed = _fixed(entries)
    writer = _Writer(repo)
    for pack_id in old:  # kept byte for byte: read in ranges, a pack at a time
        kept = sorted((e for e in entries.values() if e.oid in fixed and e.where.pack == pack_id),
                      key=lambda e: e.where.offset)  # fmt: skip
        for e, stored in zip(kept, pack_set.read_many([e.where for e in kept]), strict=True):
            writer.add(e.oid, stored, e.head.base is not None)
    depths = {oid: entries[oid].head.depth for oid in fixed}
    order = sorted(
        (e for e in entries.values() if e.oid not in fixed),
        key=lambda e: (e.head.kind, e.name, -e.head.raw_size, e.oid),
    )
    recent: deque[delta.Base] = deque(maxlen=window)
    sketches = delta.Sketches(keep=SKETCHED)
    for n, e in enumerate(order):
        _, payload = repo.space.read_entry(e.oid)
        sketch = sketches.sketch(payload) if e.head.kind == "blob" else None
        like = sketches.like(sketch) if sketch is not None else None
        extra = tuple(o for o in (e.head.base, like) if o is not None and o in depths)
        stored, base = _choose(e, payload, recent, extra, depths, entries, repo, level)
        depths[e.oid] = 0 if base is None else depths[base] + 1
        writer.add(e.oid, stored, base is not None)
        recent.append(delta.Base(e.oid, payload, depths[e.oid]))
        if sketch is not None:
            sketches.add(e.oid, sketch)
        if n % 256 == 255:
            step("repacked objects", n + 1)
    writer.close()
    before = sum(e.where.length for e in entries.values())
    for pack_id in old:  # every new pack is committed: only now do the old ones go
        if pack_id in writer.written:
            continue  # written again byte for byte (a pack is named by its bytes)
        repo.storage.delete(packs.index_path(pack_id))
        repo.storage.delete(packs.pack_path(pack_id))
    pack_set.refresh()
    return Repacked(len(entries), len(old), len(writer.written), before, writer.size, writer.deltas)


def _entries(repo: Repository, pack_ids: list[str]) -> dict[ObjectId, _Entry]:
    """Every object of these packs (once: the first pack holding it) with its header,
    one pack read at a time."""
    pack_set = repo.space.packs
    out: dict[ObjectId, _Entry] = {}
    for pack_id in pack_ids:
        rows = sorted(pack_set.index(pack_id).entries(), key=lambda e: e[1].offset)
        rows = [(oid, w) for oid, w in rows if oid not in out]
        heads = pack_set.read_many(
            [packs.Where(w.pack, w.offset, min(w.length, codec.HEAD_SIZE)) for _, w in rows]
        )
        for (oid, where), head in zip(rows, heads, strict=True):
            out[oid] = _Entry(oid, where, codec.read_header(oid, head))
    return out


def _name_blobs(repo: Repository, entries: dict[ObjectId, _Entry]) -> None:
    """Each blob and tree named by its path in the folders that records point at (the
    first path found), else by its name in any tree: versions of one file then sit
    side by side in window order."""
    todo: list[tuple[ObjectId, str]] = []
    for e in entries.values():
        if e.head.kind == "record":
            content = _value(repo, e.oid).get("content_id")
            if isinstance(content, str) and content in entries:
                todo.append((ObjectId(content), ""))
    seen: set[ObjectId] = set()
    while todo:  # folders from the records down, each once
        tree, path = todo.pop()
        if tree in seen or entries[tree].head.kind != "tree":
            continue
        seen.add(tree)
        entries[tree].name = entries[tree].name or _sort_name(path, True)
        for name, mode, child in _rows(repo, tree):
            if child in entries and not entries[child].name:
                entries[child].name = _sort_name(f"{path}{name}", mode == MODE_DIR)
            if mode == MODE_DIR and child in entries:
                todo.append((child, f"{path}{name}/"))
    for e in list(entries.values()):  # trees no record reaches now: their names alone
        if e.head.kind == "tree" and e.oid not in seen:
            for name, mode, child in _rows(repo, e.oid):
                if child in entries and not entries[child].name:
                    entries[child].name = _sort_name(name, mode == MODE_DIR)


def _value(repo: Repository, oid: ObjectId) -> dict[str, Any]:
    """A record's or tree's value; {} if it does not read (fsck's to report: here it
    only costs a name)."""
    try:
        _, payload = repo.space.read_entry(oid)
        value = unpack(oid, payload)
    except CasError:
        return {}
    return value if isinstance(value, dict) else {}


def _rows(repo: Repository, tree: ObjectId) -> list[tuple[str, int, ObjectId]]:
    rows = _value(repo, tree).get("entries")
    out = []
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, list) and len(row) == 3 and isinstance(row[2], bytes):
            out.append((str(row[0]), int(row[1]), ObjectId(row[2].hex())))
    return out


def _sort_name(name: str, folder: bool) -> str:
    """The name a window sorts by: the extension first (git sorts by a hash of the path's
    end, so that files of one type sit together), then the name."""
    if folder:
        return f"/{name}"
    stem, ext = os.path.splitext(name)
    return f"{ext}/{stem}"


def _fixed(entries: dict[ObjectId, _Entry]) -> set[ObjectId]:
    """Objects that keep their stored form: too large for the window, not blobs or
    trees, XOR deltas (the window's zstd deltas find nothing in numbers that all moved),
    and every base below one of those (its depth must stay what it says)."""
    fixed: set[ObjectId] = set()
    for e in entries.values():
        small = delta.MIN_SIZE <= e.head.raw_size <= MAX_SIZE
        if e.head.kind in ("blob", "tree") and small and not e.head.flags & codec.FLAG_XOR:
            continue
        oid: ObjectId | None = e.oid
        while oid is not None and oid in entries and oid not in fixed:
            fixed.add(oid)
            oid = entries[oid].head.base
    return fixed


def _choose(
    e: _Entry, payload: bytes, recent: deque[delta.Base], extra: tuple[ObjectId, ...],
    depths: dict[ObjectId, int], entries: dict[ObjectId, _Entry], repo: Repository,
    level: int,
) -> tuple[bytes, ObjectId | None]:  # fmt: skip
    """(stored form, base or None) of one object: the smaller of its plain form and a
    delta on the best base of the window and of ``extra`` (settled objects: its base
    before, the most similar file by sketch)."""
    kind, size = e.head.kind, len(payload)
    plain = codec.encode(kind, payload, level)
    candidates = [b for b in recent if _usable(b, kind, entries, size)]
    for oid in dict.fromkeys(extra):
        if any(b.id == oid for b in candidates):
            continue
        _, extra_payload = repo.space.read_entry(oid)
        base = delta.Base(oid, extra_payload, depths[oid])
        if _usable(base, kind, entries, size):
            candidates.append(base)
    screened = sorted(
        (len(delta.encode(kind, payload, base, SCREEN_LEVEL)), n, base)
        for n, base in enumerate(candidates)
    )
    best: tuple[bytes, delta.Base] | None = None
    for _, _, base in screened[:FINALISTS]:
        stored = delta.encode(kind, payload, base, level)
        if _pays(plain, stored, base, size) and (best is None or len(stored) < len(best[0])):
            best = (stored, base)
    if best is None:
        return plain, None
    # The old copy goes once this one is committed: it must decode, before it is kept.
    head = codec.read_header(e.oid, best[0])
    if codec.decode_body(e.oid, head, best[0], best[1].payload) != payload:
        raise IntegrityError(e.oid, f"object {e.oid}: its new delta does not decode back")
    return best[0], best[1].id


def _pays(plain: bytes, stored: bytes, base: delta.Base, size: int) -> bool:
    """True if a delta on ``base`` is worth the depth it takes (after git's rule): it
    saves what any delta must, and more the deeper its base, since each level it uses
    is one that what builds on it cannot. On a base in the lower half of the cap any
    delta that saves enough does; at the cap less one it must be half the plain form.
    Measured on four setuptools releases under names of their own: 1.846 MB, against
    1.855 without the rule and 1.861 with git's own scale."""
    cap = delta.max_depth(size)
    return delta.better(plain, stored) and len(stored) * cap <= 2 * len(plain) * (cap - base.depth)


def _usable(base: delta.Base, kind: str, entries: dict[ObjectId, _Entry], size: int) -> bool:
    return entries[base.id].head.kind == kind and delta.usable(base, size)


class _Writer:
    """New packs of up to :data:`cas.objects.packs.PACK_SIZE`, each committed (pack,
    then index) as it fills."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.group: list[tuple[ObjectId, bytes]] = []
        self.pending = 0
        self.has_delta = False
        self.written: list[str] = []
        self.size = 0
        self.deltas = 0

    def add(self, oid: ObjectId, stored: bytes, is_delta: bool) -> None:
        self.group.append((oid, stored))
        self.pending += len(stored)
        self.size += len(stored)
        self.has_delta = self.has_delta or is_delta
        self.deltas += is_delta
        if self.pending >= packs.PACK_SIZE:
            self._commit()

    def close(self) -> None:
        if self.group:
            self._commit()

    def _commit(self) -> None:
        space = self.repo.space
        space.mark_packed()
        if self.has_delta:
            space.mark_deltas()
        pack_id, index = packs.write(self.repo.storage, self.group)
        space.packs.add(pack_id, index)
        self.written.append(pack_id)
        self.group, self.pending, self.has_delta = [], 0, False
