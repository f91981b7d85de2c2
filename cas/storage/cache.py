"""This machine's cache folder: what cas derives from remote roots and keeps between
processes (a remote root's catalog, its pack indexes; checkouts). Everything in it is
derived and verified when read, so deleting it loses nothing; ``CAS_CACHE_DIR`` moves it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import platformdirs


def cache_root() -> Path:
    return Path(os.environ.get("CAS_CACHE_DIR") or platformdirs.user_cache_dir("cas"))


def remote_cache(url: str) -> Path:
    """The cache folder of one remote root, keyed by its URL."""
    key = hashlib.blake2b(url.encode(), digest_size=10).hexdigest()
    return cache_root() / "remote" / key
