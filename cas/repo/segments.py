"""Journal segments: the entries one process wrote, again in one file, so that another
machine catching up reads one file for them, not one entry and one record each.

A writer on an object store keeps the events it journals (each put with its record's
bytes) and every :data:`EVERY` events, at the end of a batch and when it closes, writes
them as one more journal file::

    logs/.catalog/<day>/<YYYYMMDDTHHMMSS.ffffffZ>-<8 hex>-seg-<64 hex>

named after its own entries (a listing shows it after them) and by the BLAKE3 of its
events. It is a copy: the entries stay, each the truth of its event, and a reader that
knows nothing of segments reads them as before. A reader that lists a segment reads
it in one GET and skips the entries it covers; every record in it is checked against
its id exactly as a read of the record object would be (the id is the hash of the
record's canonical bytes), so a segment can tell nothing its entries do not. One that
does not read is skipped (its entries are read instead).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import blake3
import msgpack

from cas.errors import CasError, IntegrityError
from cas.objects.ids import kind_id
from cas.objects.kinds import pack
from cas.repo.journal import Journal, new_stamp, parse_segment, parse_stamp, seal
from cas.repo.records import check_record

#: Events a writer holds before it writes them as a segment.
EVERY: Final = 16
#: Events in one segment at most (a batch of many saves is written as several).
MOST: Final = 10_000

log = logging.getLogger("cas")


def events_digest(events: list[dict[str, Any]]) -> str:
    return blake3.blake3(pack(events)).hexdigest()


class Pending:
    """The events a writer journaled and has not written as a segment yet. Threads of
    one repository share it."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, items: list[tuple[str, dict[str, Any], bytes | None]]) -> None:
        """Hold journaled events: (stamp, event, the record's bytes for a put); write a
        segment once :data:`EVERY` are held (a batch's events go in one segment)."""
        with self._lock:
            for stamp, event, payload in items:
                item = {**event, "stamp": stamp}
                if payload is not None:
                    item["payload"] = payload
                self._events.append(item)
            full = len(self._events) >= EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        """Write what is held as segments of at most :data:`MOST` events (best effort:
        the entries are the truth, so a segment not written only makes a sync
        elsewhere slower)."""
        with self._lock:
            events, self._events = self._events, []
        for start in range(0, len(events), MOST):
            self._write(events[start : start + MOST])

    def _write(self, events: list[dict[str, Any]]) -> str | None:
        digest = events_digest(events)
        stamp = new_stamp("seg", digest)
        try:
            self.journal.storage.write_atomic(
                self.journal.path(stamp),
                seal({"op": "seg", "id": digest, "events": events}),
                durable=False,
            )
        except (CasError, OSError) as exc:
            log.info("journal segment not written: %s", exc)
            return None
        return stamp


def read(
    journal: Journal, names: list[str], on_error: Callable[[str, Exception], None]
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, events) of each segment that reads and verifies, each put event with its
    ``record`` (checked against its id); the others are passed to ``on_error``."""
    out: list[tuple[str, list[dict[str, Any]]]] = []

    def one(name: str) -> tuple[str, list[dict[str, Any]] | Exception]:
        try:
            raw = journal.storage.read(journal.path(name))
            return name, open_segment(name, raw)
        except (IntegrityError, FileNotFoundError) as exc:
            return name, exc

    if journal.storage.io_threads and len(names) > 1:
        with ThreadPoolExecutor(min(16, len(names)), thread_name_prefix="cas-seg") as pool:
            results = list(pool.map(one, names))
    else:
        results = [one(name) for name in names]
    for name, got in results:
        if isinstance(got, Exception):
            on_error(name, got)
        else:
            out.append((name, got))
    return out


def open_segment(name: str, raw: bytes) -> list[dict[str, Any]]:
    """The events of a segment, verified: its checksum, its digest, each event's stamp
    (an entry's name of the op and id it says), each record against its id."""
    digest = parse_segment(name)
    if digest is None:
        raise IntegrityError(name, f"{name} is not a journal segment")
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        if not isinstance(body, dict):
            raise ValueError("not a map")
        check = body.pop("check", None)
        if check != blake3.blake3(pack(body)).digest(16):
            raise ValueError("its checksum does not match its bytes")
        if body.get("op") != "seg" or body.get("id") != digest:
            raise ValueError("its op and id differ from its name")
        events = body.get("events")
        if not isinstance(events, list) or events_digest(events) != digest:
            raise ValueError("its events do not match its digest")
        return [_checked(e) for e in events]
    except (ValueError, KeyError, TypeError, CasError, msgpack.UnpackException) as exc:
        raise IntegrityError(name, f"journal segment {name} is damaged ({exc})") from exc


def _checked(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict) or not isinstance(event.get("stamp"), str):
        raise ValueError("an event without a stamp")
    parsed = parse_stamp(event["stamp"])
    if parsed is None or parsed != (event.get("op"), event.get("id")):
        raise ValueError(f"event {event.get('stamp')!r:.80} does not match its stamp")
    if event["op"] == "put":
        payload = event.pop("payload", None)
        if not isinstance(payload, bytes) or kind_id("record", payload) != event["id"]:
            raise ValueError(f"the record of {event['stamp']} does not match its id")
        value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        event["record"] = {**check_record(event["id"], value), "id": event["id"]}
    elif event["op"] == "tag":
        tags = event.get("tags")
        if not isinstance(tags, dict):
            raise ValueError(f"tag event {event['stamp']} has no tags")
    return event


def verify(journal: Journal) -> list[tuple[str, str]]:
    """(segment name, what is wrong) for each segment of the journal that does not
    read, or says of an entry what the entry does not (a tag event's tags; a put's or
    delete's op and id are its entry's name, checked on every read)."""
    names = [n for n in journal.stamps(segments=True) if parse_segment(n) is not None]
    found: list[tuple[str, str]] = []
    for name, held in read(journal, names, lambda n, exc: found.append((n, str(exc)))):
        tags = {e["stamp"]: e["tags"] for e in held if e["op"] == "tag"}
        entries, missing = _entry_tags(journal, sorted(tags))
        differ = sorted(s for s, t in tags.items() if s in entries and entries[s] != t)
        if differ:
            found.append((name, f"its tags of {differ[0]} differ from the entry's"))
        held_stamps = {e["stamp"] for e in held} - set(tags)
        absent = [s for s in sorted(held_stamps) if not journal.exists(s)]
        if absent or missing:
            first = (absent or missing)[0]
            found.append((name, f"it holds {first}, which the journal does not"))
    return found


def _entry_tags(journal: Journal, stamps: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(stamp -> tags of each tag entry that reads, the stamps of those that do not)."""
    missing: list[str] = []
    read = journal.read(stamps, on_error=lambda stamp, _: missing.append(stamp))
    return {e["stamp"]: e.get("tags") for e in read}, missing
