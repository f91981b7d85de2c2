"""The format marker: ``<root>/CAS``, a msgpack map that says a root is a cas store,
of which format, and how its content is cut (docs/format.md, "The marker").

A store is created at format 2; it is marked 3 by its first delta, so that "format 3"
says a store may hold deltas (gc then reads each chunk's header for a base), and 4 by
its first XOR delta (:mod:`cas.objects.planes`). An older
store is read as it is and is raised before the first object that needs the newer
format is written, so that a cas which cannot read it refuses the store instead of
misreading it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final

import msgpack

from cas.errors import FormatError
from cas.objects.chunking import DEFAULT_PARAMS, ChunkParams
from cas.objects.kinds import pack
from cas.storage import Storage

MARKER: Final = "CAS"
#: 2: packs (``packs/``, :mod:`cas.objects.packs`) beside loose objects. A store of
#: format 1 is read as it is and becomes format 2 when its first pack is written.
#: 3: deltas (:mod:`cas.objects.delta`); a store of format 1 or 2 becomes 3 when its
#: first delta is written, so that a cas which cannot read deltas refuses it.
#: 4: XOR deltas (a delta whose frame is the byte-grouped XOR with a base of the same
#: length); a store becomes 4 when its first one is written.
FORMAT_VERSION: Final = 4
PACKS_FROM: Final = 2
DELTAS_FROM: Final = 3
XOR_FROM: Final = 4

#: Held while the marker is raised and the format a process keeps in memory follows it.
format_lock: Final = threading.Lock()


def open_marker(storage: Storage, create: bool) -> tuple[ChunkParams, int]:
    """(chunking parameters, format) of the store at ``storage``, read from its marker;
    with ``create``, an empty root becomes a new store of format 2."""
    url = storage.url
    try:
        raw = storage.read(MARKER)
    except FileNotFoundError:
        raw = None
    if raw is None:
        if not create:
            raise FormatError(f"{url} is not a cas store (no CAS marker); run 'cas init'")
        if not _root_is_empty(storage):
            if storage.exists(MARKER):  # another process created it meanwhile
                return open_marker(storage, create=False)
            raise FormatError(
                f"{url} holds files but is not a cas store (no CAS marker); "
                "use an empty folder or bucket prefix for a new store"
            )
        marker = {
            "format": PACKS_FROM,  # 3 only once a delta is written: gc relies on it
            "hash": "blake3",
            "compression": "zstd",
            "chunking": DEFAULT_PARAMS.to_dict(),
        }
        storage.write_atomic(MARKER, pack(marker))
        return DEFAULT_PARAMS, PACKS_FROM
    return _parse(url, raw)


def _parse(url: str, raw: bytes) -> tuple[ChunkParams, int]:
    try:
        marker = msgpack.unpackb(raw, raw=False)
        version = marker["format"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise FormatError(f"{url}/CAS is not a cas format marker ({exc!r})") from exc
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise FormatError(
            f"{url} is a cas store of format {version!r}; this cas reads format "
            f"{FORMAT_VERSION}: upgrade cas to use it"
        )
    try:
        params = ChunkParams.from_dict(marker["chunking"])
    except (KeyError, TypeError) as exc:
        raise FormatError(f"{url}/CAS has no valid chunking parameters ({exc!r})") from exc
    if marker.get("hash") != "blake3":
        raise FormatError(f"{url} uses hash {marker.get('hash')!r}; cas knows only blake3")
    return params, version


def stored_format(storage: Storage) -> int | None:
    """The format the marker says now (another process may have raised it), or None
    if it does not read as one this cas knows."""
    with contextlib.suppress(FileNotFoundError, ValueError, msgpack.UnpackException):
        found = msgpack.unpackb(storage.read(MARKER), raw=False).get("format")
        if isinstance(found, int) and found <= FORMAT_VERSION:
            return found
    return None


def raise_format(storage: Storage, version: int) -> None:
    """Mark the store as of at least ``version``: never lowered, also by two processes
    raising it at once (to 3 and to 4, say), as the marker is replaced only if it still
    holds what was read (the compare-and-swap refs use). The caller holds
    :data:`format_lock`."""
    cond = storage.conditional()
    path = f"{storage.root}/{MARKER}"
    for _ in range(_RAISE_TRIES):
        got = cond.read(path)
        if got is None:
            raise FormatError(f"{storage.url} has lost its CAS marker; run 'cas fsck'")
        raw, version_token = got
        marker = msgpack.unpackb(raw, raw=False)
        if marker.get("format", 1) >= version:
            return
        if cond.replace(path, pack({**marker, "format": version}), version_token):
            return
    raise FormatError(f"{storage.url}/CAS kept changing while format {version} was marked")


#: Rounds of read and conditional replace before raise_format gives up (each lost round
#: means another process raised the marker meanwhile; the next read sees it).
_RAISE_TRIES: Final = 20


def _root_is_empty(storage: Storage) -> bool:
    names = [n for n in storage.listdir("") if not n.startswith(".")]
    if names:
        return False
    return not any(not rel.rsplit("/", 1)[-1].startswith(".") for rel, _ in storage.walk(""))
