"""gc's reads of a local root's loose objects, by each fan-out folder's descriptor.

At a million objects gc's time on a local disk is system calls: a header read per file
a folder artifact holds, a ``stat`` per object nothing reaches, an ``unlink`` per object
it deletes. A path looked up from the root costs as much as the read itself (hot, on
this machine: 19 us an open and read by the full path, 7 us by name under the fan-out
folder's descriptor, ``openat``), so these open each folder once and name objects by
their 62 characters under it. Anything unusual (a folder or file absent, a race with a
writer) is left to the caller's general path, which knows packs and batches.
"""

from __future__ import annotations

import os
import stat as stat_module
from typing import Final

from cas.objects.codec import HEAD_SIZE
from cas.objects.space import OBJECTS
from cas.storage import Stat

_FLAGS: Final = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS: Final = _FLAGS | getattr(os, "O_DIRECTORY", 0)


def supported() -> bool:
    """Whether this platform opens a file relative to a folder's descriptor."""
    return os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


class LocalObjects:
    """The 256 fan-out folders of ``<root>/objects``, open; close it (or use ``with``)."""

    def __init__(self, root: str) -> None:
        self._fds: dict[str, int] = {}
        base = os.path.join(root, OBJECTS)
        try:
            for i in range(256):
                fan = f"{i:02x}"
                try:
                    self._fds[fan] = os.open(os.path.join(base, fan), _DIR_FLAGS)
                except (FileNotFoundError, NotADirectoryError):
                    continue  # no object there yet
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> LocalObjects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def head(self, oid: str) -> bytes | None:
        """The first bytes of a loose object's stored form (enough for its header and a
        delta's base), or None if it is not there (the caller looks further)."""
        fan = self._fds.get(oid[:2])
        if fan is None:
            return None
        try:
            fd = os.open(oid[2:], _FLAGS, dir_fd=fan)
        except FileNotFoundError:
            return None
        try:
            return os.read(fd, HEAD_SIZE)  # a regular file reads short only at its end
        finally:
            os.close(fd)

    def stat(self, oid: str) -> Stat | None:
        """Size and age of a loose object; None if it is absent."""
        fan = self._fds.get(oid[:2])
        if fan is None:
            return None
        try:
            st = os.stat(oid[2:], dir_fd=fan)
        except FileNotFoundError:
            return None
        if stat_module.S_ISDIR(st.st_mode):
            return None  # a folder is not an object (as the storage's own stat says)
        return Stat(st.st_size, st.st_mtime)

    def unlink(self, oid: str) -> bool:
        """Remove a loose object; False if it was gone already."""
        fan = self._fds.get(oid[:2])
        if fan is None:
            return False
        try:
            os.unlink(oid[2:], dir_fd=fan)
        except FileNotFoundError:
            return False
        return True
