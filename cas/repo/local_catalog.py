"""The local catalog of a root, and how it catches up with the journal.

A local root keeps its LMDB catalog in ``<root>/index/``; a remote root in a cache folder
on this machine keyed by the root URL. Opening a store replays the journal entries of
the last days that the catalog has not seen (cheap: one listing per day), so records
written by other processes or machines, or by a writer that died between its journal
entry and its catalog update, appear without a full rebuild. ``reindex`` rebuilds from
the whole journal and reports what changed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Final

import msgpack

from cas import catalog as _catalog
from cas.errors import CasError, IntegrityError, ObjectNotFound
from cas.objects.space import ObjectSpace
from cas.repo import checkpoints, segments
from cas.repo.journal import Journal, parse_stamp, shifted
from cas.repo.records import check_record
from cas.storage import TEMP_PREFIX
from cas.storage.cache import remote_cache

#: Entries this much older than the newest seen are listed again on sync, so writers on
#: other machines with slower clocks, or object-store listings that lag, still get in.
#: Listing is cheap: an entry's name says what it is, so only unseen ones are read.
RESYNC_WINDOW: Final = _dt.timedelta(hours=6)
#: Between those listings, each sync lists from this much before the later of the newest
#: entry it applied and the time its last listing began: an entry written after a
#: listing began is named no earlier than that, less a writer's clock error.
LATE: Final = _dt.timedelta(minutes=2)
#: How often (seconds) a machine lists the whole ``RESYNC_WINDOW`` again.
DEEP_EVERY: Final = 3600.0


def index_dir(space: ObjectSpace) -> Path:
    """``<root>/index`` of a local root this process can write there; else (a remote
    root, or a read-only folder, mount or another user's store) this machine's cache."""
    if space.storage.local_dir is not None:
        local = Path(space.storage.local_dir) / "index"
        if writable(local):
            return local
    return remote_cache(space.url) / "index"


def writable(folder: Path) -> bool:
    """True if this process can write ``folder`` (the nearest existing folder above it,
    if it does not exist yet) and the catalog files already in it: what LMDB needs to
    open it. ``os.access`` answers for a read-only mount too."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    files = [folder / "catalog", *(folder / "catalog" / n for n in ("data.mdb", "lock.mdb"))]
    return os.access(existing, os.W_OK) and all(os.access(f, os.W_OK) for f in files if f.exists())


class LocalCatalog:
    """The catalog engine plus its sync state for one root.

    A journal entry or record that cannot be read (damaged, or malformed by a buggy or
    hostile writer of a shared bucket) is skipped by a sync and kept in ``damaged``
    (stamp -> (record id, why)), so one bad file never stops the catalog: the rest of
    the store keeps working, reads of what it concerns fail naming it, ``cas fsck``
    lists it and gc refuses to run until it is repaired.
    """

    def __init__(self, space: ObjectSpace, journal: Journal, folder: Path | None = None) -> None:
        self.space = space
        self.journal = journal
        self.folder = folder or index_dir(space)
        durable = getattr(space.storage, "fsync", True)
        self._state_path = self.folder / "sync.msgpack"
        path = self.folder / "catalog"
        data = path / "data.mdb"
        if not data.exists() or data.stat().st_size == 0:
            # A catalog made now: sync state left beside it (its catalog deleted by
            # hand, or set aside) would make the first sync skip the older entries.
            self._state_path.unlink(missing_ok=True)
        try:
            self.catalog = _catalog.Catalog(str(path), durable=durable)
        except _catalog.FormatMismatch:
            # Written by another version of cas: the catalog is derived, so it is built
            # again from the journal (the first sync reads every entry).
            shutil.rmtree(path, ignore_errors=True)
            self._state_path.unlink(missing_ok=True)
            self.catalog = _catalog.Catalog(str(path), durable=durable)
        except _catalog.CatalogDamaged as exc:
            # Overwritten, truncated, a lock file of garbage: derived too, so it is set
            # aside (kept for a look, never read again) and built again from the journal.
            self.set_aside(exc)
            self.catalog = _catalog.Catalog(str(path), durable=durable)
        self._has_high_water = False
        self._written = 0  # entries this process wrote since it last synced
        state = self._state()
        self.damaged: dict[str, tuple[str, str]] = {
            str(k): (str(v[0]), str(v[1])) for k, v in (state.get("damaged") or {}).items()
        }

    def close(self) -> None:
        self.catalog.close()

    def set_aside(self, exc: Exception) -> None:
        """Move the damaged catalog and its sync state to ``damaged-<time>/`` beside."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.folder / f"damaged-{stamp}-{os.getpid()}"
        aside.mkdir(parents=True, exist_ok=True)
        for part in (self.folder / "catalog", self._state_path):
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.replace(part, aside / part.name)
        logging.getLogger("cas").warning(
            "the catalog of %s was damaged (%s); set aside in %s and rebuilt from the store "
            "(delete that folder when done with it)", self.space.url, exc, aside,
        )  # fmt: skip

    # -- sync state -------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            state = msgpack.unpackb(self._state_path.read_bytes(), raw=False)
        except (FileNotFoundError, ValueError, msgpack.UnpackException):
            return {}
        return state if isinstance(state, dict) else {}

    def _high_water(self) -> str | None:
        newest = self._state().get("newest")
        return newest if isinstance(newest, str) else None

    def _save_high_water(self, newest: str, **changes: Any) -> None:
        """Remember the newest stamp applied, and ``changes`` to the rest of the state
        (``since_checkpoint``: entries applied past the newest checkpoint; ``listed_at``
        and ``deep_at``: when the last listings began; ``tags_seen``: tag entries of
        the resync window already applied). Processes sharing the folder each write
        the whole state: one that loses a race only lists or reads more next time."""
        state = self._state()
        state.update(changes)
        state.update({"newest": newest, "root": self.space.url,
                      "damaged": {k: list(v) for k, v in self.damaged.items()}})  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        # Threads of one process sync too (a writer every EVERY entries): one file each.
        tmp = self._state_path.with_suffix(f"{TEMP_PREFIX}{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(msgpack.packb(state))
        os.replace(tmp, self._state_path)

    def since_checkpoint(self) -> int:
        """Journal entries this catalog applied past the newest checkpoint it knows."""
        n = self._state().get("since_checkpoint")
        return n if isinstance(n, int) else 0

    def damage_of(self, rid: str) -> list[tuple[str, str]]:
        """(stamp, why) of each damaged journal entry or record about record ``rid``."""
        return [(stamp, why) for stamp, (of, why) in sorted(self.damaged.items()) if of == rid]

    # -- catching up ------------------------------------------------------------------

    def _damage(self, stamp: str, rid: str, exc: Exception) -> None:
        self.damaged[stamp] = (rid, str(exc))

    def events_for(self, stamps: list[str], *, skip_known: bool = False) -> list[dict[str, Any]]:
        """Journal events with the records their puts name, ready for the catalog. With
        ``skip_known``, puts and deletes this catalog already holds are not read. What
        cannot be read goes to ``damaged``, not into the events."""
        events: list[dict[str, Any]] = []
        tags: list[str] = []
        for stamp in stamps:
            parsed = parse_stamp(stamp)
            if parsed is None:
                continue
            op, rid = parsed
            if op == "tag":
                tags.append(stamp)
                continue
            if skip_known and self._holds(op, rid, stamp):
                continue
            if op == "delete":
                events.append({"op": "delete", "id": rid, "stamp": stamp})
            else:
                try:
                    record = self.read_record(rid)
                except CasError as exc:
                    self._damage(stamp, rid, exc)
                    continue
                if record is not None:  # None: collected after its deletion
                    events.append({"op": "put", "record": record, "stamp": stamp})
        events.extend(
            self.journal.read(
                tags,
                on_error=lambda stamp, exc: self._damage(stamp, parse_stamp(stamp)[1], exc),  # type: ignore[index]
            )
        )
        return events

    def _segment_events(
        self, names: list[str], seen: set[str], *, skip_known: bool
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """(events, the entries they cover) of the journal segments ``names``: what one
        GET each brings instead of a read per entry and per record. A segment that does
        not read is only logged: its entries are read instead."""

        def skipped(name: str, exc: Exception) -> None:
            logging.getLogger("cas").info("catalog sync read the entries of %s: %s", name, exc)

        events: list[dict[str, Any]] = []
        covered: set[str] = set()
        for _, held in segments.read(self.journal, names, skipped):
            for event in held:
                stamp, op, rid = event["stamp"], event["op"], event["id"]
                covered.add(stamp)
                if stamp in seen or (skip_known and self._holds(op, rid, stamp)):
                    continue
                if op == "put":
                    events.append({"op": "put", "record": event["record"], "stamp": stamp})
                elif op == "delete":
                    events.append({"op": "delete", "id": rid, "stamp": stamp})
                else:
                    events.append({"op": "tag", "id": rid, "tags": event["tags"], "stamp": stamp})
        return events, covered

    def _holds(self, op: str, rid: str, stamp: str) -> bool:
        """True if applying this put or delete would change nothing: the record is
        indexed or tombstoned; the id is tombstoned by this delete or an earlier one
        (the earliest stamp stays). Tags are never known this way (last writer wins)."""
        if op == "put":
            return self.catalog.state(rid) is not None
        if op == "delete":
            return (self.catalog.tombstone(rid) or "~") <= stamp
        return False

    def read_record(self, rid: str) -> dict[str, Any] | None:
        try:
            value = check_record(rid, self.space.get_value(rid, "record"))
        except ObjectNotFound:
            return None
        return {**value, "id": rid}

    def _refused(self, event: Mapping[str, Any], exc: Exception) -> None:
        """An event the catalog refuses: it goes to ``damaged``."""
        rid = _event_id(event)
        self._damage(str(event.get("stamp") or rid), rid, exc)

    def apply(self, events: list[dict[str, Any]], *, rebuild: bool = False) -> None:
        """Apply (or rebuild from) events; one the catalog refuses goes to ``damaged``."""
        if rebuild:
            self.catalog.rebuild(events, refused=self._refused)
        elif events:
            self.catalog.apply(events, refused=self._refused)

    def sync(self, *, full: bool = False) -> int:
        """Apply journal entries not yet seen (``full``: every entry again); return how
        many events were applied."""
        newest = None if full else self._high_water()
        previous = dict(self.damaged)
        began = _stamp_time(_dt.datetime.now(_dt.timezone.utc))
        loaded = 0
        if newest is None and not full:
            newest, loaded = self._from_checkpoint()
        state = self._state()  # after a checkpoint: the listing times of its writer
        deep = False
        seen: set[str] = set()
        if newest is None:
            stamps = self.journal.stamps(segments=not full)
            self.damaged.clear()  # every entry is read again
        else:
            # Entries may arrive late: a writer's clock behind, or a writer that stalled
            # between naming its entry and writing it. Each sync lists from a little
            # before what it saw last (``LATE``); once every ``DEEP_EVERY`` it lists
            # the whole ``RESYNC_WINDOW``. Tags already applied are not read again.
            deep = time.time() - _number(state.get("deep_at")) >= DEEP_EVERY
            base = max(newest[:23], str(state.get("listed_at") or "")[:23])
            cutoff = shifted(base, RESYNC_WINDOW if deep else LATE)
            stamps = self.journal.stamps_after(cutoff)
            # Damaged entries are tried again, so a repair shows: an entry moved to
            # quarantine is gone, a record that reads again is applied.
            listed = set(stamps)
            retry = {s for s in self.damaged if s in listed or self.journal.exists(s)}
            self.damaged.clear()
            stamps = sorted(listed | retry)
            seen = {s for s in state.get("tags_seen") or () if isinstance(s, str)}
            seen |= {s for s in state.get("segs_seen") or () if isinstance(s, str)}
        marks: dict[str, Any] = {"listed_at": began}
        if deep or newest is None:
            marks["deep_at"] = time.time()
        if not stamps:
            if newest:
                self._save_high_water(newest, **marks)
            return loaded
        segment_names = [s for s in stamps if parse_stamp(s) is None and s not in seen]
        events, covered = self._segment_events(segment_names, seen, skip_known=not full)
        singles = [s for s in stamps if parse_stamp(s) is not None]
        events += self.events_for(
            [s for s in singles if s not in seen and s not in covered], skip_known=not full
        )
        self.apply(events)
        for stamp in sorted(set(self.damaged) - set(previous)):
            logging.getLogger("cas").warning(
                "catalog sync skipped %s: %s", stamp, self.damaged[stamp][1]
            )
        fresh = sum(1 for s in singles if s > (newest or ""))  # entries new to this catalog
        newest = max(stamps[-1], newest or "")
        since = fresh if full else self.since_checkpoint() + fresh
        window = shifted(began, RESYNC_WINDOW)
        seen |= {e["stamp"] for e in events if e["op"] == "tag"}
        marks["tags_seen"] = sorted(s for s in seen if s >= window and parse_stamp(s))
        marks["segs_seen"] = sorted(
            s for s in seen | set(segment_names) if s >= window and not parse_stamp(s)
        )
        self._save_high_water(newest, since_checkpoint=since, **marks)
        if since >= checkpoints.EVERY:
            self.checkpoint(newest)
        return loaded + len(events)

    # -- checkpoints ----------------------------------------------------------------

    def _from_checkpoint(self) -> tuple[str | None, int]:
        """A catalog with no sync state yet starts from the root's newest checkpoint
        that reads (with the whole one it adds to, if incremental): (the stamp it
        covers up to, the events it held), or (None, 0). An empty catalog filled from a
        whole checkpoint (in one transaction) is marked with its name, so that its own
        checkpoints can be incremental ones on it."""
        storage = self.space.storage
        every = checkpoints.listed(storage)
        for made in reversed(every):
            base = None if made.base is None else checkpoints.base_of(made, every)
            if made.base is not None and base is None:
                continue  # the whole checkpoint it adds to is gone (gc, or a newer writer)

            def refused(event: Mapping[str, Any], exc: Exception, name: str = made.name) -> None:
                logging.getLogger("cas").warning(
                    "catalog checkpoint %s: skipped %s (%s); run 'cas fsck'",
                    name, _event_id(event), exc,
                )  # fmt: skip

            try:
                with ThreadPoolExecutor(1, thread_name_prefix="cas-checkpoint") as pool:
                    # The whole one read beside the incremental one (on a bucket, at once).
                    whole = None if base is None else pool.submit(checkpoints.read, storage, base)
                    upto, header, batches = checkpoints.read(storage, made)  # verified first
                    under = None if whole is None else whole.result()
                applied = 0
                if base is not None and under is not None:
                    _, _, below = under
                    applied += self.catalog.apply_stream(below, mark=base.name, refused=refused)
                applied += self.catalog.apply_stream(
                    batches, mark=None if base else made.name, refused=refused
                )
            except (IntegrityError, FileNotFoundError) as exc:
                logging.getLogger("cas").warning("catalog sync skipped %s: %s", made.name, exc)
                continue  # what it applied is harmless: real events, and the state a join
            # The writer's catalog held every entry its listings found, and so does this
            # one now: the next listing begins where the writer's last one began.
            times = {k: header[k] for k in ("listed_at", "deep_at") if k in header}
            self._save_high_water(upto, since_checkpoint=0, **times)
            return upto, applied
        return None, 0

    def checkpoint(
        self, upto: str | None = None, *, whole: bool = False
    ) -> checkpoints.Checkpoint | None:
        """Write a checkpoint of this catalog, caught up to the stamp ``upto`` (default:
        the newest it applied); None if it has applied nothing yet. An incremental one
        (what changed since the whole checkpoint this catalog is marked with) while
        those changes are at most :func:`checkpoints.incremental_limit`, else (or with
        ``whole``) a whole one, which the catalog is then marked with."""
        upto = upto or self._high_water()
        if upto is None:
            return None
        state = self._state()
        times: dict[str, Any] = {k: state[k] for k in ("listed_at", "deep_at") if k in state}
        storage = self.space.storage
        try:
            made = None if whole else self._incremental(upto, times)
            if made is None:
                pending = f"pending-{upto}-{os.getpid()}-{secrets.token_hex(4)}"
                made = checkpoints.write(
                    storage, partial(self.catalog.export, mark=pending), upto, times
                )
                self.catalog.relabel(pending, made.name)
        except (CasError, OSError) as exc:  # a reader that cannot write (read-only): fine
            logging.getLogger("cas").info("catalog checkpoint not written: %s", exc)
            return None
        self._save_high_water(upto, since_checkpoint=0)
        return made

    def _incremental(self, upto: str, times: dict[str, Any]) -> checkpoints.Checkpoint | None:
        """An incremental checkpoint written, or None if a whole one is due: no mark,
        its checkpoint gone, or too many changes since."""
        label = self.catalog.marked()
        every = checkpoints.listed(self.space.storage)
        base = next((c for c in every if c.base is None and c.name == label), None)
        if base is None or upto[:23] < base.time:
            return None
        changed = self.catalog.changed(base.name)
        if changed is None or changed > checkpoints.incremental_limit(
            self.catalog.stats()["records"]
        ):
            return None

        def export(sink: Callable[[list[Any]], None]) -> dict[str, int]:
            counts = self.catalog.export_changes(sink, base.name)
            if counts is None:  # marked again meanwhile (another thread wrote a whole one)
                raise CasError("the catalog's mark moved while a checkpoint was written")
            return counts

        return checkpoints.write(self.space.storage, export, upto, times, base)

    def note_written(self, stamp: str) -> None:
        """A local write went to both journal and catalog: move the high-water mark if
        this is the first entry, so a new store does not replay from the start."""
        self._written += 1
        if self._written >= checkpoints.EVERY:
            # Every so many writes of its own, a writer catches up with the others (a
            # sync counts every entry new to it, its own too) and so checkpoints.
            self._written = 0
            self.sync()
        if self._has_high_water:
            return
        if self._high_water() is None:
            self._save_high_water(stamp)
        self._has_high_water = True


def _event_id(event: Mapping[str, Any]) -> str:
    """The id an event is about (its record's, for a put), for a message."""
    record = event.get("record")
    return str(
        event.get("id") or (record.get("id") if isinstance(record, Mapping) else None) or "?"
    )


def _stamp_time(moment: _dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def rebuild(
    space: ObjectSpace, journal: Journal, live: LocalCatalog, refs_items: list[tuple[str, str]]
) -> dict[str, Any]:
    """Rebuild the catalog from the journal (and records only refs name) in a fresh
    folder, compare it with the live one, and put it in place. Returns a report."""
    parent = live.folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".reindex-", dir=parent))
    fresh = LocalCatalog(space, journal, tmp)
    try:
        stamps = journal.stamps()
        events = fresh.events_for(stamps)
        known = {e["record"]["id"] for e in events if e["op"] == "put"}
        known |= {e["id"] for e in events if e["op"] == "delete"}
        missing: list[str] = []
        for name, rid in refs_items:
            if rid in known:
                continue
            try:
                record = fresh.read_record(rid)
            except CasError as exc:  # an older or buggy writer's record: named, skipped
                fresh._damage(f"refs/{name}", rid, exc)
                continue
            if record is None:
                missing.append(f"{name} -> {rid}")
                continue
            events.append({"op": "put", "record": record, "stamp": "0"})
            known.add(rid)
        fresh.apply(events, rebuild=True)
        before, after = live.catalog.dump(), fresh.catalog.dump()
        changed = _diff(before, after)
        if stamps:
            fresh._save_high_water(stamps[-1])
        fresh.close()
        live.close()
        old = parent / f".old-{os.getpid()}"
        os.replace(live.folder, old) if live.folder.exists() else None
        os.replace(tmp, live.folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        fresh.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "events": len(stamps),
        "changed": changed,
        "dangling_refs": missing,
        "damaged": [f"{stamp}: {why}" for stamp, (_, why) in sorted(fresh.damaged.items())],
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Per sub-database, how many entries differ between two catalog dumps."""
    out: dict[str, int] = {}
    for db in sorted(set(before) | set(after)):
        a, b = before.get(db, {}), after.get(db, {})
        if isinstance(a, dict) and isinstance(b, dict):
            n = sum(1 for k in set(a) | set(b) if a.get(k) != b.get(k))
        else:
            n = int(a != b)
        if n:
            out[db] = n
    return out
