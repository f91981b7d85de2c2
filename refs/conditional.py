"""The seam for storage backends: compare-and-swap on one small file.

:class:`Conditional` is the whole contract a backend implements so that
:class:`cas.refs.RefStore` can run on it; the store's algorithm (see ``refs/store.py``)
uses nothing else to write. Implementations:

==========================  ===============================================  ===========
class                       primitive                                        scope
==========================  ===============================================  ===========
``LocalConditional``        ``<path>.lock`` made with O_CREAT|O_EXCL,        processes
                            temporary file + fsync + rename                  and hosts
``ProcessLocalConditional`` one in-process lock (``memory://``)              one process
S3 (``refs/services``)      ``If-None-Match: *`` / ``If-Match: <etag>``      everywhere
GCS (``refs/services``)     ``ifGenerationMatch=0`` / ``=<generation>``      everywhere
Azure (``refs/services``)   ``If-None-Match: *`` / ``If-Match: <etag>``      everywhere
==========================  ===============================================  ===========
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class Conditional(ABC):
    """Compare-and-swap on one small file of one filesystem.

    Paths are those of the fsspec filesystem the :class:`~refs.RefStore` lists with,
    without protocol (``"bucket/prefix/refs/main"``, ``"/tmp/x/.cas/refs/main"``).

    Contract, which every implementation must keep and the shared suite
    (``cas.refs.testing.RefStoreTests``) checks:

    - **Atomic.** A reader sees the whole content of one completed write or nothing,
      never a partial file.
    - **Linearizable.** Once a write has returned, every later :meth:`read` (from any
      process or host within :attr:`across_processes`) and every later listing of the
      filesystem sees it. S3, GCS and Azure Blob are strongly consistent; an eventually
      consistent store cannot implement this class.
    - **Versions.** :meth:`read` returns an opaque version token with the content. A
      token may be per write (GCS generation, Azure ETag, a local stamp) or derived
      from the content (an S3 ETag is the MD5 of the bytes). ``RefStore`` is correct
      with either: it only relies on "the file still holds what I read".
    - **False means the precondition failed**, nothing else. A failure to reach the
      storage raises (an ``OSError`` subclass, as fsspec does). A write whose outcome
      is unknown (a timeout after the request left) must raise, not guess;
      ``RefStore`` re-reads to find out.
    - **Readers never wait.** A lock an implementation takes to write must not block
      :meth:`read`.
    - **Trees of names.** On a filesystem with real folders a file cannot sit where a
      folder is. Writes that meet one raise the builtin error (``NotADirectoryError``,
      ``FileExistsError`` for a parent that is a file, ``IsADirectoryError`` for a
      non-empty folder at ``path``); ``RefStore`` turns these into ``NameConflict``.
      :meth:`create` removes an *empty* folder sitting at ``path``.
    - **Locks may raise** :class:`cas.refs.RefLocked` when a lock stays held past a bounded
      wait; the message names the owner and how to clear it.
    """

    #: False when the guarantee holds only inside one process (``memory://``).
    across_processes: ClassVar[bool] = True

    @abstractmethod
    def read(self, path: str) -> tuple[bytes, str] | None:
        """The content of ``path`` and its version token, or ``None`` if no file is there.

        A folder at ``path``, or a file where one of its parent folders should be,
        also reads as ``None``.
        """

    @abstractmethod
    def create(self, path: str, data: bytes) -> bool:
        """Write ``data`` at ``path`` iff no file is there, atomically; False if one is.

        Parent folders are created as needed. Of concurrent creators of one path,
        exactly one gets True.
        """

    @abstractmethod
    def replace(self, path: str, data: bytes, version: str) -> bool:
        """Write ``data`` at ``path`` iff it still holds ``version``; False if it moved or went."""

    @abstractmethod
    def remove(self, path: str, version: str) -> bool:
        """Delete ``path`` iff it still holds ``version``; False if it moved or went."""

    def read_data(self, path: str) -> bytes | None:
        """The content of ``path`` without a version token, or ``None``: what readers need.

        Same rules as :meth:`read`; a backend overrides it when the token costs work.
        """
        got = self.read(path)
        return None if got is None else got[0]

    def discard_empty_dirs(self, path: str, stop: str) -> None:  # noqa: B027
        """Remove the folders above ``path`` that are now empty, up to ``stop`` (kept).

        Object stores have no folders; the default does nothing.
        """
