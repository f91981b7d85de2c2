"""Multi-pack indexes: the indexes of many packs in one write-once file (git's
multi-pack-index), so a new machine finds a packed object after one listing and one
read, not one read per pack.

::

    packs/<name>.midx   b"CASMIDX1", u32 pack count, the 32-byte ids of the packs it
                        covers (sorted), u32 entry count, 256 x u32 fan-out (cumulative
                        count of ids whose first byte is <= i), then count x (32-byte
                        object id, u32 number of its pack in that list, u64 offset, u32
                        length) sorted by object id

The name is the BLAKE3 of the file's bytes, so it is verified on read as an object is.
It is derived from the packs' own indexes and never needed: a reader that finds it
damaged, or finds none, reads the per-pack indexes. Packs are never changed, only
removed (gc rewrites them into new ones), so an entry is right for as long as its pack
exists; a reader ignores the entries of packs the listing no longer shows. gc removes a
multi-pack index that names a pack which is gone, or that a newer one covering all its
packs supersedes, once it is older than the grace period.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Container, Iterable, Iterator
from typing import Final

import blake3

from cas.errors import IntegrityError
from cas.objects import packs
from cas.objects.ids import ObjectId, is_id
from cas.storage import Stat, Storage

MIDX_MAGIC: Final = b"CASMIDX1"
SUFFIX: Final = ".midx"
_COUNT: Final = struct.Struct("<I")
_FANOUT_SIZE: Final = 256 * 4
_ENTRY: Final = struct.Struct("<32sIQI")  # object id, pack number, offset, length

#: A process whose listing shows at least this many packs that no multi-pack index
#: covers (it has just read each one's index) writes one covering every pack it knows.
WRITE_FROM: Final = 16


def midx_path(name: str) -> str:
    return f"{packs.PACKS}/{name}{SUFFIX}"


def names_in(listing: Iterable[str]) -> list[str]:
    """The multi-pack indexes among the file names of ``packs/``."""
    return [n[: -len(SUFFIX)] for n in listing if n.endswith(SUFFIX) and is_id(n[: -len(SUFFIX)])]


class MultiPackIndex:
    """One multi-pack index, verified and parsed: its table is searched in place."""

    def __init__(self, name: str, raw: bytes) -> None:
        if blake3.blake3(raw).hexdigest() != name:
            raise IntegrityError(name, f"multi-pack index {midx_path(name)} is corrupt")
        what = f"multi-pack index {midx_path(name)} is not one"
        if raw[: len(MIDX_MAGIC)] != MIDX_MAGIC or len(raw) < len(MIDX_MAGIC) + 8 + _FANOUT_SIZE:
            raise IntegrityError(name, what)
        at = len(MIDX_MAGIC)
        (n_packs,) = _COUNT.unpack_from(raw, at)
        at += _COUNT.size
        self.packs = tuple(raw[at + 32 * i : at + 32 * (i + 1)].hex() for i in range(n_packs))
        at += 32 * n_packs
        if len(raw) < at + _COUNT.size + _FANOUT_SIZE or list(self.packs) != sorted(self.packs):
            raise IntegrityError(name, what)
        (self.count,) = _COUNT.unpack_from(raw, at)
        self._fanout: tuple[int, ...] = struct.unpack_from("<256I", raw, at + _COUNT.size)
        self._head = at + _COUNT.size + _FANOUT_SIZE
        if len(raw) != self._head + self.count * _ENTRY.size or self._fanout[255] != self.count:
            raise IntegrityError(name, what)
        self.name = name
        self._raw = raw

    def find(self, oid: ObjectId, live: Container[int]) -> packs.Where | None:
        """Where ``oid`` lies in a pack whose number is in ``live`` (the packs that
        still exist), or None."""
        key = bytes.fromhex(oid)
        i = packs.search(self._raw, self._head, _ENTRY.size, self._fanout, key)
        while 0 <= i < self.count:
            got, number, offset, length = _ENTRY.unpack_from(
                self._raw, self._head + i * _ENTRY.size
            )
            if got != key:
                break
            if number in live:
                return packs.Where(self.packs[number], offset, length)
            i += 1  # the same object in another pack (gc copied it there)
        return None

    def rows(self) -> Iterator[tuple[bytes, int, int, int]]:
        """(32-byte id, pack number, offset, length) of each entry, in id order."""
        end = self._head + self.count * _ENTRY.size
        return _ENTRY.iter_unpack(memoryview(self._raw)[self._head : end])


def build(rows: Iterable[tuple[bytes, str, int, int]]) -> tuple[str, bytes]:
    """(name, bytes) of the multi-pack index of ``rows``: (32-byte object id, pack id,
    offset, length)."""
    table: list[tuple[bytes, str, int, int]] = sorted(rows)
    pack_ids = sorted({pack for _, pack, _, _ in table})
    number = {p: n for n, p in enumerate(pack_ids)}
    parts = [
        MIDX_MAGIC,
        _COUNT.pack(len(pack_ids)),
        b"".join(bytes.fromhex(p) for p in pack_ids),
        _COUNT.pack(len(table)),
        packs.fanout(key for key, _, _, _ in table),
        b"".join(_ENTRY.pack(k, number[p], off, n) for k, p, off, n in table),
    ]
    raw = b"".join(parts)
    return blake3.blake3(raw).hexdigest(), raw


def rows_of(
    indexes: dict[str, packs.PackIndex], midx: MultiPackIndex | None, pack_ids: Iterable[str]
) -> Iterator[tuple[bytes, str, int, int]]:
    """The rows of ``pack_ids`` for :func:`build`: from their own index when it was
    read, else from ``midx`` (a pack neither holds is left out)."""
    wanted = set(pack_ids)
    for pack_id in sorted(wanted & indexes.keys()):
        for key, offset, length in indexes[pack_id].rows():
            yield key, pack_id, offset, length
    if midx is not None:
        from_midx = {n for n, p in enumerate(midx.packs) if p in wanted - indexes.keys()}
        for key, number, offset, length in midx.rows():
            if number in from_midx:
                yield key, midx.packs[number], offset, length


def read(storage: Storage, name: str) -> MultiPackIndex:
    """The multi-pack index ``name`` of the root: ``IntegrityError`` naming it if it
    does not verify, ``FileNotFoundError`` if it is gone."""
    return MultiPackIndex(name, storage.read(midx_path(name)))


def newest_first(storage: Storage, names: list[str]) -> list[str]:
    """``names`` newest first (one listing with ages; none for a single name)."""
    if len(names) < 2:
        return names
    ages = {rel.rsplit("/", 1)[-1]: st.mtime for rel, st in storage.walk(packs.PACKS)}
    return sorted(names, key=lambda n: ages.get(n + SUFFIX, 0.0), reverse=True)


def sweep(storage: Storage, grace: float, now: float | None = None) -> list[str]:
    """Remove the multi-pack indexes older than ``grace`` that name a pack which is
    gone, or that a newer one covering all their packs supersedes (gc, after it has
    removed packs). One that does not read is left for fsck. Returns the names removed."""
    now = time.time() if now is None else now
    found: list[tuple[Stat, MultiPackIndex]] = []
    present: set[str] = set()
    for rel, st in storage.walk(packs.PACKS):
        file = rel.rsplit("/", 1)[-1]
        if file.endswith(".idx"):
            present.add(file[:-4])
        for name in names_in([file]):
            try:
                found.append((st, read(storage, name)))
            except (FileNotFoundError, IntegrityError):
                continue
    if not found:
        return []
    _, newest = max(found, key=lambda f: (f[0].mtime, len(f[1].packs)))
    doomed = []
    for st, midx in found:
        covers = set(midx.packs)
        gone = not covers <= present
        superseded = midx is not newest and covers <= set(newest.packs)
        if (gone or superseded) and now - st.mtime > grace:
            doomed.append(midx.name)
    storage.delete_many([midx_path(n) for n in doomed])
    return doomed


def problems(storage: Storage, indexes: dict[str, packs.PackIndex]) -> list[tuple[str, str]]:
    """(name, what is wrong) for each multi-pack index of the root that does not read
    or disagrees with the index of a pack it covers (``indexes``: every pack's, read
    from the root). A pack it names that is gone is not a problem: gc removes it."""
    found = []
    for name in names_in(storage.listdir(packs.PACKS)):
        try:
            midx = read(storage, name)
        except FileNotFoundError:
            continue
        except IntegrityError as exc:
            found.append((name, str(exc)))
            continue
        wrong = _disagrees(midx, indexes)
        if wrong:
            found.append((name, f"multi-pack index {midx_path(name)} {wrong}"))
    return found


def _disagrees(midx: MultiPackIndex, indexes: dict[str, packs.PackIndex]) -> str | None:
    """What in ``midx`` disagrees with the packs' own indexes, or None: per pack, the
    same entries in the same (id) order."""
    hashers = [blake3.blake3() for _ in midx.packs]
    counts = [0] * len(midx.packs)
    for key, number, offset, length in midx.rows():
        if number >= len(midx.packs):
            return "names a pack number it does not list"
        hashers[number].update(struct.pack("<32sQI", key, offset, length))
        counts[number] += 1
    for number, pack_id in enumerate(midx.packs):
        index = indexes.get(pack_id)
        if index is None:
            continue  # gone, or its own index does not read (reported as a damaged pack)
        own = blake3.blake3()
        for row in index.rows():
            own.update(struct.pack("<32sQI", *row))
        if index.count != counts[number] or own.digest() != hashers[number].digest():
            return f"disagrees with the index of pack {pack_id}"
    return None
