"""Every sub-database's content, decoded, for comparing two catalogs (live vs rebuilt)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import keys
from .record import unpack

if TYPE_CHECKING:
    from .engine import Txn


def dump(txn: Txn, dbs: dict[bytes, Any]) -> dict[str, Any]:
    """A plain-value picture of the whole catalog, in key order.

    Postings read ``[created_at, id]``; ids are hex; long (digested) terms ``#<hex>``.
    """
    out: dict[str, Any] = {}
    out["records"] = {k.hex(): unpack(v) for k, v in _items(txn, dbs[keys.RECORDS])}
    out["time"] = [_posting(k) for k, _ in _items(txn, dbs[keys.TIME])]
    for name in keys.POSTING_DBS:
        grouped: dict[str, list[Any]] = {}
        for k, v in _items(txn, dbs[name]):
            term = k.hex() if name in (keys.CHILDREN, keys.CONTENT) else keys.decode_term(k)
            grouped.setdefault(term, []).append(_posting(v))
        out[name.decode()] = grouped
    parents: dict[str, list[str]] = {}
    for k, v in _items(txn, dbs[keys.PARENTS]):
        parents.setdefault(k.hex(), []).append(v[2:].hex())
    out["parents"] = parents
    out["tombstones"] = {k.hex(): v.decode() for k, v in _items(txn, dbs[keys.TOMBSTONES])}
    stamps: dict[str, dict[str, Any]] = {}
    for k, v in _items(txn, dbs[keys.TAGSTAMPS]):
        id_hex = k[: keys.ID_BYTES].hex()
        stamps.setdefault(id_hex, {})[k[keys.ID_BYTES :].decode()] = unpack(v)
    out["tagstamps"] = stamps
    out["meta"] = {k.decode(): v.decode() for k, v in _items(txn, dbs[keys.META])}
    return out


def _items(txn: Txn, db: Any) -> list[tuple[bytes, bytes]]:
    return list(txn.cursor(db=db).iternext(keys=True, values=True))


def _posting(raw: bytes) -> list[str]:
    return [keys.created_at_of(raw), keys.posting_id(raw)]
