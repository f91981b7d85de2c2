"""Object ids: the one place where text becomes an id and an id becomes a hash.

A blob's id is the plain BLAKE3 of its bytes, the same hex that ``b3sum`` prints, however
the blob is stored. Every other kind is hashed in BLAKE3's derive-key mode under its own
context string over its canonical msgpack bytes, so no object of one kind can pose as
another (a tree can never be mistaken for a blob with the same bytes).
"""

from __future__ import annotations

import re
from typing import Final

import blake3

from cas.errors import IntegrityError, InvalidId, shown

ID_HEX_LEN: Final = 64
_ID_RE: Final = re.compile(r"[0-9a-f]{64}\Z")

#: Derive-key contexts, one per structured kind. Changing one changes every id of that
#: kind: they are part of the on-disk format (docs/format.md).
CONTEXTS: Final[dict[str, str]] = {
    "tree": "cas 2026-11-23 tree v1",
    "record": "cas 2026-11-23 record v1",
    "event": "cas 2026-11-23 event v1",
}

#: Inputs above this size are hashed with every core (BLAKE3 releases the GIL).
_THREADED_HASH_MIN: Final = 1 << 20


class ObjectId(str):
    """A validated 64-character lowercase hex id. Build one with :func:`parse_id`."""

    __slots__ = ()

    @property
    def short(self) -> str:
        return self[:12]


def is_id(text: object) -> bool:
    """True if ``text`` is a well-formed id (no exception, for dispatch on name-or-id)."""
    return isinstance(text, str) and _ID_RE.match(text) is not None


def parse_id(text: str) -> ObjectId:
    """Validate ``text`` as an id; raise :class:`InvalidId` naming it otherwise."""
    if isinstance(text, ObjectId):
        return text
    if not is_id(text):
        raise InvalidId(f"not an object id (64 lowercase hex characters): {shown(text, 80)}")
    return ObjectId(text)


def blob_hasher() -> blake3.blake3:
    """An incremental hasher for blob content (plain BLAKE3, as ``b3sum``)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def blob_id(data: bytes | bytearray | memoryview, *, threads: bool = True) -> ObjectId:
    """The id of a blob with these bytes: ``b3sum`` of them. ``threads=False`` on a
    worker that is already one of a pool of one thread per core."""
    if threads and len(data) >= _THREADED_HASH_MIN:
        hasher = blake3.blake3(data, max_threads=blake3.blake3.AUTO)
    else:
        hasher = blake3.blake3(data)
    return ObjectId(hasher.hexdigest())


def kind_id(kind: str, payload: bytes) -> ObjectId:
    """The id of a structured object: BLAKE3 derive-key under the kind's context."""
    try:
        context = CONTEXTS[kind]
    except KeyError:
        raise ValueError(f"no hashing context for object kind {kind!r}") from None
    return ObjectId(blake3.blake3(payload, derive_key_context=context).hexdigest())


def verify(oid: ObjectId, kind: str, payload: bytes | memoryview) -> None:
    """Raise :class:`IntegrityError` naming ``oid`` unless ``payload`` (of ``kind``, not
    a chunk list) hashes to it: the check every read makes."""
    got = blob_id(payload) if kind == "blob" else kind_id(kind, bytes(payload))
    if got != oid:
        raise IntegrityError(
            oid,
            f"object {oid} is corrupt (expected blake3 {oid[:12]}…, got {got[:12]}…); "
            "run 'cas fsck' to list affected artifacts",
        )
