"""Who holds a lock or an update in flight, and whether that owner is provably dead.

Locks and history claims carry an owner record::

    {"pid": 4242, "host": "lab", "start": 2466944, "boot": "b5e4…", "pidns": "pid:[4026531836]",
     "lease": 600.0}

``start`` is the process's start time (``/proc/<pid>/stat`` field 22, clock ticks since
boot), ``boot`` the kernel's boot id, ``pidns`` its pid namespace: together with the pid
they name one process of one running kernel, so a pid that was reused, a host that
rebooted and a container that cannot see the owner's pids are told apart from a live
owner. ``lease`` is how long (seconds, by the owner's clock in the record's ``time``)
the owner promises to finish: past it, anyone may settle what it left.

:func:`judge` turns a record into a :class:`Verdict`. An owner is **dead** when it is
provably gone (same kernel and pid namespace: no such process, a zombie, or a process
of that pid started at another time) or its lease ended; **alive** when the very
process still runs; **unknown** otherwise (another host within its lease). Records
written before these fields existed (no ``lease``) are never judged dead: the writer
waits and reports them, as it always did.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

#: How long an owner promises to finish by default: far above any real publish (which
#: takes milliseconds), so that only an owner that died or froze is ever outlived.
DEFAULT_LEASE: Final = 600.0


def hostname() -> str:
    """This host's name, as recorded in locks and history entries."""
    return socket.gethostname()


def default_identity() -> str:
    """``user@host`` for history entries, from the login name and the host name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{hostname()}"


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read().decode("ascii", errors="replace").strip()
    except OSError:
        return None


_BOOT: list[str | None] = []  # computed once: the kernel's boot id does not change


def boot_id() -> str | None:
    """The running kernel's boot id (Linux), or None where there is none."""
    if not _BOOT:
        _BOOT.append(_read_text("/proc/sys/kernel/random/boot_id") or None)
    return _BOOT[0]


def pid_namespace() -> str | None:
    """This process's pid namespace (``pid:[4026531836]``, Linux), or None."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if no process of
    that pid runs (a zombie counts as gone). Linux only: elsewhere, always None."""
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:
        # fields after the parenthesised command name: state is field 3, starttime 22
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_MINE: dict[int, dict[str, Any]] = {}  # per pid: a fork has its own
_MINE_LOCK = threading.Lock()


def owner_fields(lease: float = DEFAULT_LEASE) -> dict[str, Any]:
    """The owner record of this process for a lock or a claim (without ``time``)."""
    pid = os.getpid()
    with _MINE_LOCK:
        mine = _MINE.get(pid)
        if mine is None:
            mine = {
                "pid": pid,
                "host": hostname(),
                "start": process_start(pid),
                "boot": boot_id(),
                "pidns": pid_namespace(),
            }
            _MINE.clear()
            _MINE[pid] = mine
    return {**mine, "lease": float(lease)}


_JSON: dict[tuple[int, float], str] = {}


def owner_json(lease: float, now: float) -> bytes:
    """The owner record of this process with ``time`` ``now``, as JSON bytes (a lock's)."""
    key = (os.getpid(), float(lease))
    head = _JSON.get(key)
    if head is None:
        head = json.dumps(owner_fields(lease))[:-1]  # without the closing brace
        _JSON.clear()
        _JSON[key] = head
    return f'{head}, "time": {now!r}}}'.encode()


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` of this host is running (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # state is the field after the parenthesised command name
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an owner record says about its owner.

    ``alive``: True (the very process runs), False (provably gone, or its lease ended),
    None (cannot be told: another host within its lease, or a record without the
    fields). ``settle``: whether what it left may be settled now. ``reason`` says why,
    for messages.
    """

    alive: bool | None
    settle: bool
    reason: str


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def same_kernel(record: Mapping[str, Any]) -> bool:
    """True if ``record`` was written on this host, under this kernel's boot, in this
    pid namespace: then its pid and start time can be checked here."""
    boot, ns = boot_id(), pid_namespace()
    return (
        boot is not None
        and ns is not None
        and record.get("boot") == boot
        and record.get("pidns") == ns
        and record.get("host") == hostname()
    )


def judge(record: Mapping[str, Any], age: float, *, in_flight: bool = False) -> Verdict:
    """Whether the owner of ``record`` (a lock or a claim ``age`` seconds old) is dead.

    ``in_flight``: the caller knows that this process is still working on it (only
    consulted when the record names this very process).
    """
    pid, lease = record.get("pid"), _number(record.get("lease"))
    if not isinstance(pid, int) or lease is None:
        # Written before owners recorded a lease, or by a writer killed before it wrote
        # anything: nothing proves the owner dead, so it is waited for and reported.
        return Verdict(_legacy_alive(record), False, "written without a lease")
    start = record.get("start")
    if isinstance(start, int) and same_kernel(record):
        if pid == os.getpid() and start == process_start(pid):
            if in_flight:
                return Verdict(True, False, "this process is still working on it")
            return Verdict(False, True, "this process gave it up")
        running = process_start(pid)
        if running is None:
            return Verdict(False, True, "its process is gone")
        if running != start:
            return Verdict(False, True, f"its pid {pid} now belongs to another process")
        return Verdict(True, False, "its process is still running")
    if age > lease:
        return Verdict(False, True, f"its lease of {lease:g}s ended {age - lease:.0f}s ago")
    return Verdict(None, False, f"its lease of {lease:g}s ends in {lease - age:.0f}s")


def _legacy_alive(record: Mapping[str, Any]) -> bool | None:
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not isinstance(host, str) or host != hostname():
        return None
    return pid_alive(pid)


def describe(record: Mapping[str, Any]) -> str:
    """``pid@host`` of a record, or ``an unknown owner``."""
    pid, host = record.get("pid"), record.get("host")
    if not isinstance(pid, int) or not isinstance(host, str):
        return "an unknown owner"
    return f"{pid}@{host}"


def describe_owner(pid: object, host: object) -> tuple[str, bool | None]:
    """``("pid@host", alive)``; alive is None when the owner is on another host or unknown."""
    if not isinstance(pid, int) or not isinstance(host, str):
        return "an unknown owner", None
    if host != hostname():
        return f"{pid}@{host}", None
    return f"{pid}@{host}", pid_alive(pid)


def quote(path: str) -> str:
    """``path`` in single quotes for a POSIX shell."""
    return "'" + path.replace("'", "'\"'\"'") + "'"


def remove_command(protocol: str, path: str) -> str:
    """The shell command that deletes ``path`` on a filesystem of ``protocol``."""
    if protocol in ("file", "local"):
        return f"rm {quote(path)}"
    url = f"{protocol}://{path}"
    return (
        'python -c "import fsspec; fs, p = fsspec.core.url_to_fs(' + repr(url) + '); fs.rm_file(p)"'
    )
