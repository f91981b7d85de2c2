"""Reading the history files of refs: list, read, find the newest, gather all.

``History`` knows where entries live and how they are numbered (``refs/log.py``);
it never writes. The update protocol that creates entries is in ``refs/store.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .files import Files
from .log import LogEntry, decode_entry, entry_path, parse_entry_basename
from .names import is_valid_ref_name, log_dir

# How far past the last known newest entry to search by reading (2**_GALLOP
# entries) before listing the whole history instead.
_GALLOP = 8


@dataclass(frozen=True, slots=True)
class Stored:
    """A history entry as stored: its number, file, bytes, value and whole record."""

    seq: int
    path: str
    data: bytes
    entry: LogEntry
    record: dict[str, Any]


class History:
    """The history files of every ref under ``root``, read through ``files``."""

    def __init__(self, files: Files, root: str) -> None:
        self.files = files
        self.root = root

    def numbers(self, name: str) -> dict[int, str]:
        """Sequence number -> file of every entry of ``name`` (one listing)."""
        folder = log_dir(self.root, name)
        found = {}
        for base in self.files.listdir(folder):
            seq = parse_entry_basename(base)
            if seq is not None:
                found[seq] = f"{folder}/{base}"
        return found

    def entry(self, name: str, seq: int) -> Stored | None:
        """Entry ``seq`` of ``name`` (one GET), or None if there is none."""
        path = entry_path(self.root, name, seq)
        data = self.files.cat(path)
        if data is None:
            return None
        entry, record = decode_entry(data, path)
        return Stored(seq, path, data, entry, record)

    def exists(self, name: str, seq: int) -> bool:
        """True if entry ``seq`` of ``name`` is there (one GET; a stat on a local disk)."""
        return self.files.exists(entry_path(self.root, name, seq))

    def newest(self, name: str, known: Stored | None, value: str | None) -> Stored | None:
        """The newest entry of ``name``, or None if it has no history.

        ``known`` is the newest entry the caller saw settled before, ``value`` what
        the ref holds now: from ``known`` a few reads usually suffice (see
        :meth:`gallop`); otherwise one listing.
        """
        if known is not None:
            found = self.gallop(name, known)
            # Nothing newer, yet the ref disagrees: `known` may have been pruned
            # while the caller did not look; the listing tells.
            if found is not None and (found is not known or known.entry.new == value):
                return found
        while True:
            numbers = self.numbers(name)
            if not numbers:
                return None
            newest = self.entry(name, max(numbers))
            if newest is not None:
                return newest
            # pruned or taken back between listing and reading: list again

    def gallop(self, name: str, known: Stored) -> Stored | None:
        """The newest entry, searched from ``known`` without listing; None if too far.

        Entries past a settled one are numbered without gaps, so reading numbers
        known+1, +2, +4, ... until one is missing, then bisecting, finds the newest
        in a few reads where a listing would return the whole history.
        """
        newest, step = known, 1
        for _ in range(_GALLOP):
            found = self.entry(name, known.seq + step)
            if found is None:
                break
            newest, step = found, step * 2
        else:
            return None
        low, high = newest.seq, known.seq + step  # low is there, high is not
        while high - low > 1:
            middle = (low + high) // 2
            found = self.entry(name, middle)
            if found is None:
                high = middle
            else:
                newest, low = found, middle
        return newest

    def all(self, name: str) -> list[Stored]:
        """Every entry of ``name``, oldest first, an update still in flight included."""
        numbers = self.numbers(name)
        contents = self.files.cat_many([numbers[seq] for seq in sorted(numbers)])
        history = []
        for seq in sorted(numbers):
            data = contents.get(numbers[seq])
            if data is not None:
                entry, record = decode_entry(data, numbers[seq])
                history.append(Stored(seq, numbers[seq], data, entry, record))
        return history

    def names(self) -> list[str]:
        """Sorted names of every ref that has history (one listing)."""
        logs = f"{self.root}/logs/"
        names = set()
        for path in self.files.find(logs.rstrip("/")):
            folder, _, base = path.rpartition("/")
            if parse_entry_basename(base) is not None and folder.startswith(logs):
                name = folder[len(logs) :]
                if is_valid_ref_name(name):
                    names.add(name)
        return sorted(names)
