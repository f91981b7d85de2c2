"""The files under a store's root: the small seam between cas and a filesystem.

:class:`Storage` is the contract (a small abstract core, capability flags, derived
helpers); :mod:`cas.storage.local` talks to the operating system directly (the hot path
of a local store: no fsspec dispatch on every small write) and :mod:`cas.storage.remote`
holds any fsspec filesystem (memory, S3, GCS, Azure, ...). Paths are relative to the
root and use ``/``. Absence is ``None``/``False``/``FileNotFoundError``; any other
failure is raised, never read as "absent" (the fsspec ``exists()`` trap).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import fsspec

if TYPE_CHECKING:
    from cas.refs import Conditional

#: Writers name their temporary files with this prefix, in the folder of the final name;
#: listings of objects skip them and gc removes old ones.
TEMP_PREFIX: Final = ".tmp-"


@dataclass(frozen=True, slots=True)
class Stat:
    size: int
    mtime: float  # seconds since the epoch
    #: The object store's version token of the file, where its listing gives one (the
    #: S3 ETag, the GCS generation, the Azure ETag): it changes whenever the bytes do.
    version: str | None = None


class Storage(ABC):
    """Files under one root. Writes are atomic: a reader sees all of a file or none."""

    fs: fsspec.AbstractFileSystem
    root: str  # the root inside ``fs``, without protocol
    url: str  # the root as a URL a user would type
    #: Requests worth having in flight at once for chunk reads and writes: 0 for a local
    #: disk (the CPU pool is enough), more for object stores, where each waits on the network.
    io_threads: int = 0
    #: A folder of this machine holding the root, or None (memory, buckets): the local
    #: catalog then lives in ``<root>/index``, refs take lock files.
    local_dir: str | None = None
    #: True if listings give each file's size and age (object stores); False if they
    #: give names alone and a stat is one system call (a local disk).
    listing_stats: bool = False
    #: True if :meth:`touch` is cheap enough to do on every dedup hit (a utime); on
    #: object stores it is a server-side copy, done only for old objects.
    cheap_touch: bool = False

    @abstractmethod
    def read(self, rel: str) -> bytes:
        """The whole file; ``FileNotFoundError`` if absent."""

    def read_head(self, rel: str, n: int) -> bytes:
        """The first ``n`` bytes (all of a shorter file); ``FileNotFoundError`` if absent."""
        return self.read(rel)[:n]

    #: True if :meth:`create` is a single request the service itself checks (S3, GCS,
    #: Azure Blob): a writer that expects its object to be new may then skip the check
    #: for presence before the write.
    creates: bool = False

    @abstractmethod
    def write_atomic(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Create or replace ``rel`` so that no reader sees a partial file. With
        ``durable=False`` the write may stay in memory until the next :meth:`sync`
        (a batch writes many files, then syncs once)."""

    def sync(self, *, force: bool = False) -> None:  # noqa: B027 - a no-op unless deferred
        """Make every write of this process so far durable (a no-op where each write
        already is, object stores, and when nothing was written unsynced since).
        ``force``: sync even if this storage wrote nothing unsynced itself, for files
        written beside it under the same root (the refs' own files)."""

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; ``FileNotFoundError`` if absent."""
        return self.read(rel)[start : start + length]

    def read_ranges(self, rel: str, spans: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (start, end) span of one file, in order."""
        return [self.read_range(rel, start, end - start) for start, end in spans]

    def create(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` as :meth:`write_atomic` does unless a file is there: True if this
        call wrote it, False if a file was there (nothing is written then).

        Only where ``creates`` is True is this one request that the service checks; here
        it is a check, then a write. Callers use it for content-addressed files, where
        two writers racing write the same bytes, so either form is safe for them.
        """
        if self.stat(rel) is not None:
            return False
        self.write_atomic(rel, data)
        return True

    @abstractmethod
    def stat(self, rel: str) -> Stat | None:
        """Size and modification time, or None if absent."""

    @abstractmethod
    def touch(self, rel: str) -> bool:
        """Refresh the modification time; False if the file is absent."""

    @abstractmethod
    def delete(self, rel: str) -> bool:
        """Remove a file; False if it was already absent."""

    @abstractmethod
    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        """Every file below ``rel_dir`` (relative paths), from listings."""

    @abstractmethod
    def listdir(self, rel_dir: str) -> list[str]:
        """Names of the files directly in ``rel_dir`` (empty if absent)."""

    @abstractmethod
    def conditional(self, *, durable: bool = True) -> Conditional:
        """The compare-and-swap primitive refs use on this storage (``durable=False``:
        unsynced, for a batch that syncs once after its last publish)."""

    def list_after(self, rel_dir: str, start: str) -> list[str] | None:
        """Paths of the files below ``rel_dir`` whose path inside it sorts after
        ``start``, in order, from listings that begin there on the service's side (a
        listing of what is new costs what is new, not what the folder holds); None
        where the storage cannot, and the caller lists otherwise."""
        return None

    def exists(self, rel: str) -> bool:
        return self.stat(rel) is not None

    def delete_many(self, rels: list[str]) -> int:
        """Remove many files; backends with batch deletes override this."""
        return sum(1 for rel in rels if self.delete(rel))

    def is_empty(self) -> bool:
        """True if the root holds no files at all (or does not exist)."""
        return not self.listdir("") and not any(True for _ in self.walk(""))
