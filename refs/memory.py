"""Compare-and-swap on any fsspec filesystem under one in-process lock.

Meant for ``memory://``, whose files live in the process anyway: there the guarantee
is complete. On any other filesystem it would only serialize the writers of this
one process, which is why :class:`~refs.RefStore` never picks it by itself for
anything but a ``MemoryFileSystem``.
"""

from __future__ import annotations

import hashlib
import threading
from typing import ClassVar

from fsspec import AbstractFileSystem

from .conditional import Conditional

# One lock for every instance: two RefStores on memory:// share the same files.
_LOCK = threading.RLock()


class ProcessLocalConditional(Conditional):
    """Compare-and-swap serialized by a lock held in this process only.

    Version tokens are a digest of the content, like S3 ETags: equal content, equal
    token. ``RefStore`` is correct with such tokens, and running the suite here
    checks that it is.
    """

    across_processes: ClassVar[bool] = False

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    @staticmethod
    def _token(data: bytes) -> str:
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        with _LOCK:
            try:
                data = self.fs.cat_file(path)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                return None
            return data, self._token(data)

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        with _LOCK:
            if self.fs.isfile(path):
                return False
            if self.fs.isdir(path):
                if self.fs.find(path):
                    raise IsADirectoryError(path)
                self.fs.rmdir(path)
            self.fs.pipe_file(path, data)
            return True

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        with _LOCK:
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            self.fs.pipe_file(path, data)
            return True

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        with _LOCK:
            current = self.read(path)
            if current is None or current[1] != version:
                return False
            self.fs.rm_file(path)
            return True
