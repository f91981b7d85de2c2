"""Object kinds as values, and their canonical msgpack payloads.

- blob: bytes; id = BLAKE3 of the bytes.
- chunks: a chunk list, stored under the id of the content it assembles (a blob id):
  ``{"size": total, "chunks": [[chunk digest (32 bytes), chunk size], ...]}``.
- tree: a directory manifest ``{"entries": [[name, mode, digest], ...]}`` sorted by name;
  a file entry names a blob (or chunked blob), a directory entry (mode 0o040000) a tree.
- record: an artifact record, like a git commit (see cas.repo.records); a msgpack map.
- event: a catalog event (tag, delete), a msgpack map.

Structured kinds are hashed over their canonical msgpack bytes (sorted map keys, binary
digests), so the same value always has the same id.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from cas.errors import IntegrityError
from cas.objects.ids import ObjectId, is_id

MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_DIR = 0o040000
MODE_LINK = 0o120000
TREE_MODES = frozenset({MODE_FILE, MODE_EXEC, MODE_DIR, MODE_LINK})


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def pack(value: Any) -> bytes:
    """Canonical msgpack: map keys sorted, tuples as arrays, str and bytes kept apart."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def unpack(oid: str, payload: bytes) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:  # TypeError: a list key
        raise IntegrityError(oid, f"object {oid} does not decode ({exc}); run 'cas fsck'") from exc


@dataclass(frozen=True, slots=True)
class ChunkList:
    size: int
    chunks: tuple[tuple[ObjectId, int], ...]

    def payload(self) -> bytes:
        return pack({"size": self.size, "chunks": [[bytes.fromhex(c), n] for c, n in self.chunks]})

    @classmethod
    def parse(cls, oid: str, payload: bytes) -> ChunkList:
        value = unpack(oid, payload)
        try:
            chunks = tuple((ObjectId(d.hex()), int(n)) for d, n in value["chunks"])
            size = int(value["size"])
            ok = len(chunks) > 0 and all(len(c) == 64 and n >= 0 for c, n in chunks)
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok or size != sum(n for _, n in chunks):
            raise IntegrityError(oid, f"chunk list {oid} is malformed; run 'cas fsck'")
        return cls(size, chunks)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    name: str
    mode: int
    id: ObjectId

    @property
    def is_dir(self) -> bool:
        return self.mode == MODE_DIR


@dataclass(frozen=True, slots=True)
class Tree:
    entries: tuple[TreeEntry, ...]

    @classmethod
    def of(cls, entries: Iterable[TreeEntry]) -> Tree:
        ordered = tuple(sorted(entries, key=lambda e: e.name))
        for e in ordered:
            if not e.name or "/" in e.name or e.name in (".", "..") or "\0" in e.name:
                raise ValueError(f"invalid tree entry name {e.name!r}")
            if e.mode not in TREE_MODES:
                raise ValueError(f"invalid tree entry mode {e.mode:o} for {e.name!r}")
        names = [e.name for e in ordered]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tree entry names")
        return cls(ordered)

    def payload(self) -> bytes:
        return pack({"entries": [[e.name, e.mode, bytes.fromhex(e.id)] for e in self.entries]})

    @classmethod
    def parse(cls, oid: str, payload: bytes) -> Tree:
        value = unpack(oid, payload)
        try:
            return cls.of(
                TreeEntry(str(n), int(m), ObjectId(d.hex())) for n, m, d in value["entries"]
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(oid, f"tree {oid} is malformed ({exc}); run 'cas fsck'") from exc


def mode_of(st_mode: int) -> int:
    """A tree mode for a file's stat mode: executable or not, as git keeps it."""
    if stat.S_ISDIR(st_mode):
        return MODE_DIR
    if stat.S_ISLNK(st_mode):
        return MODE_LINK
    return MODE_EXEC if st_mode & 0o111 else MODE_FILE


#: What a reference is, which says how to learn what it points at in turn: a chunk is a
#: blob (it points at nothing but, stored as a delta, its base); a file is a blob or a
#: chunk list (its header tells); a tree and a record are read whole; a base is an
#: object a delta is decoded against: only its bytes are needed (and its own base, if it
#: is a delta too), not what it points at.
CHUNK, FILE, TREE, RECORD, BASE = "chunk", "file", "tree", "record", "base"

Reference = tuple[ObjectId, str]


def references(kind: str, oid: str, payload: bytes, base: str | None = None) -> list[Reference]:
    """The ids an object points at, each with its role (:data:`CHUNK`, :data:`FILE`,
    :data:`TREE`, :data:`RECORD`, :data:`BASE`): the one rule gc marks by, fsck checks
    by and transfer copies by. ``base``: the object's delta base, from its header
    (:attr:`cas.objects.codec.Header.base`), listed first. It fails closed: an object
    that does not decode as its kind raises :class:`IntegrityError`, so gc refuses
    instead of missing what it points at."""
    based: list[Reference] = [] if base is None else [(ObjectId(base), BASE)]
    return based + _references(kind, oid, payload)


def _references(kind: str, oid: str, payload: bytes) -> list[Reference]:
    if kind == "blob":
        return []
    if kind == "chunks":
        return [(c, CHUNK) for c, _ in ChunkList.parse(oid, payload).chunks]
    if kind == "tree":
        return [(e.id, TREE if e.is_dir else FILE) for e in Tree.parse(oid, payload).entries]
    value = unpack(oid, payload)
    if not isinstance(value, dict):
        raise IntegrityError(oid, f"{kind} {oid} is not a map; run 'cas fsck'")
    return map_references(kind, oid, value)


def map_references(kind: str, oid: str, value: Mapping[str, Any]) -> list[Reference]:
    """The ids a record (or another map object) decoded as ``value`` points at."""
    out: list[Reference] = []
    content = value.get("content_id")
    if content is not None:
        if not is_id(content):
            raise IntegrityError(oid, f"{kind} {oid} is malformed: content_id is not an id")
        out.append((ObjectId(content), TREE if value.get("content_kind") == "tree" else FILE))
    for key in ("target", "record"):  # catalog events name a record
        if is_id(value.get(key)):
            out.append((ObjectId(value[key]), RECORD))
    parents = value.get("parent_ids") or ()
    if not isinstance(parents, (list, tuple)) or not all(is_id(p) for p in parents):
        raise IntegrityError(oid, f"{kind} {oid} is malformed: parent_ids is not a list of ids")
    out.extend((ObjectId(pid), RECORD) for pid in parents)
    return out
