"""``Catalog``: the LMDB index of artifact records, tags and lineage.

The catalog is an index, never the only copy: the caller keeps every put, tag and
delete event durably elsewhere and can replay them with ``rebuild``. Operations
commute (see ``cas.catalog.index``), so replaying the same events in any order yields the
same catalog, which ``dump()`` lets a test compare.

A ``Catalog`` may be shared by threads (calls are serialized per environment) and
opened by many processes on one machine at once: readers never block, a second writer
waits for LMDB's write lock.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import keys
from .dump import dump as _dump
from .engine import Engine
from .errors import CatalogError, InvalidInput
from .index import Writer
from .lineage import children_of, label, parents_of, render, walk
from .query import Query, parse_query
from .record import (
    Entry,
    check_event,
    check_id,
    check_stamp,
    check_tag_values,
    normalize,
)
from .record import unpack as _unpack
from .scan import AllStream, PrefixStream, Stream, TermStream, intersect

if TYPE_CHECKING:
    from .engine import Txn

T = TypeVar("T")
Record = dict[str, Any]
Records = list[Record]
#: Called with an event that does not validate, and why, when the caller skips those.
Refused = Callable[[Mapping[str, Any], InvalidInput], None]
Ids = list[str]
Names = list[str]
Streams = list[Stream]
Walk = tuple[list[bytes], list[tuple[bytes, bytes]]]
Event = Mapping[str, Any]

#: bytes a write is assumed to add per record, to grow the map ahead of big batches
BYTES_PER_RECORD = 4096
#: events per transaction during ``rebuild``
REBUILD_BATCH = 100_000
#: events (or, for records with much metadata, their estimated bytes over
#: ``BYTES_PER_RECORD``) per transaction of :meth:`Catalog.apply_stream`
STREAM_BATCH = 100_000
#: records a prefix-only ``list`` looks at, newest first, before it merges the
#: postings of every name under the prefix (which costs one read per name)
PREFIX_WALK = 256


class Catalog:
    """The artifact index at ``path`` (a directory; created if missing).

    ``map_size`` is the initial LMDB map in bytes (default 64 MiB, grown as needed);
    ``readonly=True`` opens an existing catalog for queries only.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int | None = None,
        readonly: bool = False,
        durable: bool = True,
    ) -> None:
        self._engine = Engine(path, map_size, readonly, durable)
        self.path = self._engine.path
        self.readonly = readonly

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r}{', readonly=True' if self.readonly else ''})"

    # -- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Close the catalog (the environment closes with its last user in the process)."""
        self._engine.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------

    def put(self, record: Mapping[str, Any]) -> bool:
        """Index one record in one transaction.

        Returns False when the id is already present or was deleted (deleted ids never
        come back). Raises ``InvalidInput`` for a malformed record.
        """
        entry = normalize(record)
        return self._write(lambda w: w.put(entry), 1)

    def put_many(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Index many records in one transaction; returns how many were new."""
        entries = [normalize(r) for r in records]
        return self._write(lambda w: sum(w.put(e) for e in entries), len(entries))

    def tag(self, id: str, tags: Mapping[str, str | None], stamp: str) -> None:
        """Set tags ``key=value`` on a record (``None`` removes the key).

        Last writer wins per key by ``stamp`` (a sortable text such as
        ``"<created_at>-<event id>"``), so events applied in any order give the same
        tags. Tags for an id not held yet are kept and apply when its record arrives;
        tags for a deleted id are ignored.
        """
        id_raw = check_id(id)
        values = check_tag_values(tags)
        when = check_stamp(stamp)
        self._write(lambda w: w.tag(id_raw, values, when), 0)

    def delete(self, id: str, stamp: str) -> bool:
        """Remove a record from every index and tombstone its id.

        Returns True when the record was present. The tombstone stays, so a later
        ``put`` of the same id is ignored (also when the delete arrives first).
        """
        id_raw = check_id(id)
        when = check_stamp(stamp)
        return self._write(lambda w: w.delete(id_raw, when), 0)

    def apply(self, events: Iterable[Event], *, refused: Refused | None = None) -> None:
        """Replay events in one transaction.

        Each event is ``{"op": "put", "record": {...}}``, ``{"op": "tag", "id": ...,
        "tags": {...}, "stamp": ...}`` or ``{"op": "delete", "id": ..., "stamp": ...}``.
        All are validated before anything is written: one that does not validate
        refuses them all, or with ``refused`` is handed to it and skipped.
        """
        checked = _checked(events, refused)
        if checked:
            self._write(lambda w: _apply(w, checked), len(checked))

    def apply_stream(
        self,
        batches: Iterable[Iterable[Event]],
        *,
        mark: str | None = None,
        refused: Refused | None = None,
    ) -> int:
        """Apply a stream of event batches in few big transactions (about
        :data:`STREAM_BATCH` events each), holding one batch in memory at a time: how a
        new catalog takes a checkpoint. Returns the events applied.

        ``refused``: called with each event that does not validate, which is skipped
        (without it, such an event refuses its whole batch).

        ``mark``: if the catalog was empty and the stream fit in one transaction, that
        transaction ends by marking (:meth:`mark`) what it made with this label: the
        catalog then holds exactly the stream, whatever other writers do around it.

        Each batch is validated before any of it is applied; a batch that does not
        validate raises ``InvalidInput``, and so does anything the stream raises, after
        the transactions before it committed (the events they applied are real ones and
        the state is a join: the caller may apply another source on top). One big
        transaction rather than one a batch keeps the file the size of what it holds:
        each commit copies every page it touches, so a new catalog filled 5,000 events
        at a time from a checkpoint of 100,000 records grew to 209 MiB and had all of
        it mapped (323 MiB peak RSS); in one transaction 109 MiB (183 MiB peak RSS,
        and 45 MiB once the environment is opened again, which frees the pages LMDB
        keeps: a search then maps what it reads).
        """
        stream = iter(batches)
        ahead = [next(stream, None)]  # the next batch: whether more comes is known
        need = STREAM_BATCH * BYTES_PER_RECORD

        def run(began: list[bool], txn: Txn) -> tuple[int, bool]:
            if began:  # the map filled up and LMDB undid this transaction: no replay
                raise CatalogError(
                    f"catalog {self.path}: a stream of events did not fit in the map; "
                    "run 'cas reindex'"
                )
            began.append(True)
            dbs = self._engine.shared.dbs
            writer = Writer(txn, dbs)
            empty = mark is not None and total == 0 and not any(
                txn.stat(dbs[name])["entries"] for name in (keys.RECORDS, keys.TOMBSTONES, keys.TAGSTAMPS)
            )  # fmt: skip
            count = weight = 0
            while ahead[0] is not None:
                if count >= STREAM_BATCH or weight >= need // 2:
                    return count, True
                checked = _checked(ahead[0], refused)
                _apply(writer, checked)
                count += len(checked)
                weight += sum(_weight(e) for e in checked)
                ahead[0] = next(stream, None)
            if empty and mark is not None:
                writer.mark(mark)
            return count, False

        total, more = 0, True
        while more:
            count, more = self._engine.write(partial(run, []), need=need)
            total += count
        if total >= STREAM_BATCH // 10:
            self._engine.reopen()  # LMDB's spare dirty pages: about 1 KiB a record
        return total

    def rebuild(self, events: Iterable[Event], *, refused: Refused | None = None) -> None:
        """Empty the catalog, then apply every event, in a few big transactions.

        Events may come in any order; deletes and tags are applied before puts, which
        yields the same catalog (operations commute) without re-indexing re-tagged
        records. Readers may see a partial catalog until it returns. ``refused``: as
        for :meth:`apply`.
        """
        checked = _checked(events, refused)
        # Deletes, then tags, then puts: tombstoned records are never indexed and
        # re-tagged ones are indexed once, with their final tags. Puts go oldest first
        # so that every index grows at one end (ids are content hashes: one id, one
        # record, so the order among puts cannot change the result).
        puts = [e for e in checked if e[0] == "put"]
        puts.sort(key=lambda e: e[1].post, reverse=True)
        checked = [e for e in checked if e[0] == "delete"] + [e for e in checked if e[0] == "tag"]
        checked += puts
        self._write(lambda w: w.clear(), 0)
        for start in range(0, len(checked), REBUILD_BATCH):
            batch = checked[start : start + REBUILD_BATCH]
            self._write(partial(_apply, events=batch), len(batch))

    # -- reads -------------------------------------------------------------------

    def get(self, id: str) -> Record | None:
        """The record as given, its ``tags`` as the tag events left them; None if absent."""
        id_raw = check_id(id)

        def run(txn: Txn) -> Record | None:
            raw = txn.get(id_raw, db=self._db(keys.RECORDS))
            return None if raw is None else _record(raw)

        return self._engine.read(run)

    def ids_with_prefix(self, prefix: str, limit: int = 2) -> builtins.list[str]:
        """Live record ids that start with the lowercase hex ``prefix`` (at most
        ``limit``, in key order): git's short ids."""
        if not prefix or len(prefix) > 64 or prefix.strip("0123456789abcdef"):
            return []
        low = bytes.fromhex(prefix.ljust(64, "0"))

        def run(txn: Txn) -> builtins.list[str]:
            found: builtins.list[str] = []
            with txn.cursor(db=self._db(keys.RECORDS)) as cur:
                if not cur.set_range(low):
                    return found
                for key in cur.iternext(keys=True, values=False):
                    text = bytes(key).hex()
                    if not text.startswith(prefix) or len(found) >= limit:
                        break
                    found.append(text)
            return found

        return self._engine.read(run)

    def state(self, id: str) -> str | None:
        """ "live" if the record is indexed, "deleted" if tombstoned, None if unknown."""
        id_raw = check_id(id)

        def run(txn: Txn) -> str | None:
            if txn.get(id_raw, db=self._db(keys.RECORDS)) is not None:
                return "live"
            if txn.get(id_raw, db=self._db(keys.TOMBSTONES)) is not None:
                return "deleted"
            return None

        return self._engine.read(run)

    def tombstone(self, id: str) -> str | None:
        """The stamp of the delete that tombstoned ``id`` (the earliest), or None."""
        id_raw = check_id(id)
        raw = self._engine.read(lambda txn: txn.get(id_raw, db=self._db(keys.TOMBSTONES)))
        return None if raw is None else bytes(raw).decode()

    def search(self, query: str, limit: int = 100) -> Records:
        """Records matching every term of ``query``, newest first (see ``cas.catalog.query``).

        ``stage:production team:fraud resnet``: two tag filters and one word. An empty
        query returns the newest records. Raises ``QueryError`` for a malformed query.
        """
        parsed = parse_query(query)
        return self._engine.read(lambda txn: self._fetch(txn, self._streams(txn, parsed), limit))

    def list(
        self,
        artifact_type: str | None = None,
        limit: int = 100,
        name: str | None = None,
        prefix: str | None = None,
    ) -> Records:
        """Records newest first, optionally only of one type, one exact name (all its
        versions) and/or names starting with ``prefix``."""

        def run(txn: Txn) -> Records:
            streams: list[Stream] = []
            if artifact_type is not None:
                streams.append(TermStream(txn, self._db(keys.TYPE), keys.term(artifact_type)))
            if name is not None:
                streams.append(TermStream(txn, self._db(keys.NAME), keys.term(name)))
            if prefix:
                if not streams:  # the newest under a folder are often the newest of all
                    found = self._newest_under(txn, prefix, limit, PREFIX_WALK)
                    if found is not None:
                        return found
                streams.append(PrefixStream(txn, self._db(keys.NAME), prefix.encode()))
            if not streams:
                streams.append(AllStream(txn, self._db(keys.TIME)))
            return self._fetch(txn, streams, limit)

        return self._engine.read(run)

    def by_content(self, content_id: str, limit: int = 100) -> Records:
        """Records whose content is ``content_id`` (the same bytes saved under other
        names or again), newest first."""
        raw = check_id(content_id, "content id")
        return self._engine.read(
            lambda txn: self._fetch(txn, [TermStream(txn, self._db(keys.CONTENT), raw)], limit)
        )

    def has_name(self, name: str) -> bool:
        """True if a live record has exactly this name."""
        raw = name.encode()
        return bool(self._engine.read(lambda txn: txn.cursor(db=self._db(keys.NAME)).set_key(raw)))

    def names(self, prefix: str = "") -> Names:
        """The distinct names of live records starting with ``prefix``, sorted."""
        raw_prefix = prefix.encode()

        def run(txn: Txn) -> list[str]:
            cur = txn.cursor(db=self._db(keys.NAME))
            out: list[str] = []
            found = cur.set_range(raw_prefix)
            while found:
                k = cur.key()
                if not k.startswith(raw_prefix):
                    break
                out.append(k.decode())
                found = cur.next_nodup()
            return out

        return self._engine.read(run)

    # -- lineage -----------------------------------------------------------------

    def parents(self, id: str) -> Ids:
        """The parent ids of a record, in the order its ``parent_ids`` gave them."""
        id_raw = check_id(id)
        db = self._db(keys.PARENTS)
        return self._engine.read(lambda txn: [p.hex() for p in parents_of(txn, db, id_raw)])

    def children(self, id: str) -> Ids:
        """The ids of the records naming ``id`` as a parent, newest first."""
        id_raw = check_id(id)
        db = self._db(keys.CHILDREN)
        return self._engine.read(lambda txn: [c.hex() for c in children_of(txn, db, id_raw)])

    def ancestors(self, id: str, depth: int | None = None) -> Ids:
        """Parents, their parents, ... up to ``depth`` generations (None: all), nearest first."""
        id_raw = check_id(id)
        return self._engine.read(lambda txn: _hex(self._walk(txn, id_raw, up=True, depth=depth)[0]))

    def descendants(self, id: str, depth: int | None = None) -> Ids:
        """Children, their children, ... up to ``depth`` generations (None: all)."""
        id_raw = check_id(id)
        return self._engine.read(
            lambda txn: _hex(self._walk(txn, id_raw, up=False, depth=depth)[0])
        )

    def lineage(self, id: str, depth: int | None = 1) -> dict[str, Ids]:
        """``{"parents": [...], "children": [...]}`` to ``depth`` (None: transitive)."""
        id_raw = check_id(id)

        def run(txn: Txn) -> dict[str, Ids]:
            up = self._walk(txn, id_raw, up=True, depth=depth)[0]
            down = self._walk(txn, id_raw, up=False, depth=depth)[0]
            return {"parents": _hex(up), "children": _hex(down)}

        return self._engine.read(run)

    def lineage_graph(self, id: str, format: str = "mermaid", depth: int | None = None) -> str:
        """The lineage around a record as Mermaid (``graph LR``) or Graphviz dot text.

        Nodes read the name, the first 12 hex digits of the id and the type; ids the
        catalog does not hold read ``(not in catalog)``. Edges point parent -> child.
        """
        id_raw = check_id(id)
        if format not in ("mermaid", "dot"):
            raise ValueError(f"lineage format must be 'mermaid' or 'dot', got {format!r}")

        def run(txn: Txn) -> str:
            up, up_edges = self._walk(txn, id_raw, up=True, depth=depth)
            down, down_edges = self._walk(txn, id_raw, up=False, depth=depth)
            nodes = list(dict.fromkeys([id_raw, *up, *down]))
            edges = list(dict.fromkeys([(p, c) for c, p in up_edges] + down_edges))
            db = self._db(keys.RECORDS)
            labels = {}
            for n in nodes:
                raw = txn.get(n, db=db)
                labels[n] = label(None if raw is None else _unpack(raw), n)
            return render(format, id_raw, nodes, edges, labels)

        return self._engine.read(run)

    # -- whole-catalog views -----------------------------------------------------

    def ids(self) -> builtins.list[str]:
        """Every live record's id (gc marks from these), in key order."""

        def run(txn: Txn) -> builtins.list[str]:
            with txn.cursor(db=self._db(keys.RECORDS)) as cur:
                return [bytes(k).hex() for k in cur.iternext(keys=True, values=False)]

        return self._engine.read(run)

    def tombstones(self) -> dict[str, str]:
        """Every deleted id with its delete stamp (gc keeps these within retention)."""

        def run(txn: Txn) -> dict[str, str]:
            with txn.cursor(db=self._db(keys.TOMBSTONES)) as cur:
                return {bytes(k).hex(): bytes(v).decode() for k, v in cur}

        return self._engine.read(run)

    def tag_stamps(self) -> dict[str, dict[str, tuple[str, str | None]]]:
        """For each id, the winning ``(stamp, value)`` of each tag key set by an event
        (``None``: removed); checkers compare the stamps with the events that exist."""

        def run(txn: Txn) -> dict[str, dict[str, tuple[str, str | None]]]:
            out: dict[str, dict[str, tuple[str, str | None]]] = {}
            with txn.cursor(db=self._db(keys.TAGSTAMPS)) as cur:
                for k, v in cur:
                    raw = bytes(k)
                    stamp, value = _unpack(bytes(v))
                    key = raw[keys.ID_BYTES :].decode()
                    out.setdefault(raw[: keys.ID_BYTES].hex(), {})[key] = (stamp, value)
            return out

        return self._engine.read(run)

    def export(
        self, sink: Callable[[builtins.list[Any]], None], *, mark: str | None = None
    ) -> dict[str, int]:
        """Hand the catalog's whole state to ``sink`` as compact items, from one
        transaction (a consistent snapshot), in the order a replay wants them: each
        tombstone ``["d", id, stamp]``, each tag key set by an event
        ``["t", id, key, stamp, value or None]``, each record ``["p", record msgpack]``.
        :func:`item_event` turns an item back into an event; applying them all to an
        empty catalog gives the same :meth:`dump` (the state is a join of its events,
        so applying them to any catalog adds exactly what they hold). Returns counts.

        ``mark``: first :meth:`mark` the state with this label, so that
        :meth:`export_changes` later hands out what changed since. A change that lands
        between the mark and the snapshot is in both: harmless, they add up as a join.
        """
        if mark is not None:
            self.mark(mark)

        def run(txn: Txn) -> dict[str, int]:
            counts = {"tombstones": 0, "tags": 0, "records": 0}
            with txn.cursor(db=self._db(keys.TOMBSTONES)) as cur:
                for k, v in cur:
                    sink(["d", bytes(k).hex(), bytes(v).decode()])
                    counts["tombstones"] += 1
            with txn.cursor(db=self._db(keys.TAGSTAMPS)) as cur:
                for k, v in cur:
                    sink(_tag_item(bytes(k), bytes(v)))
                    counts["tags"] += 1
            with txn.cursor(db=self._db(keys.RECORDS)) as cur:
                for _, v in cur:
                    sink(["p", bytes(v)])
                    counts["records"] += 1
            return counts

        return self._engine.read(run)

    # -- changes since a mark (incremental checkpoints) ------------------------------

    def mark(self, label: str) -> None:
        """Count changes from now on against the present state, called ``label``: each
        record put, tag key won and tombstone written (the ones counted so far are
        forgotten). The caller marks a state it knows by that label elsewhere (a
        checkpoint this catalog was filled from, or exported with ``mark``)."""
        self._engine.write(lambda txn: Writer(txn, self._engine.shared.dbs).mark(label))

    def marked(self) -> str | None:
        """The label of the state changes are counted from, or None."""

        return self._engine.read(self._mark_in)

    def _mark_in(self, txn: Txn) -> str | None:
        """The mark's label as ``txn`` sees it (a format 2 catalog read-only has none)."""
        db = self._engine.shared.dbs.get(keys.CHANGES)
        raw = None if db is None else txn.get(keys.MARK, db=db)
        return None if raw is None else bytes(raw).decode()

    def relabel(self, old: str, new: str) -> bool:
        """Call the marked state ``new`` if it is still called ``old`` (True if so)."""

        def run(txn: Txn) -> bool:
            if self._mark_in(txn) != old:
                return False
            txn.put(keys.MARK, new.encode(), db=self._db(keys.CHANGES))
            return True

        return self._engine.write(run)

    def changed(self, label: str) -> int | None:
        """How many changes were counted since the state ``label`` was marked; None if
        changes are not counted from that state."""

        def run(txn: Txn) -> int | None:
            if self._mark_in(txn) != label:
                return None
            return int(txn.stat(self._db(keys.CHANGES))["entries"]) - 1

        return self._engine.read(run)

    def export_changes(
        self, sink: Callable[[builtins.list[Any]], None], label: str
    ) -> dict[str, int] | None:
        """Hand ``sink`` the items (as :meth:`export`'s) of what changed since the state
        ``label`` was marked, as they are now: that state and these items add up to
        the catalog (a join). None, and nothing handed out, if changes are not
        counted from that state."""

        def run(txn: Txn) -> dict[str, int] | None:
            if self._mark_in(txn) != label:
                return None
            db = self._db(keys.CHANGES)
            counts = {"tombstones": 0, "tags": 0, "records": 0}
            tombs, stamps = self._db(keys.TOMBSTONES), self._db(keys.TAGSTAMPS)
            records = self._db(keys.RECORDS)
            with txn.cursor(db=db) as cur:
                for k in cur.iternext(keys=True, values=False):
                    key = bytes(k)
                    kind, rest = key[:1], key[1:]
                    if kind == b"d" and (stamp := txn.get(rest, db=tombs)) is not None:
                        sink(["d", rest.hex(), bytes(stamp).decode()])
                        counts["tombstones"] += 1
                    elif kind == b"t" and (won := txn.get(rest, db=stamps)) is not None:
                        sink(_tag_item(rest, bytes(won)))  # gone: its id was deleted since
                        counts["tags"] += 1
                    elif kind == b"p" and (raw := txn.get(rest, db=records)) is not None:
                        sink(["p", bytes(raw)])  # gone: deleted since
                        counts["records"] += 1
            return counts

        return self._engine.read(run)

    def dump(self) -> dict[str, Any]:
        """Every sub-database's full content, decoded (for equality tests)."""
        return self._engine.read(lambda txn: _dump(txn, self._engine.shared.dbs))

    def stats(self) -> dict[str, Any]:
        """Counts (records, tombstones, entries per index) and the map's size and use."""

        def run(txn: Txn) -> dict[str, Any]:
            dbs = self._engine.shared.dbs  # a format 2 catalog opened read-only has no changes
            entries = {
                n.decode(): int(txn.stat(dbs[n])["entries"]) for n in keys.ALL_DBS if n in dbs
            }
            return {
                "records": entries["records"],
                "tombstones": entries["tombstones"],
                "entries": entries,
            }

        out = self._engine.read(run)
        out.update(self._engine.info())
        return out

    # -- helpers -----------------------------------------------------------------

    def _db(self, name: bytes) -> Any:
        return self._engine.db(name)

    def _write(self, fn: Callable[[Writer], T], records: int) -> T:
        engine = self._engine
        return engine.write(
            lambda txn: fn(Writer(txn, engine.shared.dbs)), need=records * BYTES_PER_RECORD
        )

    def _streams(self, txn: Txn, query: Query) -> Streams:
        streams: list[Stream] = [
            TermStream(txn, self._db(keys.TAG), keys.tag_term(k, v)) for k, v in query.tags
        ]
        streams += [TermStream(txn, self._db(keys.TOKEN), w.encode()) for w in query.words]
        return streams or [AllStream(txn, self._db(keys.TIME))]

    def _fetch(self, txn: Txn, streams: Streams, limit: int) -> Records:
        _check_limit(limit)
        db = self._db(keys.RECORDS)
        out: Records = []
        for post in intersect(streams, limit):
            raw = txn.get(post[8:], db=db)
            if raw is None:  # an index entry without its record: never written so
                raise CatalogError(f"catalog {self.path} is inconsistent; rebuild it")
            out.append(_record(raw))
        return out

    def _newest_under(self, txn: Txn, prefix: str, limit: int, budget: int) -> Records | None:
        """The ``limit`` newest records whose name starts with ``prefix``, found among
        the ``budget`` newest records of all, or None when these hold fewer (the
        caller then merges the names' postings, whose cost grows with the names under
        the prefix: a save into a folder of 10,000 names asking for its 16 newest
        siblings read all 10,000)."""
        _check_limit(limit)
        out: Records = []
        if limit == 0:
            return out
        raw_prefix = prefix.encode()
        records = self._db(keys.RECORDS)
        cur = txn.cursor(db=self._db(keys.TIME))
        found = cur.first()
        for _ in range(budget):
            if not found:
                return out  # every record looked at
            raw = txn.get(cur.key()[8:], db=records)
            if raw is None:
                raise CatalogError(f"catalog {self.path} is inconsistent; rebuild it")
            if raw_prefix in raw:  # cheap before decoding: the name holds the prefix
                record = _record(raw)
                if str(record.get("name") or "").startswith(prefix):
                    out.append(record)
                    if len(out) >= limit:
                        return out
            found = cur.next()
        return out if not found else None

    def _walk(self, txn: Txn, id_raw: bytes, *, up: bool, depth: int | None) -> Walk:
        if up:
            db = self._db(keys.PARENTS)
            return walk(id_raw, lambda n: parents_of(txn, db, n), depth)
        db = self._db(keys.CHILDREN)
        return walk(id_raw, lambda n: children_of(txn, db, n), depth)


def _checked(events: Iterable[Event], refused: Refused | None) -> list[tuple[str, Any]]:
    """Each event validated; one that does not raises, or goes to ``refused``."""
    if refused is None:
        return [check_event(e) for e in events]
    out = []
    for event in events:
        try:
            out.append(check_event(event))
        except InvalidInput as exc:
            refused(event, exc)
    return out


def _tag_item(key: bytes, value: bytes) -> list[Any]:
    """The export item of one ``tagstamps`` entry."""
    stamp, won = _unpack(value)
    return ["t", key[: keys.ID_BYTES].hex(), key[keys.ID_BYTES :].decode(), stamp, won]


def _weight(event: tuple[str, Any]) -> int:
    """What an event may add to the file, a record's indexes counted generously."""
    return len(event[1].encoded()) + 1024 if event[0] == "put" else 512


def _apply(writer: Writer, events: list[tuple[str, Any]]) -> None:
    for op, payload in events:
        if op == "put":
            entry: Entry = payload
            writer.put(entry)
        elif op == "tag":
            writer.tag(*payload)
        else:
            writer.delete(*payload)


def item_event(item: Any) -> dict[str, Any]:
    """The event an item of :meth:`Catalog.export` stands for (``InvalidInput`` if it
    is not one: the caller read it from a file that may be damaged)."""
    if isinstance(item, list) and item:
        if item[0] == "d" and len(item) == 3:
            return {"op": "delete", "id": item[1], "stamp": item[2]}
        if item[0] == "t" and len(item) == 5 and isinstance(item[2], str):
            return {"op": "tag", "id": item[1], "tags": {item[2]: item[4]}, "stamp": item[3]}
        if item[0] == "p" and len(item) == 2 and isinstance(item[1], bytes):
            return {"op": "put", "record": _unpack(item[1])}
    raise InvalidInput(f"not a catalog export item: {item!r:.80}")


def _check_limit(limit: object) -> None:
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int, got {limit!r}")


def _record(raw: bytes) -> Record:
    rec: Record = _unpack(raw)
    return rec


def _hex(ids: list[bytes]) -> Ids:
    return [i.hex() for i in ids]
