"""Repository: storage, object space, names, catalog journal and local catalog of one
root, and the operations that need them together.

A save is ``commit(record)``: the record object; the claim of the name's next history
entry (compare-and-swap); the journal entry; the name; the record indexed, in that
order, so nothing is visible before the claim is won (a crash before leaves an
unreferenced object that gc collects) and a crash after it is rolled forward whole by
the next writer of the name or fsck. Every error raised here is in
cas's tree (:mod:`cas.errors`); the leaves' own are translated at :mod:`cas.repo.names`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from cas import catalog as _catalog
from cas.errors import InvalidInput, ObjectNotFound, RefConflict
from cas.objects.ids import ObjectId, is_id, parse_id
from cas.objects.kinds import pack, unpack
from cas.objects.space import ObjectSpace
from cas.refs import ANY
from cas.repo.journal import Journal
from cas.repo.local_catalog import LocalCatalog, index_dir, rebuild
from cas.repo.names import Names, check_name
from cas.repo.records import FIELDS, check_record, make_record
from cas.repo.segments import Pending
from cas.storage import Storage, open_storage

T = TypeVar("T")

#: Records as saved that a repository keeps after reading them from their objects.
SAVED_RECORDS = 4096

#: "The caller has not read the name": :meth:`Repository.prepare` reads it.
UNREAD: Any = type("Unread", (), {"__repr__": lambda self: "UNREAD"})()


class Repository:
    """One root: ``storage``, ``space`` (objects), ``names`` (refs), ``journal`` and the
    local ``index`` (opened and caught up with the journal on first use).

    ``fsync=True`` makes every write durable before it is visible; ``create=False``
    refuses a root that is not a cas store yet.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        fsync: bool = True,
        create: bool = True,
        **storage_options: Any,
    ) -> None:
        self.storage: Storage = open_storage(url, fsync=fsync, **storage_options)
        self.space = ObjectSpace(self.storage, create=create)
        self.journal = Journal(self.storage)
        self.names = Names(self.storage, fsync=fsync, before_publish=self._journal_put)
        # Records this process is publishing -> the stamp of their journal entry, once
        # written (between the claim of the name and its publish: ``_journal_put``).
        self._publishing: dict[str, str | None] = {}
        self._publishing_lock = threading.Lock()
        self._index: LocalCatalog | None = None
        self._unsynced: LocalCatalog | None = None  # opened for a hint, not caught up yet
        self._saved: dict[str, dict[str, Any]] = {}  # records as saved, read from objects
        self._index_lock = threading.Lock()  # threads share one repository
        # On an object store the events this process journals are also written in
        # segments, so other machines catch up with them in one GET each.
        self._segment = None if self.storage.local_dir is not None else Pending(self.journal)

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def index(self) -> LocalCatalog:
        """The local catalog, opened (and caught up with the journal) on first use."""
        if self._index is None:
            self._open_index(full=False)
        assert self._index is not None
        return self._index

    def _local_catalog(self) -> LocalCatalog:
        """This machine's catalog of the root, caught up or not (no request)."""
        if self._index is not None:
            return self._index
        with self._index_lock:
            if self._index is None and self._unsynced is None:
                self._unsynced = LocalCatalog(self.space, self.journal)
        return self._index or self._unsynced

    def _keep(self, record: dict[str, Any]) -> None:
        """Remember a record as saved (it never changes): its next read costs nothing."""
        if len(self._saved) >= SAVED_RECORDS:
            self._saved.clear()  # bounded, and safe beside other threads
        self._saved[record["id"]] = record

    def known_name(self, candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` that this machine's catalog of the root knows as
        a name, asked without catching it up (no request), or None: a hint that lets a
        path whose name part is unknown (``cas://data/images/a.png``) read the right ref
        first on an object store. The ref is read all the same: a stale hint only costs
        the reads it meant to save."""
        catalog = self.catalog_at_hand()
        if catalog is None:
            return None
        return next((c for c in candidates if catalog.has_name(c)), None)

    def catalog_at_hand(self) -> _catalog.Catalog | None:
        """This machine's catalog of the root as it is, not caught up (no request), or
        None when this machine has none yet: for hints, never for answers."""
        if self._index is None and self._unsynced is None and not index_dir(self.space).exists():
            return None
        return self._local_catalog().catalog

    def close(self) -> None:
        if self._segment is not None:
            self._segment.flush()
        for index in (self._index, self._unsynced):
            if index is not None:
                index.close()
        self._index = self._unsynced = None

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Repository({self.url!r})"

    # -- names and ids ------------------------------------------------------------------

    def resolve(self, name_or_id: str, *, prefix: str = "") -> tuple[ObjectId, str | None]:
        """(record id, the full name it was reached by, or None for an id). A name is
        looked up as ``prefix + name``. Absent is :class:`ObjectNotFound`; a storage
        that cannot be reached is a :class:`BackendError`, never "absent"."""
        if not isinstance(name_or_id, str):
            raise InvalidInput(  # also a TypeError, as before
                "name_or_id", f"an artifact name or id (a str), got {type(name_or_id).__name__}"
            )
        if is_id(name_or_id) and self._is_record(ObjectId(name_or_id)):
            return ObjectId(name_or_id), None
        name = check_name(prefix + name_or_id)
        rid_text = self.names.read(name)
        if rid_text is None:
            raise ObjectNotFound(
                name_or_id, f"no artifact named {name!r} in {self.url} ('cas ls' lists names)"
            )
        return parse_id(rid_text), name

    def read_for_save(self, name: str) -> tuple[str | None, bool]:
        """(what ``name`` holds now or None, whether it was checked as a new name), for
        a save about to build on it. On an object store a name this machine does not
        know is also checked as a new name (a parent or child of it that is a name
        refuses it: :class:`RefConflict`) beside that read, in the same round trip;
        given ``checked=True``, :meth:`prepare` does not check it again: a save of a
        new name waits for one round trip fewer. A name that exists after all cost the
        check's requests (a listing, the parents not seen as folders) for nothing."""
        if self.storage.local_dir is not None or self.known_name([name]) is not None:
            return self.names.read(name), False
        with ThreadPoolExecutor(1, thread_name_prefix="cas-check") as pool:
            check = pool.submit(self.names.check_new, name)
            current = self.names.read(name)
            try:
                check.result()
            except RefConflict:
                if current is None:
                    raise
        return current, current is None

    def _is_record(self, rid: ObjectId) -> bool:
        """True if ``rid`` is an artifact this root holds (a 64-hex text may also be a
        name: then False and it is looked up as one). On an object store whose catalog
        is not open yet the record's header is asked (one request), not the catalog."""
        if self._catalog_at_hand() and self.index.catalog.get(rid) is not None:
            return True
        try:
            return self.space.kind(rid) == "record"
        except ObjectNotFound:
            return False

    def lookup(
        self, name_or_id: str, *, prefix: str = "", tags: bool = True
    ) -> tuple[ObjectId, str | None, dict[str, Any]]:
        """(record id, the name it was reached by or None, the record): ``resolve`` and
        ``record`` in one, with an error that names the ref when it points at nothing."""
        rid, name = self.resolve(name_or_id, prefix=prefix)
        try:
            return rid, name, self.record(rid, tags=tags)
        except ObjectNotFound as exc:
            if name is None:
                raise
            raise ObjectNotFound(
                name_or_id,
                f"ref {name!r} points at {rid}, which is not an artifact in {self.url}: the "
                "ref file is damaged or its record was deleted; run 'cas fsck'",
            ) from exc

    def record(self, rid: str, *, tags: bool = True) -> dict[str, Any]:
        """The record of an artifact id with its current tags, from the catalog when it
        has it (fast), else from the record object (verified). ``tags=False``: the
        record as saved will do (a read of content): on an object store whose catalog
        is not open yet it is read from the record object, one request, instead of
        catching the catalog up with the journal first (a listing per day)."""
        if tags or self._catalog_at_hand():
            indexed = self.index.catalog.get(rid)
            if indexed is not None:
                return dict(indexed)
        elif (saved := self._saved.get(rid)) is not None:
            return dict(saved)
        try:
            value = check_record(rid, self.space.get_value(rid, "record", with_previous=not tags))
        except ObjectNotFound:
            raise ObjectNotFound(rid, f"no artifact with id {rid} in {self.url}") from None
        record = {**value, "id": rid}
        if not tags:  # a record object never changes: the next read of it costs nothing
            self._keep(record)
        return dict(record)

    def _catalog_at_hand(self) -> bool:
        """True if the catalog answers without requests: open already, or local."""
        return self._index is not None or self.storage.local_dir is not None

    # -- changes --------------------------------------------------------------------------

    def commit(
        self,
        record: dict[str, Any],
        *,
        current: Any = UNREAD,
        checked: bool = False,
        expected: Any = ANY,
        message: str | None = None,
        written: ObjectId | None = None,
    ) -> ObjectId:
        """Write a record, journal it, move its name, index it. Saving what the name
        already holds (same content, type, metadata, parents, source) returns the
        existing id and writes nothing: a save is idempotent. ``expected``: the id the
        name must hold (None: no name) for it to move, else :class:`RefConflict` and
        the record is withdrawn; ``message``: its history entry (default ``save TYPE``);
        ``written``: the id of the record object if the caller wrote it already."""
        with self.space.batch():  # the record is synced with the journal entry, once
            rid, new = self.prepare(record, current=current, checked=checked, written=written)
            if new:
                self.publish([(rid, record)], expected={record["name"]: expected}, message=message)
        return rid

    def point(self, name: str, rid: ObjectId, *, expected: Any = ANY) -> ObjectId:
        """Point ``name`` at the artifact ``rid`` (git's ``update-ref``) if it holds
        ``expected`` (an id; None: no such name; ANY: whatever it holds), with a history
        entry; return the id the name holds then.

        The catalog knows an artifact by the name in its record, so the name moves to
        ``rid`` itself only if the catalog holds ``rid`` under ``name`` (an earlier
        version of it). Otherwise (an artifact of another name, or one removed, whose
        id the catalog never takes back) the name gets a new record with everything of
        ``rid``'s but the name and the time: its content, type, metadata, parents,
        source and current tags."""
        try:
            kind = self.space.kind(rid)
        except ObjectNotFound:
            raise ObjectNotFound(rid, f"no artifact with id {rid} in {self.url}") from None
        if kind != "record":
            raise InvalidInput(
                "id", f"{rid} is a {kind} object, not an artifact: give an artifact id "
                "('cas log NAME' and 'cas search' print them)",
            )  # fmt: skip
        check_name(name)
        record = self.record(rid)
        current = self.names.read(name)
        if expected is not ANY and current != expected:
            raise RefConflict(
                name, expected, current,
                f"{name} holds {current or 'nothing'}, not {expected or 'nothing'}: "
                "it moved meanwhile; look at 'cas log NAME' and try again",
            )  # fmt: skip
        indexed = self.index.catalog.get(rid)
        if indexed is not None and indexed["name"] == name:
            if current != rid:
                self.names.set(name, rid, expected=current, message="set")
            return rid
        keep = {k: record.get(k) for k in FIELDS if k not in ("format", "name", "created_at")}
        copy = make_record(**keep, name=name)
        return self.commit(copy, current=current, expected=current, message=f"set from {rid[:12]}")

    def prepare(
        self,
        record: dict[str, Any],
        *,
        current: Any = UNREAD,
        checked: bool = False,
        written: ObjectId | None = None,
    ) -> tuple[ObjectId, bool]:
        """The first half of a commit: (record id, True) with the record object written
        (held, inside a batch), or (the id the name holds, False) if it holds this
        very version already. ``current``: the name's value if the caller just read it
        (:data:`UNREAD`: read it here); ``checked``: that read checked it as a new name
        (:meth:`read_for_save`); ``written``: the record object's id, written already."""
        if current is UNREAD:
            current = self.names.read(record["name"])
        if current is not None:
            previous = self._previous(current)
            if previous is not None and same_version(previous, record):
                return ObjectId(current), False
        elif not checked:
            # A new name that a name above or below refuses is refused now, before the
            # record and its journal entry are written: nothing of it is ever visible.
            self.names.check_new(record["name"])
        if written is not None:
            return written, True
        return self.space.put_value("record", record), True

    def _previous(self, rid: str) -> dict[str, Any] | None:
        """The record a name holds, for a save to compare with: from the catalog when
        it answers without requests, else from the record object (one request, not a
        catch-up of the catalog: a write needs only what it touches). Tags set since
        the save are then unknown: a save that repeats them writes a new version."""
        if self._catalog_at_hand():
            return self.index.catalog.get(rid)
        try:
            return self.record(rid, tags=False)
        except ObjectNotFound:
            return None

    def publish(
        self,
        items: list[tuple[ObjectId, dict[str, Any]]],
        *,
        expected: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """The second half: the objects made durable by one sync; only then the names
        moved (in order), each with its journal entry written between the claim of
        the name and its publish (``_journal_put``), and the catalog updated. A save
        is visible once its name's claim is won: a crash before leaves objects gc
        collects and nothing any catalog lists; a crash after it is rolled forward
        (journal entry and name) by the next writer of the name or ``cas fsck``.
        ``expected``: what a name must hold before its first move (as :meth:`commit`
        takes it)."""
        if not items:
            return
        self.space.flush(durable=False)
        self.storage.sync()
        with self._publishing_lock:
            self._publishing.update((rid, None) for rid, _ in items)
        try:
            refused = self._move_names(items, expected, message)
        finally:
            with self._publishing_lock:
                stamps = {rid: self._publishing.pop(rid, None) for rid, _ in items}
        # A name refused after its claim (another writer's name found in its way) was
        # journaled: a delete follows. One refused before (the usual case) was not.
        self._withdraw([rid for rid in refused if stamps[rid] is not None])
        published = [(rid, record) for rid, record in items if rid not in refused]
        self._index_published([stamps[rid] or "" for rid, _ in published], published)
        if refused:
            raise next(iter(refused.values()))

    def _journal_put(self, name: str, entry: Any, durable: bool) -> None:
        """The names' ``before_publish``: the journal entry of the artifact ``name`` is
        about to hold, written once the name's update is claimed (by this process's
        saves, and when it rolls forward the update of a writer that died), so that
        a name is never seen before the catalog can know its artifact, and a refused
        save never reaches the journal."""
        stamp = self.journal.append({"op": "put", "id": entry.new}, durable=durable)
        with self._publishing_lock:
            if entry.new in self._publishing:
                self._publishing[entry.new] = stamp

    def _move_names(
        self,
        items: list[tuple[ObjectId, dict[str, Any]]],
        expected: dict[str, Any] | None,
        message: str | None,
    ) -> dict[ObjectId, RefConflict]:
        """Move the names of ``items`` (``publish``); return the refused ones."""
        # The names, unsynced, then one sync: a name is durable when the call returns,
        # and never reaches anything that is not (the sync above came first). Distinct
        # names move independently (in parallel on an object store); the saves of one
        # name move it in order.
        names = self.names.unsynced()
        by_name: dict[str, list[tuple[ObjectId, dict[str, Any]]]] = {}
        for rid, record in items:
            by_name.setdefault(record["name"], []).append((rid, record))

        refused: dict[ObjectId, RefConflict] = {}

        def move(versions: list[tuple[ObjectId, dict[str, Any]]]) -> None:
            for i, (rid, record) in enumerate(versions):
                must = (expected or {}).get(record["name"], ANY) if i == 0 else ANY
                try:
                    names.set(record["name"], rid, expected=must,
                              message=message or f"save {record['artifact_type']}")  # fmt: skip
                except RefConflict as exc:  # a name created meanwhile in its way
                    refused.update((later, exc) for later, _ in versions[i:])
                    return

        self._in_parallel(move, list(by_name.values()))
        if names is not self.names:
            self.storage.sync(force=True)  # the refs wrote their files themselves
        return refused

    def _withdraw(self, rids: list[ObjectId]) -> None:
        """Records journaled whose names then could not move (a name in the way found
        after the claim, which is taken back): their journal entries are followed by
        deletes, so no catalog shows them; their objects go with gc. A save refused
        before its claim (the usual case) wrote no journal entry."""
        for rid in rids:
            stamp = self._append({"op": "delete", "id": rid})
            self._local_catalog().catalog.delete(rid, stamp)

    def _append(self, event: dict[str, Any]) -> str:
        """A tag or delete event journaled (and held for this process's next segment)."""
        stamp = self.journal.append(event)
        if self._segment is not None:
            self._segment.add([(stamp, event, None)])
        return stamp

    def _index_published(
        self, stamps: list[str], items: list[tuple[ObjectId, dict[str, Any]]]
    ) -> None:
        """The catalog of this machine (and the segment) takes what was published."""
        if not items:
            return
        remote = not self._catalog_at_hand()
        payloads = [pack(record) for _, record in items] if remote or self._segment else []
        if self._segment is not None:
            self._segment.add(
                [(stamp, {"op": "put", "id": rid}, payload)
                 for stamp, (rid, _), payload in zip(stamps, items, payloads, strict=True)
                 if stamp]  # none: another writer published it (and journaled it)
            )  # fmt: skip
        indexed = [{**record, "id": rid} for rid, record in items]
        if remote:
            # This machine's catalog is not caught up (and need not be for a write):
            # it takes these records now, without sync state, so that it knows the
            # names this process wrote (a hint for cas:// paths); its first sync
            # reads the rest. The records as saved are kept for reads that follow.
            self._local_catalog().catalog.put_many(indexed)
            for (rid, _), payload in zip(items, payloads, strict=True):
                self._keep({**unpack(rid, payload), "id": rid})  # as a read gives it
            return
        self.index.catalog.put_many(indexed)
        for stamp in filter(None, stamps):
            self.index.note_written(stamp)

    def _in_parallel(self, work: Callable[[Any], T], items: list[Any]) -> list[T]:
        """``work`` on each item, in order; on an object store, requests in parallel."""
        threads = min(self.storage.io_threads, len(items))
        if threads <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(threads, thread_name_prefix="cas-publish") as pool:
            return list(pool.map(work, items))

    def delete(self, rid: ObjectId, name: str | None) -> None:
        """Remove a record from the catalog (a tombstone in the journal) and its name
        if it still points at it. The content stays until gc finds it unreachable."""
        stamp = self._append({"op": "delete", "id": rid})
        if name:
            with contextlib.suppress(RefConflict, ObjectNotFound):
                self.names.delete(name, expected=rid, message="delete")
        self._local_catalog().catalog.delete(rid, stamp)  # caught up or not: a join

    def tag(self, rid: ObjectId, tags: dict[str, str | None]) -> None:
        """Set tags (None removes one): a journal entry, then the catalog."""
        stamp = self._append({"op": "tag", "id": rid, "tags": tags})
        self._local_catalog().catalog.tag(rid, tags, stamp)  # caught up or not: a join

    # -- upkeep ---------------------------------------------------------------------------

    def sync(self, *, full: bool = False) -> int:
        """Bring the local catalog up to date with the journal; return the events
        applied (opening the catalog is the sync: it is not caught up twice)."""
        applied = self._open_index(full=full)
        return applied if applied is not None else self.index.sync(full=full)

    def _open_index(self, *, full: bool) -> int | None:
        """Open the catalog, caught up (the events applied), unless a thread did first
        (None): threads share one catalog and catch it up once."""
        with self._index_lock:
            if self._index is not None:
                return None
            index = self._unsynced or LocalCatalog(self.space, self.journal)
            try:
                applied = index.sync(full=full)
            except _catalog.CatalogDamaged as exc:  # found by the catch-up's reads
                index.close()
                index.set_aside(exc)
                index = LocalCatalog(self.space, self.journal)
                applied = index.sync(full=full)
            self._index, self._unsynced = index, None
            return applied

    def reindex(self) -> dict[str, Any]:
        """Rebuild the catalog from the object space; report what changed."""
        report = rebuild(self.space, self.journal, self.index, self.names.items())
        self._index = None
        return report


class HasRepository(Protocol):
    """Anything that carries a repository (an ``ArtifactStore``)."""

    @property
    def repo(self) -> Repository: ...


def repository(target: Repository | HasRepository) -> Repository:
    """The repository of a store, or the repository itself: gc, fsck and transfer
    accept either."""
    return target if isinstance(target, Repository) else target.repo


def validate_root(storage: Storage) -> None:
    """Raise if ``storage`` cannot hold a store: unreachable, refused credentials, or
    files that are not a cas store of a known format. One listing, and a read of the
    CAS marker if the root holds files; nothing is written."""
    if not storage.is_empty():
        ObjectSpace(storage, create=False)


def same_version(previous: dict[str, Any], record: dict[str, Any]) -> bool:
    """True if ``record`` would save exactly what ``previous`` holds."""
    keys = ("content_id", "artifact_type", "materializer", "metadata", "parent_ids",
            "source_project", "source_pipeline", "source_run_id", "source_step", "content_info")  # fmt: skip
    return all(previous.get(k) == record.get(k) for k in keys) and all(
        (previous.get("tags") or {}).get(k) == v for k, v in (record.get("tags") or {}).items()
    )
