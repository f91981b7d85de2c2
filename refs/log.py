"""Ref history: one write-once file per update, named by its sequence number.

The history of ref ``name`` is the folder ``<root>/logs/<name>/``; update number
``n`` (1, 2, ...) is the file ``~<n, 12 digits>`` in it, e.g.
``logs/models/fraud/~000000000042``. ``~`` cannot appear in a ref name, so an entry
never collides with the history folder of a longer name (``logs/models/fraud/v2/``).
An entry is created once, exclusively, and never rewritten; ``prune_log`` may delete
the oldest ones.

An entry is one line of JSON (UTF-8, ASCII-escaped)::

    {"old": "<64 hex>" | null, "new": "<64 hex>" | null, "time": 1700000000.123,
     "who": "user@host", "message": "...", "pid": 1234, "host": "host",
     "start": 2466944, "boot": "<boot id>", "pidns": "pid:[4026531836]", "lease": 600.0}

``old``/``new`` are the ids before and after (``null``: absent; ``new: null`` is a
delete), ``time`` is seconds since the epoch on the writer's clock; ``pid`` and
``host`` identify the writing process, so an update that was claimed but never
published can be reported with its owner; ``start``, ``boot``, ``pidns`` and ``lease``
(written since self-healing updates: ``refs/owner.py``) let the next writer prove that
owner dead, or outlived, and settle the update itself. Entries without them are
reported, never settled.

``logs/<name>/~pruned`` (see :func:`pruned_path`) is written once, before
``prune_log`` deletes the first entry of ``name``: while it is absent, entry 1 was
never deleted, so a writer that has just created entry 1 knows the history holds
nothing else without listing it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import RefError
from .ids import check_id
from .names import log_dir

_ENTRY = re.compile(r"~([0-9]{12,})")

#: The base name of the marker :func:`pruned_path`; no entry or ref name looks like it.
PRUNED = "~pruned"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One update of a ref: ``old`` -> ``new`` (``None``: absent), when, by whom, why."""

    old: str | None
    new: str | None
    time: float
    who: str
    message: str


def entry_basename(seq: int) -> str:
    """The file name of update number ``seq`` (from 1)."""
    if seq < 1:
        raise ValueError(f"history sequence numbers start at 1, not {seq}")
    return f"~{seq:012d}"


def parse_entry_basename(basename: str) -> int | None:
    """The sequence number of an entry's file name; None for any other file."""
    match = _ENTRY.fullmatch(basename)
    return None if match is None else int(match.group(1))


def entry_path(root: str, name: str, seq: int) -> str:
    """The file of update number ``seq`` of ref ``name`` under ``root``."""
    return f"{log_dir(root, name)}/{entry_basename(seq)}"


def pruned_path(root: str, name: str) -> str:
    """The marker saying that entries of ref ``name`` were pruned (entry 1 among them)."""
    return f"{log_dir(root, name)}/{PRUNED}"


def encode_entry(
    entry: LogEntry, *, pid: int, host: str, owner: Mapping[str, Any] | None = None
) -> bytes:
    """The bytes of a history entry file, written by process ``pid`` on ``host``.

    ``owner`` adds the rest of the owner record (``start``, ``boot``, ``pidns``,
    ``lease``: see ``refs/owner.py``), which lets a later writer settle the update if
    its writer dies before publishing it.
    """
    record: dict[str, Any] = {
        "old": entry.old,
        "new": entry.new,
        "time": entry.time,
        "who": entry.who,
        "message": entry.message,
        "pid": pid,
        "host": host,
    }
    if owner is not None:
        record.update((k, v) for k, v in owner.items() if k not in record)
    return json.dumps(record, ensure_ascii=True).encode("ascii") + b"\n"


def decode_entry(data: bytes, where: str) -> tuple[LogEntry, dict[str, Any]]:
    """The entry held by ``data`` read from ``where``, and the whole record."""
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        old, new = record["old"], record["new"]
        entry = LogEntry(
            old=None if old is None else check_id(old),
            new=None if new is None else check_id(new),
            time=float(record["time"]),
            who=str(record["who"]),
            message=str(record["message"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise RefError(f"history entry {where} is corrupt: {exc}") from exc
    return entry, record
