"""Every ref and every history entry in one read: a listing, and a snapshot that spares
reading again what has not changed (git's packed-refs, kept as a cache).

On an object store, reading every ref and history entry one GET at a time is what made
``cas gc`` cost several requests per name. :meth:`cas.refs.RefStore.state` lists ``refs/``
and ``logs/`` with each file's version token (S3 ETag, GCS generation, Azure ETag: the
token a read returns, which changes whenever the file does) and reads only the files
that the newest snapshot does not hold at that version. A snapshot is never the truth:
a file is taken from it only when the listing shows it unchanged since it was read, so
a stale, partial or old snapshot costs reads, never a wrong answer.

A snapshot is the file ``logs/.refs/<YYYYmmddTHHMMSS.ffffffZ>-<sha256 of the rest,
first 32 hex>``: the line ``CASREFS1``, then a zstd frame of one msgpack map
``{"format": 1, "taken": <seconds>, "refs": [[name, id, version], ...],
"entries": [[name, seq, version, entry bytes], ...]}``. It is written (with an
exclusive create) by a caller that had to read at least :data:`WRITE_AFTER` files the
newest one lacked; the :data:`KEEP` newest stay. One that does not verify is skipped.
Local disks and fsspec filesystems give no version tokens: there ``state`` answers None
and callers read as before.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zstandard

from .files import Files
from .ids import decode_ref
from .log import PRUNED, LogEntry, decode_entry, entry_path, parse_entry_basename
from .names import is_valid_ref_name

MAGIC: Final = b"CASREFS1\n"
FOLDER: Final = ".refs"
#: A snapshot is written when a state had to read at least this many files.
WRITE_AFTER: Final = 100
#: How many snapshots stay (the newest first).
KEEP: Final = 2


@dataclass(frozen=True, slots=True)
class RefState:
    """Every ref and every history entry as read at one time (entries still in flight
    included), with their version tokens; ``read`` counts the files read to build it
    (the rest came from a snapshot)."""

    refs: dict[str, tuple[str, str]]  # name -> (id, version)
    entries: dict[tuple[str, int], tuple[str, bytes]]  # (name, seq) -> (version, bytes)
    read: int = 0
    #: Names whose history holds the ``~pruned`` marker (from the listing).
    pruned: frozenset[str] = frozenset()

    def items(self) -> builtins.list[tuple[str, str]]:
        """Sorted ``(name, id)`` of every ref, as :meth:`cas.refs.RefStore.items`."""
        return sorted((name, rid) for name, (rid, _) in self.refs.items())

    def prunable(self, older_than: float) -> builtins.list[str]:
        """Names :meth:`cas.refs.RefStore.prune_log` has work for: an entry other than the
        newest written before ``older_than``, or a history that lost its first entry
        and lacks the ``~pruned`` marker (pruned before markers were written)."""
        first: dict[str, tuple[int, LogEntry]] = {}
        newest: dict[str, int] = {}
        for name, seq, entry in self.history():  # by name, then number
            first.setdefault(name, (seq, entry))
            newest[name] = seq
        return [
            name
            for name, (seq, entry) in first.items()
            if (seq < newest[name] and entry.time < older_than)
            or (seq > 1 and name not in self.pruned)
        ]

    def history(self) -> Iterator[tuple[str, int, LogEntry]]:
        """``(name, seq, entry)`` of every history entry, by name then number."""
        for name, seq in sorted(self.entries):
            yield name, seq, decode_entry(self.entries[name, seq][1], f"logs/{name}/~{seq}")[0]


def gather(files: Files, root: str) -> RefState | None:
    """Every ref and history entry under ``root``: two listings, the newest snapshot,
    and a read of each file the snapshot does not hold at its listed version. None
    where listings give no versions. Writes a new snapshot after reading
    :data:`WRITE_AFTER` files or more."""
    ref_versions = files.find_versions(f"{root}/refs")
    log_versions = files.find_versions(f"{root}/logs")
    if ref_versions is None or log_versions is None:
        return None
    refs_top, logs_top = f"{root}/refs/", f"{root}/logs/"
    ref_files = {
        path[len(refs_top) :]: _token(version)
        for path, version in ref_versions.items()
        if path.startswith(refs_top) and is_valid_ref_name(path[len(refs_top) :])
    }
    entry_files: dict[tuple[str, int], str] = {}
    pruned: set[str] = set()
    snapshots = []
    for path, version in log_versions.items():
        folder, _, base = path.rpartition("/")
        if folder == f"{root}/logs/{FOLDER}":
            snapshots.append(path)
            continue
        seq = parse_entry_basename(base)
        name = folder[len(logs_top) :]
        if base == PRUNED:
            pruned.add(name)
        if seq is not None and folder.startswith(logs_top) and is_valid_ref_name(name):
            entry_files[name, seq] = _token(version)
    old = _newest(files, sorted(snapshots))
    refs: dict[str, tuple[str, str]] = {}
    entries: dict[tuple[str, int], tuple[str, bytes]] = {}
    want_refs: dict[str, str] = {}  # path -> name
    want_entries: dict[str, tuple[str, int]] = {}  # path -> (name, seq)
    for name, version in ref_files.items():
        known = old.refs.get(name)
        if known is not None and known[1] == version:
            refs[name] = known
        else:
            want_refs[f"{refs_top}{name}"] = name
    for key, version in entry_files.items():
        held = old.entries.get(key)
        if held is not None and held[0] == version:
            entries[key] = held
        else:
            want_entries[entry_path(root, *key)] = key
    want = [*want_refs, *want_entries]
    # What changed between the listing and the read is taken at the version read.
    for path, (data, quoted) in (files.cat_many_versions(want) if want else {}).items():
        version = _token(quoted)
        if path in want_refs:
            refs[want_refs[path]] = (decode_ref(data, path), version)
        else:
            decode_entry(data, path)  # a damaged entry raises here, as a read of it does
            entries[want_entries[path]] = (version, data)
    state = RefState(refs, entries, len(want), frozenset(pruned))
    if len(want) >= WRITE_AFTER:
        with contextlib.suppress(OSError):  # a cache: the next reader reads again
            _write(files, root, state, sorted(snapshots))
    return state


_EMPTY: Final = RefState({}, {})


def _newest(files: Files, snapshots: builtins.list[str]) -> RefState:
    """The newest snapshot that reads and verifies (an empty state if none does)."""
    for path in reversed(snapshots[-KEEP - 1 :]):
        data = files.cat(path)
        if data is None:
            continue
        state = decode(data, path.rpartition("/")[2])
        if state is not None:
            return state
    return _EMPTY


def encode(state: RefState, taken: float) -> tuple[str, bytes]:
    """(file name, bytes) of a snapshot of ``state``."""
    body: dict[str, Any] = {
        "format": 1,
        "taken": taken,
        "refs": [[name, rid, version] for name, (rid, version) in sorted(state.refs.items())],
        "entries": [
            [name, seq, version, data]
            for (name, seq), (version, data) in sorted(state.entries.items())
        ],
    }
    data = MAGIC + zstandard.ZstdCompressor(level=3).compress(msgpack.packb(body))
    when = time.strftime("%Y%m%dT%H%M%S", time.gmtime(taken))
    micros = int(taken * 1e6) % 1_000_000
    return f"{when}.{micros:06d}Z-{_digest(data)}", data


def decode(data: bytes, basename: str) -> RefState | None:
    """The state a snapshot holds; None if it does not verify against its name or
    does not decode (a damaged or foreign file is skipped, never trusted)."""
    if not basename.endswith(f"-{_digest(data)}") or not data.startswith(MAGIC):
        return None
    try:
        body = msgpack.unpackb(
            zstandard.ZstdDecompressor().decompress(data[len(MAGIC) :], max_output_size=1 << 31)
        )
        refs = {str(n): (str(r), str(v)) for n, r, v in body["refs"]}
        entries = {(str(n), int(s)): (str(v), bytes(d)) for n, s, v, d in body["entries"]}
    except (ValueError, TypeError, KeyError, zstandard.ZstdError, msgpack.UnpackException):
        return None
    if body.get("format") != 1:
        return None
    return RefState(refs, entries)


def _token(version: str) -> str:
    """A version token as listings and reads both give it (Azure quotes an ETag in a
    read's answer, not in a listing)."""
    return version.strip('"')


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _write(files: Files, root: str, state: RefState, older: builtins.list[str]) -> None:
    name, data = encode(state, time.time())
    folder = f"{root}/logs/{FOLDER}"
    with files.fs.open(f"{folder}/{name}", "wb") as out:
        out.write(data)
    for path in older[: max(0, len(older) + 1 - KEEP)]:
        with contextlib.suppress(FileNotFoundError):
            files.fs.rm_file(path)
