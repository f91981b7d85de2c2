"""fsck's work on packs: each pack's bytes against its name and its index, and the
salvage of a damaged pack (``cas fsck --repair``): every object in it that still
verifies is written to a new pack, what does not goes to ``quarantine/``.

Objects inside packs are verified one by one with all the others (fsck reads every
object, loose or packed); what is checked here is the pack as a file: a pack whose
bytes do not hash to its name, an index that does not read, an index whose pack is
gone, a multi-pack index that does not read or disagrees with the packs' indexes.
"""

from __future__ import annotations

from collections.abc import Iterable

import blake3

from cas.errors import CasError, IntegrityError
from cas.objects import codec, delta, multipack, packs
from cas.objects.ids import ObjectId, blob_id, kind_id
from cas.repo.repository import Repository


def pack_problems(repo: Repository) -> list[tuple[str, str]]:
    """(pack id, what is wrong) for each damaged pack of the root."""
    pack_set = repo.space.packs
    pack_set.refresh(reread=True)  # the root's indexes, not this machine's cached copies
    found = [
        (pack_id, f"its index does not read: {why}") for pack_id, why in pack_set.damaged.items()
    ]
    for pack_id in pack_set.ids():
        try:
            raw = repo.storage.read(packs.pack_path(pack_id))
        except FileNotFoundError:
            found.append((pack_id, "its index is here but the pack file is gone"))
            continue
        got = blake3.blake3(raw, max_threads=blake3.blake3.AUTO).hexdigest()
        if got != pack_id:
            found.append((pack_id, f"its bytes hash to {got[:12]}…, not to its name"))
    return sorted(found)


def midx_problems(repo: Repository) -> list[tuple[str, str]]:
    """(name, what is wrong) for each multi-pack index that does not read or disagrees
    with the packs' own indexes (after :func:`pack_problems` read those from the root)."""
    pack_set = repo.space.packs
    indexes = {pack_id: pack_set.index(pack_id) for pack_id in pack_set.ids()}
    return sorted(multipack.problems(repo.storage, indexes))


def remove_midx(repo: Repository, name: str) -> str:
    """Remove a damaged multi-pack index: it is derived, and readers (and the next
    listing that finds many packs uncovered, or gc) write another."""
    repo.storage.delete(multipack.midx_path(name))
    return f"multi-pack index {name} removed (readers use the packs' own indexes)"


def objects_of(repo: Repository, pack_id: str) -> list[ObjectId]:
    """The ids a pack holds, from its index or, if that is damaged, from the pack."""
    try:
        return [oid for oid, _ in repo.space.packs.index(pack_id).entries()]
    except KeyError:
        try:
            raw = repo.storage.read(packs.pack_path(pack_id))
        except FileNotFoundError:
            return []
        return [oid for oid, _, _ in packs.scan(raw)]


def salvage(repo: Repository, pack_id: str, bad: Iterable[str] = ()) -> str:
    """Rewrite a pack with every object in it that verifies (and is not in ``bad``);
    quarantine the rest; remove the old pack and index. Returns what it did."""
    try:
        raw = repo.storage.read(packs.pack_path(pack_id))
    except FileNotFoundError:
        repo.storage.delete(packs.index_path(pack_id))
        repo.space.packs.refresh()
        return f"pack {pack_id}: its pack file is gone; its index removed"
    skip = set(bad)
    good: list[tuple[ObjectId, bytes]] = []
    lost: list[ObjectId] = []
    here = {oid: (offset, length) for oid, offset, length in packs.scan(raw)}

    def read(oid: ObjectId) -> bytes:  # a delta's base: in this pack, or anywhere
        if oid in here:
            offset, length = here[oid]
            return raw[offset : offset + length]
        return repo.space.read_stored(oid)

    for oid, offset, length in packs.scan(raw):
        stored = raw[offset : offset + length]
        if oid in skip or not _verifies(oid, stored, read):
            repo.storage.write_atomic(f"quarantine/{oid}", stored)
            lost.append(oid)
        else:
            good.append((oid, stored))
    new_id = None
    if good:
        repo.space.mark_packed()
        new_id, index = packs.write(repo.storage, good)
        repo.space.packs.add(new_id, index)
    if new_id != pack_id:  # else every object verified: the same pack, its index rewritten
        repo.storage.delete(packs.index_path(pack_id))
        repo.storage.delete(packs.pack_path(pack_id))
    repo.space.packs.damaged.pop(pack_id, None)
    repo.space.packs.refresh()
    return (
        f"pack {pack_id}: {len(good)} objects that verify rewritten to a new pack, "
        f"{len(lost)} set aside in quarantine/"
    )


def _verifies(oid: ObjectId, stored: bytes, read: delta.Read) -> bool:
    """True if ``stored`` decodes to what ``oid`` promises (a delta through its bases,
    read with ``read``; one whose base is nowhere does not verify)."""
    try:
        header = codec.read_header(oid, stored)
        if header.base is None:
            payload = codec.decode_body(oid, header, stored)
        else:
            payload = delta.resolve(oid, header, stored, read)
    except (IntegrityError, CasError):
        return False
    if header.kind == "chunks":
        return True  # verified through its content, which the salvage keeps
    return (blob_id(payload) if header.kind == "blob" else kind_id(header.kind, payload)) == oid
