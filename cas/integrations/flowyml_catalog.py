"""FlowyML's ``CatalogBackend`` over cas's catalog.

``ArtifactCatalog(backend=CasCatalogBackend(root=URL))`` registers, tags, searches and
traces lineage in cas. How a FlowyML ``CatalogEntry`` maps onto a cas record:

==================  ===============================================================
CatalogEntry        cas record
==================  ===============================================================
artifact_id         the record id (64 hex). An id the caller chose is kept in the
                    record's metadata and ``get`` finds the record by it too.
name                the name, percent-encoded where git's ref-name rules refuse it
                    (see :func:`encode_name`); the ref moves to the new record
artifact_type       the type ("unknown" when empty: cas requires one)
content_hash        the content id (``b3sum``) of a record that has content; else the
                    hash FlowyML computed, kept in the metadata
source_step/run_id  source_step / source_run_id ("" is None)
source_pipeline     source_pipeline
parent_ids          parent_ids (ids or names of this store)
tags / metadata     tags / metadata (FlowyML's own fields under ``metadata["flowyml"]``)
uri                 ``cas://<record id>`` for a record with content; else the URI given
created_at          created_at (set by cas when the record is written)
version             kept in the metadata (None when not given)
==================  ===============================================================

FlowyML's catalog never passes the data to its backend, only a hash of it, so a
registered entry is a metadata-only record unless its ``uri`` names an artifact of this
store (a name, an id or ``cas://...``): then its content hash is that artifact's
content id, which ``find_by_content_hash`` looks up in cas's content index.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote

from flowyml.storage.catalog.backend import CatalogBackend, CatalogEntry

import cas
from cas.integrations._common import encode_component, open_store, resolve_root

__all__ = ["CasCatalogBackend", "EntryNotFound", "decode_name", "encode_name"]

FLOWYML_KEY = "flowyml"
UNKNOWN_TYPE = "unknown"
_HEX_ID = re.compile(r"[0-9a-f]{64}")
_URL_PREFIX = "cas://"
#: The cas name of FlowyML's empty name: no percent-encoding yields it ('%' is '%25').
EMPTY_NAME = "%empty-name"


class EntryNotFound(cas.ObjectNotFound, ValueError):
    """No catalog entry has this id: cas's ``ObjectNotFound`` (a ``KeyError``) and the
    ``ValueError`` FlowyML's own catalog raises for it."""


class CasCatalogBackend(CatalogBackend):  # type: ignore[misc]
    """A FlowyML catalog backend whose truth is a cas store's catalog.

    ``CasCatalogBackend(root=URL, **storage_options)``: the same roots and options as
    :func:`cas.open_store` (default root ``$CAS_ROOT``, then ``./.cas``). Lineage is
    transitive by default (``get_lineage(id, depth=1)`` for one hop). For a remote root
    the catalog is caught up with other machines' writes when the backend opens and on
    :meth:`sync`.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, **storage_options: Any) -> None:
        self.root = resolve_root(root)
        self.store = open_store(self.root, dict(storage_options))
        self.catalog = self.store.catalog

    def sync(self) -> int:
        """Read what other machines wrote to the store since the last sync."""
        return self.store.sync()

    # -- CatalogBackend -------------------------------------------------------------------

    def register(self, entry: CatalogEntry) -> str:
        """Record ``entry`` in cas; return its cas id (also set on ``entry``)."""
        own: dict[str, Any] = {}
        if entry.artifact_id:
            own["artifact_id"] = str(entry.artifact_id)
        if entry.version is not None:
            own["version"] = str(entry.version)
        content_hash = entry.content_hash or ""
        if entry.uri:
            own["uri"] = str(entry.uri)
            target = self._artifact_at(str(entry.uri))
            if target is not None and not content_hash:
                content_hash = target.content_id or ""
        if content_hash:
            own["content_hash"] = content_hash
        # cas indexes the words of metadata strings, so these make `search` find an entry
        # by the words of its name as given and of its pipeline, as FlowyML's does.
        name = encode_name(str(entry.name))
        if name != entry.name:
            own["name"] = str(entry.name)
        if entry.source_pipeline:
            own["source_pipeline"] = str(entry.source_pipeline)
        if not entry.artifact_type:
            own["artifact_type"] = ""  # cas requires a type; FlowyML gets "" back
        metadata = dict(entry.metadata or {})
        if own:
            metadata[FLOWYML_KEY] = own
        aid = self.catalog.register(
            name,
            entry.artifact_type or UNKNOWN_TYPE,
            source_step=entry.source_step or None,
            source_run_id=entry.source_run_id or None,
            source_pipeline=entry.source_pipeline or None,
            tags={str(k): str(v) for k, v in (entry.tags or {}).items()} or None,
            parent_ids=[self._cas_id(p) for p in entry.parent_ids or ()],
            metadata=metadata or None,
        )
        entry.artifact_id = aid
        return aid

    def get(self, artifact_id: str) -> CatalogEntry | None:
        found = self._find(artifact_id)
        return _entry(found) if found is not None else None

    def list_artifacts(
        self,
        artifact_type: str | None = None,
        source_pipeline: str | None = None,
        source_step: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int = 100,
    ) -> list[CatalogEntry]:
        """Newest first. Type and tags are filtered by cas's indexes before the limit;
        pipeline and step are filtered while reading, so ``limit`` always counts matches.
        An empty filter is no filter, as in FlowyML's own catalog."""
        artifact_type = artifact_type or None

        def keep(a: cas.Artifact) -> bool:
            return (
                (artifact_type is None or a.artifact_type == artifact_type)
                and (not source_pipeline or a.source_pipeline == source_pipeline)
                and (not source_step or a.source_step == source_step)
            )

        query = " ".join(f"{k}:{_quoted(str(v))}" for k, v in (tags or {}).items())

        def fetch(n: int) -> list[cas.Artifact]:
            if query:  # the tag index, then the type as a filter
                return self.catalog.search(query, n)
            return self.catalog.list(artifact_type=artifact_type, limit=n)

        return [_entry(a) for a in _first_matches(fetch, keep, limit)]

    def tag(self, artifact_id: str, tags: dict[str, str]) -> None:
        """Set tags (durable, last writer wins per key)."""
        self.catalog.tag(self._cas_id(artifact_id), **{str(k): str(v) for k, v in tags.items()})

    def search(self, query: str, limit: int = 50) -> list[CatalogEntry]:
        """cas's query language: ``stage:production fraud`` is a tag filter AND a word;
        words are whole words of names (split at ``_ - . /``), types, tag values, source
        pipelines (of entries registered here; a pipeline output's name holds its
        pipeline) and string metadata."""
        return [_entry(a) for a in self.catalog.search(query, limit)]

    def get_lineage(self, artifact_id: str, depth: int | None = None) -> dict[str, Any]:
        """``{"artifact", "parents", "children"}`` as FlowyML's local backend answers,
        every ancestor and descendant (``depth=None``) or ``depth`` hops of them."""
        found = self._find(artifact_id)
        if found is None:
            return {"artifact_id": artifact_id, "error": "not found"}
        lineage = self.catalog.get_lineage(found.id, depth=depth)
        return {
            "artifact": _entry(found).to_dict(),
            "parents": [_entry(a).to_dict() for a in lineage["parents"]],
            "children": [_entry(a).to_dict() for a in lineage["children"]],
        }

    def find_by_content_hash(self, content_hash: str) -> CatalogEntry | None:
        """The newest artifact whose content id is ``content_hash`` (cas's content index),
        else the newest entry registered with that hash by FlowyML."""
        if _HEX_ID.fullmatch(content_hash):
            for found in self.catalog.find_by_content(content_hash, limit=1):
                return _entry(found)
        for found in self._by_own_field("content_hash", content_hash):
            return _entry(found)
        return None

    # -- helpers --------------------------------------------------------------------------

    def _find(self, artifact_id: str) -> cas.Artifact | None:
        """By cas id, else by an id the caller gave FlowyML."""
        if _HEX_ID.fullmatch(artifact_id):
            found = self.catalog.get(artifact_id)
            if found is not None:
                return found
        for found in self._by_own_field("artifact_id", artifact_id):
            return found
        return None

    def _cas_id(self, artifact_id: str) -> str:
        found = self._find(artifact_id)
        if found is None:
            raise EntryNotFound(
                artifact_id,
                f"no artifact {artifact_id!r} in the catalog at {self.root}; "
                "list them with ArtifactCatalog.list() or 'cas ls'",
            )
        return found.id

    def _by_own_field(self, key: str, value: str) -> Iterator[cas.Artifact]:
        """Records whose ``metadata["flowyml"][key]`` is ``value``: string metadata is
        indexed by word, so search the words, then compare exactly."""
        if not value.strip() or '"' in value or "\\" in value:
            return
        with contextlib.suppress(cas.QueryError):
            for found in self.catalog.search(_quoted(value), limit=100):
                if (found.metadata.get(FLOWYML_KEY) or {}).get(key) == value:
                    yield found

    def _artifact_at(self, uri: str) -> cas.Artifact | None:
        """The artifact a URI names in this store, or None (another store, a path...)."""
        target = uri[len(_URL_PREFIX) :] if uri.startswith(_URL_PREFIX) else uri
        try:
            meta = self.store.get_metadata(target)
        except (cas.ObjectNotFound, cas.InvalidRefName):
            return None
        return self.catalog.get(meta["id"])


def _entry(a: cas.Artifact) -> CatalogEntry:
    own = dict(a.metadata.get(FLOWYML_KEY) or {})
    metadata = {k: v for k, v in a.metadata.items() if k != FLOWYML_KEY}
    uri = f"{_URL_PREFIX}{a.id}" if a.content_id else str(own.get("uri") or "")
    return CatalogEntry(
        artifact_id=a.id,
        name=decode_name(a.name),
        artifact_type=str(own.get("artifact_type", a.artifact_type)),
        content_hash=a.content_id or str(own.get("content_hash") or ""),
        source_step=a.source_step or "",
        source_run_id=a.source_run_id or "",
        source_pipeline=a.source_pipeline or "",
        parent_ids=list(a.parent_ids),
        tags=dict(a.tags),
        metadata=metadata,
        uri=uri,
        created_at=a.created_at,
        version=own.get("version"),
    )


def encode_name(name: str) -> str:
    """The cas name of a FlowyML catalog name: itself when git's ref rules accept it,
    else with the characters they refuse percent-encoded (``my model`` is
    ``my%20model``), ``%`` always (``%25``), so :func:`decode_name` gives it back
    exactly. A name with an empty component (``/a``, ``a/``, ``a//b``) is one component,
    its ``/`` encoded (``%2Fa``); the empty name is ``%empty-name``."""
    if not name:
        return EMPTY_NAME
    if name == "@":
        return "%40"
    parts = name.split("/")
    if "" in parts:
        return encode_component(name, frozenset("/"))
    return "/".join(encode_component(p) for p in parts)


def decode_name(name: str) -> str:
    """The FlowyML name of a cas name (the inverse of :func:`encode_name`)."""
    return "" if name == EMPTY_NAME else unquote(name)


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _first_matches(
    fetch: Callable[[int], list[cas.Artifact]], keep: Callable[[cas.Artifact], bool], limit: int
) -> list[cas.Artifact]:
    """The first ``limit`` artifacts ``keep`` accepts, newest first, asking ``fetch`` for
    twice as many each round until it has them or the catalog has no more."""
    ask = max(limit, 1)
    while True:
        batch = fetch(ask)
        matches = [a for a in batch if keep(a)]
        if len(matches) >= limit or len(batch) < ask:
            return matches[:limit]
        ask *= 2
