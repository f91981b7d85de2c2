"""This machine's copies of a remote root's index files (pack indexes and multi-pack
indexes), kept between processes. Each file is write-once and named by a hash, so a
copy is never stale, only perhaps of a file gc has removed since; each is verified when
read (a damaged copy is dropped and the root's read instead). Nothing here is fsync-ed
and no failure is raised: a copy only saves a read."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cas.errors import IntegrityError
from cas.objects.ids import is_id

_T = TypeVar("_T")


def names(folder: Path, suffix: str) -> list[str]:
    """The ids of the files ``<id><suffix>`` in ``folder``, newest first."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name[: -len(suffix)]
                if entry.name.endswith(suffix) and is_id(name):
                    try:
                        found.append((entry.stat().st_mtime, name))
                    except FileNotFoundError:
                        continue  # removed by another process meanwhile
    except FileNotFoundError:
        return []
    return [name for _, name in sorted(found, reverse=True)]


def get(folder: Path, file: str, parse: Callable[[bytes], _T]) -> _T | None:
    """The copy of ``file`` parsed (and so verified) by ``parse``, or None."""
    path = folder / file
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return None
    except IntegrityError:  # a damaged copy: the root's is read instead
        path.unlink(missing_ok=True)
        return None


def put(folder: Path, file: str, raw: bytes) -> None:
    """Keep a copy of ``file``, atomically (a reader never sees half of one)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp-{file}-{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(raw)
        os.replace(tmp, folder / file)
    except OSError:
        pass
