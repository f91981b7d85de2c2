"""The version a save builds on when its name holds none: its nearest kin.

A new version is stored as deltas against the content its name holds now
(:mod:`cas.objects.delta_bases`). Versions are often named apart instead
(``ckpt/epoch-2``, ``data/2026-12-02``, ``pkg/2.0.32``) or derived from another
artifact (``parent_ids``): such a save takes as its previous version the first parent
of its kind, else the newest other name of its kind in its folder (``pkg/`` for
``pkg/2.0.32``). Of its kind: saved by the same materializer, as a folder or not alike.

Bounded: the candidates come from this machine's catalog as it is (one local read,
no request, not caught up: on a remote root what it holds is enough); without one,
only the first parent's record is read (one object, as a save under a name that holds
a version reads that version's record). A hint only: whatever it names may be gone or
damaged, and the save then stores its objects plain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import catalog as _catalog
from cas.errors import CasError
from cas.repo.repository import Repository

#: The newest records under a name's folder looked at for a sibling of its kind.
SIBLINGS = 16


def nearest_version(
    repo: Repository, name: str, parents: Sequence[str], materializer: str, folder: bool
) -> str | None:
    """The content id of the version a first save of ``name`` builds on, or None."""
    try:
        catalog = repo.catalog_at_hand()
        if catalog is None:
            if not parents:
                return None
            return _content(repo.record(parents[0], tags=False), materializer, folder)
        for pid in parents:
            found = _content(catalog.get(pid), materializer, folder)
            if found is not None:
                return found
        return _sibling(catalog, name, materializer, folder)
    except (CasError, _catalog.CatalogError, OSError):
        return None


def _sibling(catalog: _catalog.Catalog, name: str, materializer: str, folder: bool) -> str | None:
    """The newest other name directly in ``name``'s folder, of its kind."""
    head, sep, _ = name.rpartition("/")
    if not sep:
        return None  # a top-level name: every other one is no nearer than the rest
    prefix = head + "/"
    for record in catalog.list(prefix=prefix, limit=SIBLINGS):
        other = str(record.get("name") or "")
        if other == name or "/" in other[len(prefix) :]:
            continue
        found = _content(record, materializer, folder)
        if found is not None:
            return found
    return None


def _content(record: Mapping[str, Any] | None, materializer: str, folder: bool) -> str | None:
    """The record's content id if it was saved as this save will be."""
    if record is None or record.get("materializer") != materializer:
        return None
    if (record.get("content_kind") == "tree") != folder:
        return None
    content = record.get("content_id")
    return content if isinstance(content, str) else None
