"""The version a save builds on when its name holds none: its nearest kin.

A new version is stored as deltas against the content its name holds now
(:mod:`cas.objects.delta_bases`). Versions are often named apart instead
(``ckpt/epoch-2``, ``data/2026-12-02``, ``pkg/2.0.32``) or derived from another
artifact (``parent_ids``): such a save takes as its previous version the first parent
of its kind, else the newest other name of its kind in its folder (``pkg/`` for
``pkg/2.0.32``). Of its kind: saved by the same materializer, as a folder or not alike.

Bounded: the candidates come from the saves of the batch not published yet (the
last few) and this machine's catalog as it is (one local read, no request, not caught
up: on a remote root what it holds is enough); without a catalog,
only the first parent's record is read (one object, as a save under a name that holds
a version reads that version's record). A hint only: whatever it names may be gone or
damaged, and the save then stores its objects plain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cas import catalog as _catalog
from cas.errors import CasError
from cas.repo.repository import Repository

#: The newest records under a name's folder (and of a batch) looked at for its kin.
SIBLINGS = 16

Pending = Sequence[tuple[str, Mapping[str, Any]]]


def nearest_version(
    repo: Repository,
    name: str,
    parents: Sequence[str],
    materializer: str,
    folder: bool,
    pending: Pending = (),
) -> str | None:
    """The content id of the version a first save of ``name`` builds on, or None.
    ``pending``: (id, record) of the saves not in the catalog yet (a batch's), in order."""
    recent = list(reversed(pending[-SIBLINGS:]))
    try:
        catalog = repo.catalog_at_hand()
        for n, pid in enumerate(parents):
            found = _content(_parent(repo, catalog, recent, pid, n == 0), materializer, folder)
            if found is not None:
                return found
        head, sep, _ = name.rpartition("/")
        if not sep:
            return None  # a top-level name: every other one is no nearer than the rest
        prefix = head + "/"
        candidates = [record for _, record in recent]
        if catalog is not None:
            candidates += catalog.list(prefix=prefix, limit=SIBLINGS)
        for record in candidates:
            other = str(record.get("name") or "")
            if other == name or not other.startswith(prefix) or "/" in other[len(prefix) :]:
                continue  # itself, or not directly in its folder
            found = _content(record, materializer, folder)
            if found is not None:
                return found
    except (CasError, _catalog.CatalogError, OSError):
        pass
    return None


def _parent(
    repo: Repository, catalog: _catalog.Catalog | None, recent: Pending, pid: str, first: bool
) -> Mapping[str, Any] | None:
    """A parent's record from the batch or the catalog; without a catalog, the first
    parent's record object is read (the one read a save allows itself)."""
    found = next((record for rid, record in recent if rid == pid), None)
    if found is not None:
        return found
    if catalog is not None:
        return catalog.get(pid)
    return repo.record(pid, tags=False) if first else None


def _content(record: Mapping[str, Any] | None, materializer: str, folder: bool) -> str | None:
    """The record's content id if it was saved as this save will be."""
    if record is None or record.get("materializer") != materializer:
        return None
    if (record.get("content_kind") == "tree") != folder:
        return None
    content = record.get("content_id")
    return content if isinstance(content, str) else None
