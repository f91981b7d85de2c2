"""The catalog journal: every register, tag and delete as a write-once file.

The LMDB catalog is an index; this journal (with the record objects it names) is the
durable truth it is rebuilt from, on this machine or any other that reads the root::

    <root>/logs/.catalog/<YYYY-MM-DD>/<YYYYMMDDTHHMMSS.ffffffZ>-<8 hex>-<op>-<id>   msgpack

``.catalog`` can never be a ref's name (no ref component starts with a dot), entries are
never appended to or rewritten (object stores cannot append), and names sort by time,
so an incremental sync lists only the days since its last entry. The name also says
the operation and the record it concerns, so a sync decides from a listing which
entries it already holds and reads only the others. Events:
``{"op": "put", "id": record id}``, ``{"op": "tag", "id": ..., "tags": {k: v or None}}``,
``{"op": "delete", "id": ...}``; each carries its ``stamp`` (the file name), which orders
tag updates last-writer-wins.
"""

from __future__ import annotations

import datetime as _dt
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import blake3
import msgpack

from cas.errors import IntegrityError
from cas.objects.kinds import pack
from cas.storage import Storage

JOURNAL: Final = "logs/.catalog"


OPS: Final = ("put", "tag", "delete")


def new_stamp(op: str, rid: str, moment: _dt.datetime | None = None) -> str:
    moment = moment or _dt.datetime.now(_dt.timezone.utc)
    return f"{moment.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(4)}-{op}-{rid}"


def parse_stamp(stamp: str) -> tuple[str, str] | None:
    """(op, record id) named by a journal entry, or None for a name that is not one."""
    parts = stamp.split("-")
    if len(parts) != 4 or parts[2] not in OPS or len(parts[3]) != 64:
        return None
    return parts[2], parts[3]


def parse_segment(name: str) -> str | None:
    """The digest a journal segment's name carries (:mod:`cas.repo.segments`), or None
    for a name that is not one."""
    parts = name.split("-")
    if len(parts) != 4 or parts[2] != "seg" or len(parts[3]) != 64:
        return None
    return parts[3]


def _listed(name: str, segments: bool) -> bool:
    """True for an entry's name (and with ``segments``, a segment's)."""
    return parse_stamp(name) is not None or (segments and parse_segment(name) is not None)


def stamp_day(stamp: str) -> str:
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}"


def shifted(stamp: str, back: _dt.timedelta) -> str:
    """The time part of a stamp, ``back`` earlier."""
    moment = _dt.datetime.strptime(stamp[:23], "%Y%m%dT%H%M%S.%fZ") - back
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def stamp_time(stamp: str) -> float:
    moment = _dt.datetime.strptime(stamp[:23], "%Y%m%dT%H%M%S.%fZ")
    return moment.replace(tzinfo=_dt.timezone.utc).timestamp()


class Journal:
    """Append and read catalog events under ``logs/.catalog/``."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def append(self, event: dict[str, Any], *, durable: bool = True) -> str:
        """Write one event (durably, unless the caller syncs the storage after); return
        its stamp."""
        stamp = new_stamp(event["op"], event["id"])
        self.storage.write_atomic(self.path(stamp), seal(event), durable=durable)
        return stamp

    def path(self, stamp: str) -> str:
        return f"{JOURNAL}/{stamp_day(stamp)}/{stamp}"

    def exists(self, stamp: str) -> bool:
        return parse_stamp(stamp) is not None and self.storage.stat(self.path(stamp)) is not None

    def stamps(self, since_day: str | None = None, *, segments: bool = False) -> list[str]:
        """Every stamp (sorted); with ``since_day``, only the days from it to tomorrow,
        one listing per day, so a sync does not list the whole history. ``segments``:
        the names of journal segments (:mod:`cas.repo.segments`) too."""
        if since_day is None:
            names = (rel.rsplit("/", 1)[-1] for rel, _ in self.storage.walk(JOURNAL))
            return sorted(n for n in names if _listed(n, segments))
        out: list[str] = []
        day = _dt.date.fromisoformat(since_day)
        last = _dt.datetime.now(_dt.timezone.utc).date() + _dt.timedelta(days=1)
        while day <= last:
            listed = self.storage.listdir(f"{JOURNAL}/{day.isoformat()}")
            out.extend(n for n in listed if _listed(n, segments))
            day += _dt.timedelta(days=1)
        return sorted(out)

    def stamps_after(self, start: str) -> list[str]:
        """Every stamp that sorts after ``start`` (a stamp, or its time part), sorted,
        segments' names included: one listing that begins there where the storage can
        (S3, GCS), so that finding nothing new costs one request whatever the history;
        else a listing per day from ``start``'s day to tomorrow."""
        listed = self.storage.list_after(JOURNAL, f"{stamp_day(start)}/{start}")
        if listed is None:
            return [s for s in self.stamps(stamp_day(start), segments=True) if s > start]
        names = (rel.rsplit("/", 1)[-1] for rel in listed)
        return sorted(n for n in names if _listed(n, segments=True))

    def read(
        self, stamps: list[str], *, on_error: Callable[[str, IntegrityError], None] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The events of these stamps, in order, each with its ``stamp``. A damaged
        entry raises ``IntegrityError`` naming it, or with ``on_error`` is passed to it
        and skipped."""

        def one(stamp: str) -> dict[str, Any] | IntegrityError:
            try:
                raw = self.storage.read(self.path(stamp))
            except FileNotFoundError:
                return IntegrityError(
                    stamp, f"catalog journal entry {stamp} vanished after it was listed"
                )
            try:
                event = open_entry(stamp, raw)
            except IntegrityError as exc:
                return exc
            event["stamp"] = stamp
            return event

        def settle(result: dict[str, Any] | IntegrityError) -> Iterator[dict[str, Any]]:
            if isinstance(result, IntegrityError):
                if on_error is None:
                    raise result
                on_error(result.object_id, result)
            else:
                yield result

        if not self.storage.io_threads or len(stamps) < 8:
            for stamp in stamps:
                yield from settle(one(stamp))
            return
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="cas-journal") as pool:
            for result in pool.map(one, stamps):
                yield from settle(result)


def seal(event: dict[str, Any]) -> bytes:
    """An entry's bytes: the event and a checksum of it (16 bytes of BLAKE3), so a
    flipped bit anywhere, even inside a tag value, is detected on read."""
    return pack({**event, "check": blake3.blake3(pack(event)).digest(16)})


def open_entry(stamp: str, raw: bytes) -> dict[str, Any]:
    """The event an entry holds, checked against its checksum (entries written before
    checksums existed have none) and its name; ``IntegrityError`` naming it if not."""
    try:
        event = msgpack.unpackb(raw, raw=False)
        if not isinstance(event, dict):
            raise ValueError(f"an entry is a map, not {type(event).__name__}")
        check = event.pop("check", None)
        if check is not None and check != blake3.blake3(pack(event)).digest(16):
            raise ValueError("its checksum does not match its bytes")
        if (event.get("op"), event.get("id")) != parse_stamp(stamp):
            raise ValueError("its op and id differ from its name")
        if event["op"] == "tag":
            tags = event.get("tags")
            if not isinstance(tags, dict) or not all(
                isinstance(k, str) and k and isinstance(v, (str, type(None)))
                for k, v in tags.items()
            ):
                raise ValueError("its tags are not a map of str to str or None")
    except (ValueError, msgpack.UnpackException) as exc:
        raise IntegrityError(
            stamp, f"catalog journal entry {stamp} is damaged ({exc}); run 'cas fsck'"
        ) from exc
    return event
