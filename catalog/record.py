"""Records and events as plain values: validation, search words, and index entries.

The catalog never computes ids: a record arrives as a mapping whose ``id`` the caller
derived. This module checks its shape once, at the boundary, and turns it into the
exact list of index entries the engine writes (and removes, on delete or re-tag).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import msgpack

from . import keys
from .errors import InvalidInput

REQUIRED = ("id", "name", "artifact_type", "content_id", "size", "created_at")
DEFAULTS: dict[str, Any] = {
    "tags": {},
    "parent_ids": [],
    "source_project": None,
    "source_pipeline": None,
    "source_run_id": None,
    "source_step": None,
    "metadata": {},
}
MAX_NAME_BYTES = keys.MAX_TERM
MAX_TAG_KEY_BYTES = 256  # id (32) + key must fit LMDB's 511-byte key limit
MAX_PARENTS = 0xFFFF
MAX_WORD = 64  # longer words are indexed (and searched) by their first 64 characters
MAX_WORDS = 256  # distinct search words indexed per record
MAX_DEPTH = 8  # how deep metadata is walked for words

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z\Z")
_SPLIT = re.compile(r"[\W_]+")

# (sub-database, key, value): one entry of one index
IndexEntry = tuple[bytes, bytes, bytes]


def pack(value: Any) -> bytes:
    """msgpack bytes of a value (str as str, bytes as bin)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(raw: bytes) -> Any:
    """A value from msgpack bytes (maps may have non-string keys, as metadata can)."""
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


def check_id(value: object, what: str = "id") -> bytes:
    """The 32 raw bytes of a 64-character lowercase hex id, or ``InvalidInput``."""
    if isinstance(value, str) and len(value) == 64:
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            pass
        else:  # fromhex also takes uppercase and spaces: only canonical text round-trips
            if raw.hex() == value:
                return raw
    raise InvalidInput(f"{what} must be 64 lowercase hex characters, got {value!r:.80}")


def check_stamp(value: object) -> str:
    """An event stamp: a non-empty string compared as text (later sorts higher)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"an event stamp must be a non-empty string, got {value!r:.80}")
    return value


def check_tag_key(key: object) -> str:
    """A tag key: a non-empty string of UTF-8 text without NUL, at most 256 bytes."""
    if not isinstance(key, str) or not key or "\0" in key:
        raise InvalidInput(f"a tag key must be a non-empty string without NUL, got {key!r:.80}")
    raw = utf8(key)
    if raw is None:
        raise InvalidInput(f"tag key {key[:40]!r} is not UTF-8 text (it holds a lone surrogate)")
    if len(raw) > MAX_TAG_KEY_BYTES:
        raise InvalidInput(f"tag key {key[:40]!r}... is longer than {MAX_TAG_KEY_BYTES} bytes")
    return key


def utf8(text: str) -> bytes | None:
    """``text`` in UTF-8, or None if it cannot be (a lone surrogate: ``"\\ud800"``)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


def words(text: str) -> list[str]:
    """The search words of a text: lowercase runs of letters and digits.

    Every other character splits (``_ - . /``, whitespace, punctuation), so
    ``models/fraud_detector`` gives ``models``, ``fraud``, ``detector``.
    """
    return [w[:MAX_WORD] for w in _SPLIT.split(text.lower()) if w]


class Entry:
    """A validated record: its raw id, its posting, and the record dict itself."""

    __slots__ = ("id_raw", "packed", "post", "record")

    def __init__(
        self, id_raw: bytes, post: bytes, record: dict[str, Any], packed: bytes | None = None
    ) -> None:
        self.id_raw = id_raw
        self.post = post
        self.record = record
        self.packed = packed  # msgpack of ``record``, when already computed

    def encoded(self) -> bytes:
        """The record's msgpack bytes (computed once)."""
        if self.packed is None:
            self.packed = pack(self.record)
        return self.packed

    @property
    def id(self) -> str:
        return self.id_raw.hex()


def normalize(record: object) -> Entry:
    """Check a record and return it ready to index, or raise ``InvalidInput``.

    Keys are kept in the order given, extra keys verbatim; the optional keys missing
    from it are added with their defaults; ``tags`` are sorted by key so that the
    stored bytes do not depend on the order tag events arrived in.
    """
    if not _is_map(record):
        raise InvalidInput(f"a record must be a mapping, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise InvalidInput(f"record {record.get('id', '?')!r:.70} lacks {', '.join(missing)}")
    id_raw = check_id(record["id"], "record id")
    rid = record["id"]
    out: dict[str, Any] = dict(record)
    if set(map(type, out)) != {str}:
        bad = next(k for k in out if not isinstance(k, str))
        raise InvalidInput(f"record {rid}: keys must be strings, got {bad!r:.40}")
    for k, default in DEFAULTS.items():
        if out.get(k) is None:
            out[k] = default if not isinstance(default, (dict, list)) else type(default)()
    _check_text(rid, "name", out["name"], MAX_NAME_BYTES)
    _check_text(rid, "artifact_type", out["artifact_type"], MAX_NAME_BYTES)
    if out["content_id"] is not None:  # None: registered without data (metadata only)
        check_id(out["content_id"], f"record {rid}: content_id")
    size = out["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"record {rid}: size must be a non-negative int, got {size!r:.40}")
    created = out["created_at"]
    if not isinstance(created, str) or not _CREATED_AT.match(created):
        raise InvalidInput(
            f"record {rid}: created_at must read YYYY-MM-DDTHH:MM:SS.ffffffZ, got {created!r:.40}"
        )
    try:
        post = keys.posting(created, id_raw)
    except ValueError as exc:
        raise InvalidInput(f"record {rid}: created_at {created!r} is not a date: {exc}") from exc
    out["tags"] = _check_tags(rid, out["tags"])
    out["parent_ids"] = _check_parents(rid, out["parent_ids"])
    for k in ("source_project", "source_pipeline", "source_run_id", "source_step"):
        if out[k] is not None and not isinstance(out[k], str):
            raise InvalidInput(f"record {rid}: {k} must be a string or None")
    if not _is_map(out["metadata"]):
        raise InvalidInput(f"record {rid}: metadata must be a mapping")
    try:
        packed = pack(out)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"record {rid}: not msgpack-able: {exc}") from exc
    return Entry(id_raw, post, out, packed)


def _is_map(value: object) -> TypeGuard[Mapping[Any, Any]]:
    return type(value) is dict or isinstance(value, Mapping)


def _check_text(rid: str, key: str, value: object, max_bytes: int) -> None:
    if not isinstance(value, str) or not value or "\0" in value:
        raise InvalidInput(f"record {rid}: {key} must be a non-empty string without NUL")
    raw = utf8(value)
    if raw is None:
        raise InvalidInput(f"record {rid}: {key} is not UTF-8 text (it holds a lone surrogate)")
    if len(raw) > max_bytes:
        raise InvalidInput(f"record {rid}: {key} is longer than {max_bytes} bytes")


def _check_tags(rid: str, tags: object) -> dict[str, str]:
    if not _is_map(tags):
        raise InvalidInput(f"record {rid}: tags must be a mapping of str to str")
    for k, v in tags.items():
        check_tag_key(k)
        if not isinstance(v, str):
            raise InvalidInput(f"record {rid}: tag {k!r} must have a string value, got {v!r:.40}")
    return dict(sorted(tags.items()))


def _check_parents(rid: str, parents: object) -> list[str]:
    if type(parents) is not list and (
        isinstance(parents, (str, bytes)) or not isinstance(parents, Sequence)
    ):
        raise InvalidInput(f"record {rid}: parent_ids must be a list of ids")
    if len(parents) > MAX_PARENTS:
        raise InvalidInput(f"record {rid}: more than {MAX_PARENTS} parents")
    for p in parents:
        check_id(p, f"record {rid}: parent id")
    return list(parents)


def record_words(record: Mapping[str, Any]) -> list[str]:
    """The distinct search words of a record, at most ``MAX_WORDS``.

    From its name, type, tag values (sorted by key) and string metadata values (nested
    mappings and lists included), in that order.
    """
    return [w.decode() for w in word_keys(record)]


def word_keys(record: Mapping[str, Any]) -> list[bytes]:
    """``record_words`` as UTF-8 keys for the token index (the hot path of indexing)."""
    texts: list[str] = [record["name"], record["artifact_type"], *record["tags"].values()]
    _strings(record["metadata"], 0, texts)
    text = " ".join(texts)
    if text.isascii():  # same split as ``words``, done by a byte table: 3x faster
        found = dict.fromkeys(text.encode().translate(_ASCII_WORDS).split())
        if max(map(len, found), default=0) > MAX_WORD:
            found = dict.fromkeys(w[:MAX_WORD] for w in found)
    else:
        found = dict.fromkeys(w[:MAX_WORD].encode() for w in _SPLIT.split(text.lower()) if w)
    return list(found)[:MAX_WORDS]


# ASCII letters and digits to lowercase, every other byte to a space
_ASCII_WORDS = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122) else 32 for c in range(256)
)


def _strings(value: Any, depth: int, out: list[str]) -> None:
    """Append the strings inside a metadata value (depth-first, in order) to ``out``."""
    if depth > MAX_DEPTH:
        return
    items = value.values() if _is_map(value) else value
    for v in items:
        kind = type(v)
        if kind is str:
            out.append(v)
        elif kind in (int, float, bool) or v is None:
            continue
        elif isinstance(v, str):
            out.append(str(v))
        elif _is_map(v) or isinstance(v, (list, tuple)):
            _strings(v, depth + 1, out)


_SOURCES = (
    (keys.RUN, "source_run_id"),
    (keys.PIPELINE, "source_pipeline"),
    (keys.STEP, "source_step"),
)


def index_entries(entry: Entry) -> list[IndexEntry]:
    """Every index entry a record contributes (the ``records`` row aside), no repeats."""
    rec, post, id_raw = entry.record, entry.post, entry.id_raw
    out: list[IndexEntry] = [
        (keys.TIME, post, b""),
        (keys.NAME, rec["name"].encode(), post),
        (keys.TYPE, rec["artifact_type"].encode(), post),
    ]
    out += [(keys.TAG, keys.tag_term(k, v), post) for k, v in rec["tags"].items()]
    out += [(keys.TOKEN, w, post) for w in word_keys(rec)]
    for db, field in _SOURCES:
        value = rec[field]
        if value is not None:
            out.append((db, keys.term(value), post))
    if rec.get("content_id"):
        out.append((keys.CONTENT, bytes.fromhex(rec["content_id"]), post))
    parents = rec["parent_ids"]
    if not parents:
        return out
    seen: set[str] = set()
    for parent in rec["parent_ids"]:
        if parent in seen:
            continue
        praw = bytes.fromhex(parent)
        out.append((keys.PARENTS, id_raw, keys.parent_value(len(seen), praw)))
        out.append((keys.CHILDREN, praw, post))
        seen.add(parent)
    return out


def check_event(event: object) -> tuple[str, Any]:
    """Validate one event; return ``(op, payload)`` for the engine.

    ``put`` -> ``Entry``; ``tag`` -> ``(id_raw, {key: value or None}, stamp)``;
    ``delete`` -> ``(id_raw, stamp)``.
    """
    if not isinstance(event, Mapping):
        raise InvalidInput(f"an event must be a mapping, got {type(event).__name__}")
    op = event.get("op")
    if op == "put":
        return op, normalize(event.get("record"))
    if op == "tag":
        return op, (
            check_id(event.get("id"), "tag event id"),
            check_tag_values(event.get("tags")),
            check_stamp(event.get("stamp")),
        )
    if op == "delete":
        return op, (check_id(event.get("id"), "delete event id"), check_stamp(event.get("stamp")))
    raise InvalidInput(f"an event's op must be 'put', 'tag' or 'delete', got {op!r:.40}")


def check_tag_values(tags: object) -> dict[str, str | None]:
    """Tags of a tag event: str keys to str values, ``None`` meaning "remove"."""
    if not isinstance(tags, Mapping):
        raise InvalidInput("tags must be a mapping of str to str (or None to remove)")
    out: dict[str, str | None] = {}
    for k, v in tags.items():
        check_tag_key(k)
        if v is not None and not isinstance(v, str):
            raise InvalidInput(f"tag {k!r} must have a string value or None, got {v!r:.40}")
        if v is not None and utf8(v) is None:
            raise InvalidInput(f"tag {k!r}: its value is not UTF-8 text (a lone surrogate)")
        out[k] = v
    return out
