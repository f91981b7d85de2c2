"""Where a root's files live: a folder on this machine or any fsspec filesystem.

See :mod:`cas.storage.base` for the contract; :func:`open_storage` picks the
implementation from a root URL.
"""

from __future__ import annotations

import os
from typing import Any, Final

import fsspec

from cas.refs.services import mtime_of
from cas.storage.base import TEMP_PREFIX, Stat, Storage
from cas.storage.local import LocalStorage
from cas.storage.remote import FsspecStorage

__all__ = [
    "TEMP_PREFIX", "FsspecStorage", "LocalStorage", "Stat", "Storage", "mtime_of", "open_storage",
]  # fmt: skip


_OBJECT_PROTOCOLS: Final = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def open_storage(
    url: str | os.PathLike[str], *, fsync: bool = True, **storage_options: Any
) -> Storage:
    """The storage behind a root URL: a plain path or ``file://`` is local, anything else fsspec."""
    text = os.fspath(url)
    if "://" not in text:
        return LocalStorage(text, fsync=fsync)
    protocol, _, rest = text.partition("://")
    if protocol in ("file", "local"):
        return LocalStorage(rest, fsync=fsync)
    if protocol in _OBJECT_PROTOCOLS:
        # fsspec caches listings forever by default: another machine's writes (journal
        # entries, objects) would never show. Every listing here asks the service.
        storage_options.setdefault("use_listings_cache", False)
    fs, root = fsspec.core.url_to_fs(text, **storage_options)
    if protocol == "memory":
        root = "/" + root.lstrip("/")
    return FsspecStorage(fs, root, text.rstrip("/"))
