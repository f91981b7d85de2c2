"""What a :class:`cas.refs.RefStore` answers from history, and the upkeep checkers do: the
history of a name (``log``, ``at``, ``at_time``, ``log_names``), an update claimed and
not published (``unpublished``), a damaged ref file put back (``restore``) and old
history pruned (``prune_log``). The update protocol that writes history is in
``refs/store.py``."""

from __future__ import annotations

import builtins
import json
import time

from fsspec import AbstractFileSystem

from .conditional import Conditional
from .errors import RefError, RefNotFound
from .history import History, Stored
from .ids import decode_ref, encode_ref
from .log import LogEntry, pruned_path
from .names import ref_path
from .owner import Verdict, describe, remove_command

# Settling rounds of one `unpublished` call: one settles a dead writer's update; a
# second may meet a name-tree revert or a withdrawn claim in a pruned slot.
_SETTLE_ROUNDS = 3


class HistoryMixin:
    """History queries and upkeep; :class:`cas.refs.RefStore` provides the state."""

    fs: AbstractFileSystem
    root: str
    conditional: Conditional
    identity: str
    _log: History
    _protocol: str

    def read(self, name: str) -> str | None:
        raise NotImplementedError

    def _settle(self, name: str, head: Stored, value: str | None) -> bool:
        raise NotImplementedError

    def _verdict(self, head: Stored) -> Verdict:
        raise NotImplementedError

    def log(self, name: str) -> builtins.list[LogEntry]:
        """The history of ref ``name``, newest first (an update still in flight excluded)."""
        return [stored.entry for stored in reversed(self._history(name))]

    def at(self, name: str, n: int) -> str | None:
        """The id ``name`` held ``n`` updates ago (0: now), like git's ``name@{n}``.

        Raises :class:`RefNotFound` if the history kept does not reach that far.
        """
        if n < 0:
            raise ValueError(f"n must be 0 or more, not {n}")
        if n == 0:
            return self.read(name)
        history = self._history(name)
        if n > len(history):
            raise RefNotFound(
                name, f"the history of ref {name!r} keeps {len(history)} updates, not {n}"
            )
        return history[-n].entry.old

    def at_time(self, name: str, when: float) -> str | None:
        """The id ``name`` held at ``when`` (seconds since the epoch; writers' clocks).

        Raises :class:`RefNotFound` if the history from that time was pruned.
        """
        history = self._history(name)
        for stored in reversed(history):
            if stored.entry.time <= when:
                return stored.entry.new
        if not history:
            current = self.read(name)
            if current is None:
                return None
        elif history[0].seq == 1:
            return history[0].entry.old
        raise RefNotFound(name, f"the history of ref {name!r} does not reach back to {when}")

    def log_names(self) -> builtins.list[str]:
        """Sorted names of every ref that has history, deleted ones included (one listing)."""
        return self._log.names()

    def unpublished(self, name: str) -> tuple[LogEntry, str, bool | None, str] | None:
        """``(entry, owner "pid@host", owner alive, command that deletes the entry)`` if
        the newest history entry of ``name`` says something the ref does not hold: an
        update claimed and not (yet) published (a writer in flight, or one on another
        host that died within its lease), or a ref file deleted or rewritten outside
        refs. None when the ref agrees with its history. For checkers (``cas fsck``);
        writers wait on it.

        An update whose writer is provably dead (or outlived its lease) is first
        settled, as the next writer would settle it (rolled forward, see
        ``refs/store.py``): it is not reported. If settling fails (read-only
        credentials, say), it is reported."""
        for attempt in range(_SETTLE_ROUNDS + 1):
            history = self._log.all(name)
            value = self.read(name)
            if not history or history[-1].entry.new == value:
                return None
            head = history[-1]
            if attempt == _SETTLE_ROUNDS:
                break
            try:
                if not self._settle(name, head, value):
                    break
            except OSError:
                break
        verdict = self._verdict(head)
        return (
            head.entry,
            describe(head.record),
            verdict.alive,
            remove_command(self._protocol, head.path),
        )

    def restore(self, name: str) -> tuple[bytes, str | None] | None:
        """Put back a ref file that does not hold an id (truncated, emptied, rewritten
        outside refs) from the newest entry of its history, by compare-and-swap on the
        damaged bytes. Returns ``(the damaged bytes, the id it holds now)`` (None: the
        history says deleted, so the file is removed), or None if the file reads.

        Raises :class:`RefError` if there is no history to restore from or the file
        changed meanwhile."""
        path = ref_path(self.root, name)
        current = self.conditional.read(path)
        if current is None:
            return None
        try:
            decode_ref(current[0], path)
        except RefError:
            pass
        else:
            return None
        history = self._log.all(name)
        if not history:
            raise RefError(f"ref file {path} is corrupt and {name!r} has no history to restore it")
        new = history[-1].entry.new
        if new is None:
            done = self.conditional.remove(path, current[1])
        else:
            done = self.conditional.replace(path, encode_ref(new), current[1])
        if not done:
            raise RefError(f"ref file {path} changed while it was being restored; run again")
        return current[0], new

    def prune_log(self, name: str, older_than: float) -> int:
        """Delete the oldest history entries written before ``older_than``; return how many.

        The newest entry (and the one before an update still in flight) always stays,
        and only a run of oldest entries goes, so what stays is still a chain.
        """
        history = self._log.all(name)
        keep = 2 if history and history[-1].entry.new != self.read(name) else 1
        doomed: builtins.list[str] = []
        for stored in history[:-keep]:
            if stored.entry.time >= older_than:
                break
            doomed.append(stored.path)
        if doomed or (history and history[0].seq > 1):
            # Before entry 1 goes (see _fresh); also for histories pruned before markers.
            marker = json.dumps({"time": time.time(), "who": self.identity}) + "\n"
            self.conditional.create(pruned_path(self.root, name), marker.encode())
        deleted = 0
        for path in doomed:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                continue  # a claim in a freed slot, taken back by its writer meanwhile
            deleted += 1
        return deleted

    def _history(self, name: str) -> builtins.list[Stored]:
        """Every entry of ``name`` that happened, oldest first."""
        history = self._log.all(name)
        if history and history[-1].entry.new != self.read(name):
            history.pop()  # claimed, not (yet) published: it has not happened
        return history
