"""The three write operations, inside one LMDB write transaction: put, tag, delete.

They commute. Whatever order a set of events is applied in, the result is the same,
byte for byte, which is what makes ``rebuild`` exact:

- put: ignored when the id is tombstoned or already present (records are immutable);
  otherwise the tag events already seen for the id are laid over the record's tags.
- tag: per (id, key), the event with the highest ``(stamp, value)`` wins (``None``,
  meaning "removed", ranks below any string at an equal stamp); the winner is kept in
  ``tagstamps`` whether or not the record is present yet. A tombstoned id takes no tags.
- delete: the tombstone keeps the smallest stamp seen; the record, its index entries
  and its tag stamps go. Edges *to* it from its children stay: they belong to the
  children's records, exactly as an edge to a parent that has not synced yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import keys
from .record import Entry, IndexEntry, index_entries, pack, unpack

if TYPE_CHECKING:
    from .engine import Txn


def _rank(stamp: str, value: str | None) -> tuple[str, bool, str]:
    return (stamp, value is not None, value or "")


class Writer:
    """Index operations bound to one write transaction."""

    def __init__(self, txn: Txn, dbs: dict[bytes, Any]) -> None:
        self.txn = txn
        self.dbs = dbs
        self._records = dbs[keys.RECORDS]
        self._tombs = dbs[keys.TOMBSTONES]
        self._stamps = dbs[keys.TAGSTAMPS]
        # Changes are counted only while a mark is set (see keys: ``changes``).
        changes = dbs.get(keys.CHANGES)
        marked = changes is not None and txn.get(keys.MARK, db=changes) is not None
        self._changes = changes if marked else None

    def put(self, entry: Entry) -> bool:
        """Index a record; False when the id is tombstoned or already present."""
        txn, id_raw = self.txn, entry.id_raw
        if txn.get(id_raw, db=self._tombs) is not None:
            return False
        if txn.get(id_raw, db=self._records) is not None:
            return False
        changes = self._stamped(id_raw)
        if changes:
            entry = Entry(id_raw, entry.post, _with_tags(entry.record, changes))
        txn.put(id_raw, entry.encoded(), db=self._records)
        self._add(index_entries(entry))
        self._changed(b"p" + id_raw)
        return True

    def tag(self, id_raw: bytes, tags: dict[str, str | None], stamp: str) -> None:
        """Apply a tag event (last writer wins per key by ``stamp``)."""
        txn = self.txn
        if txn.get(id_raw, db=self._tombs) is not None:
            return
        won: dict[str, str | None] = {}
        for key, value in tags.items():
            skey = id_raw + key.encode()
            old = txn.get(skey, db=self._stamps)
            if old is not None:
                old_stamp, old_value = unpack(old)
                if _rank(stamp, value) <= _rank(old_stamp, old_value):
                    continue
            txn.put(skey, pack([stamp, value]), db=self._stamps)
            self._changed(b"t" + skey)
            won[key] = value
        if not won:
            return
        raw = txn.get(id_raw, db=self._records)
        if raw is None:
            return  # the record may arrive later; put() lays these stamps over it
        record = unpack(raw)
        updated = _with_tags(record, won)
        if updated["tags"] == record["tags"]:
            return
        post = keys.posting(record["created_at"], id_raw)
        before = index_entries(Entry(id_raw, post, record))
        after_entry = Entry(id_raw, post, updated)
        after = index_entries(after_entry)
        before_set, after_set = set(before), set(after)
        self._remove([e for e in before if e not in after_set])
        self._add([e for e in after if e not in before_set])
        txn.put(id_raw, pack(updated), db=self._records)

    def delete(self, id_raw: bytes, stamp: str) -> bool:
        """Tombstone an id; True when a record was present and is now removed."""
        txn = self.txn
        old = txn.get(id_raw, db=self._tombs)
        if old is None or stamp.encode() < old:
            txn.put(id_raw, stamp.encode(), db=self._tombs)
            self._changed(b"d" + id_raw)
        cur = txn.cursor(db=self._stamps)
        if cur.set_range(id_raw):
            while cur.key()[: keys.ID_BYTES] == id_raw:
                if not cur.delete():
                    break
        raw = txn.get(id_raw, db=self._records)
        if raw is None:
            return False
        record = unpack(raw)
        post = keys.posting(record["created_at"], id_raw)
        self._remove(index_entries(Entry(id_raw, post, record)))
        txn.delete(id_raw, db=self._records)
        return True

    def mark(self, label: str) -> None:
        """Count changes from now on against this state, called ``label`` (the
        changes counted so far are forgotten)."""
        changes = self.dbs[keys.CHANGES]
        self.txn.drop(changes, delete=False)
        self.txn.put(keys.MARK, label.encode(), db=changes)
        self._changes = changes

    def clear(self) -> None:
        """Empty every sub-database but ``meta`` (a mark goes too)."""
        for name in keys.ALL_DBS:
            if name != keys.META:
                self.txn.drop(self.dbs[name], delete=False)
        self._changes = None

    # -- helpers -----------------------------------------------------------------

    def _stamped(self, id_raw: bytes) -> dict[str, str | None]:
        """The tag-event winners already recorded for an id."""
        out: dict[str, str | None] = {}
        cur = self.txn.cursor(db=self._stamps)
        if not cur.set_range(id_raw):
            return out
        for skey, raw in cur:
            if skey[: keys.ID_BYTES] != id_raw:
                break
            out[skey[keys.ID_BYTES :].decode()] = unpack(raw)[1]
        return out

    def _changed(self, key: bytes) -> None:
        if self._changes is not None:
            self.txn.put(key, b"", db=self._changes)

    def _add(self, entries: list[IndexEntry]) -> None:
        txn, dbs = self.txn, self.dbs
        for db, key, value in entries:
            txn.put(key, value, db=dbs[db])

    def _remove(self, entries: list[IndexEntry]) -> None:
        txn, dbs = self.txn, self.dbs
        for db, key, value in entries:
            txn.delete(key, value, db=dbs[db])


def _with_tags(record: dict[str, Any], changes: dict[str, str | None]) -> dict[str, Any]:
    tags = dict(record["tags"])
    for key, value in changes.items():
        if value is None:
            tags.pop(key, None)
        else:
            tags[key] = value
    return {**record, "tags": dict(sorted(tags.items()))}
