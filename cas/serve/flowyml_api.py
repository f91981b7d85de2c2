"""``/flowyml/v1``: the catalog API of FlowyML's ``RemoteCatalogBackend`` over cas.

FlowyML 2.2.1's client (``flowyml/storage/catalog/remote_backend.py``) sends and parses:

==========================================  =============================================
``POST /artifacts``  (a ``CatalogEntry``)    the entry as registered (``artifact_id`` read)
``GET /artifacts/{id}``                      one entry (any error: the client says None)
``GET /artifacts?artifact_type&source_pipeline&source_step&tags(JSON)&limit``
                                             ``{"items": [entry, ...]}``
``PUT /artifacts/{id}/tags``  (a dict)       the entry, tags set
``GET /artifacts/search?q&limit``            ``{"items": [...]}``  (cas's query language)
``GET /artifacts/{id}/lineage``              ``{"artifact", "parents", "children"}``
``GET /artifacts/by-hash?hash``              one entry, or 404 (the client says None)
==========================================  =============================================

An entry becomes a cas record with no data (``catalog.register(name, type, data=None,
...)``), which moves the ref ``name``. FlowyML's own ids stay stable for its client: a
registration that brings an ``artifact_id`` (FlowyML's local backend makes uuids) keeps
it in the tag ``flowyml.artifact_id``, its ``content_hash`` (FlowyML hashes
``json.dumps`` of the value with SHA-256, not the bytes) in ``flowyml.content_hash``:
tags are indexed exactly, so both lookups are one catalog query. ``uri``, ``version``
and ``created_at`` as sent are kept in the record's metadata under ``_flowyml``. Answers
give FlowyML back its ids (the record's own 64-hex id when it sent none) and hide
these reserved keys; ``cas_id`` is added (the client ignores unknown fields).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

import cas
from cas.serve.responses import (
    JSON,
    ApiError,
    check_catalog_text,
    depth_param,
    int_param,
    str_param,
)

ID_TAG = "flowyml.artifact_id"
HASH_TAG = "flowyml.content_hash"
RESERVED_TAGS = (ID_TAG, HASH_TAG)
META_KEY = "_flowyml"
MAX_BODY = 1 << 20
MAX_TEXT = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SCAN_CAP = 1_000_000  # list filters cas cannot index: scan at most this many records


def routes(store: cas.ArtifactStore) -> list[BaseRoute]:
    api = FlowymlCatalog(store)
    return [
        Route("/artifacts", api.list_or_register, methods=["GET", "POST"]),
        Route("/artifacts/search", api.search, methods=["GET"]),
        Route("/artifacts/by-hash", api.by_hash, methods=["GET"]),
        Route("/artifacts/{artifact_id}", api.get, methods=["GET"]),
        Route("/artifacts/{artifact_id}/tags", api.tag, methods=["PUT", "POST"]),
        Route("/artifacts/{artifact_id}/lineage", api.lineage, methods=["GET"]),
    ]


def quote(value: str) -> str:
    """``value`` as one quoted term of cas's query language."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_record_id(text: str) -> bool:
    return bool(_HEX64.match(text))


class FlowymlCatalog:
    """The endpoints; every store call runs in a worker thread (they block)."""

    def __init__(self, store: cas.ArtifactStore) -> None:
        self.store = store
        self.catalog = store.catalog

    # -- lookups ------------------------------------------------------------------------

    def _tagged(self, key: str, value: str) -> cas.Artifact | None:
        if not value or len(value) > MAX_TEXT or "\0" in value:
            return None
        found = self.catalog.search(f"{key}:{quote(value)}", limit=1)
        return found[0] if found else None

    def find(self, fid: str) -> cas.Artifact | None:
        """The record FlowyML knows as ``fid``: the newest registered under that id,
        else the cas record of that id."""
        mapped = self._tagged(ID_TAG, fid)
        if mapped is not None:
            return mapped
        return self.catalog.get(fid) if is_record_id(fid) else None

    def need(self, fid: str) -> cas.Artifact:
        found = self.find(fid)
        if found is None:
            raise ApiError(404, f"no artifact {fid[:200]!r} in the catalog", artifact_id=fid)
        return found

    def entry(self, art: cas.Artifact) -> dict[str, Any]:
        """A record as FlowyML's ``CatalogEntry.to_dict()``."""
        extra = art.metadata.get(META_KEY)
        extra = extra if isinstance(extra, dict) else {}
        return {
            "artifact_id": art.tags.get(ID_TAG) or art.id,
            "name": art.name,
            "artifact_type": art.artifact_type,
            "content_hash": art.tags.get(HASH_TAG) or art.content_id or "",
            "source_step": art.source_step or "",
            "source_run_id": art.source_run_id or "",
            "source_pipeline": art.source_pipeline or "",
            "parent_ids": [self._flowyml_id(p) for p in art.parent_ids],
            "tags": {k: v for k, v in art.tags.items() if k not in RESERVED_TAGS},
            "metadata": {k: v for k, v in art.metadata.items() if k != META_KEY},
            "uri": str(extra.get("uri") or (f"cas://{art.id}" if art.content_id else "")),
            "created_at": str(extra.get("created_at") or art.created_at),
            "version": extra.get("version"),
            "cas_id": art.id,
        }

    def _flowyml_id(self, rid: str) -> str:
        parent = self.catalog.get(rid)
        return (parent.tags.get(ID_TAG) if parent is not None else None) or rid

    # -- endpoints ----------------------------------------------------------------------

    def get(self, request: Request) -> JSON:
        return JSON(self.entry(self.need(request.path_params["artifact_id"])))

    def lineage(self, request: Request) -> JSON:
        art = self.need(request.path_params["artifact_id"])
        found = self.catalog.get_lineage(art.id, depth=depth_param(request, 1))
        return JSON({
            "artifact": self.entry(art),
            "parents": [self.entry(a) for a in found["parents"]],
            "children": [self.entry(a) for a in found["children"]],
        })  # fmt: skip

    def search(self, request: Request) -> JSON:
        query = str_param(request, "q", "query")
        limit = int_param(request, "limit", 50)
        items = [self.entry(a) for a in self.catalog.search(query, limit=limit)]
        return JSON({"items": items, "count": len(items)})

    def by_hash(self, request: Request) -> JSON:
        value = str_param(request, "hash", "content_hash", required=True).strip()
        found = self._tagged(HASH_TAG, value)
        if found is None and is_record_id(value):
            same = self.catalog.find_by_content(value, limit=1)
            found = same[0] if same else None
        if found is None:
            raise ApiError(404, f"no artifact with content hash {value[:100]!r}")
        return JSON(self.entry(found))

    async def list_or_register(self, request: Request) -> JSON:
        if request.method == "POST":
            body = await _json_body(request)
            return await run_in_threadpool(self.register, body)
        return await run_in_threadpool(self.list, request)

    async def tag(self, request: Request) -> JSON:
        body = await _json_body(request, empty={})
        fid = request.path_params["artifact_id"]
        return await run_in_threadpool(self._tag, fid, body)

    # -- the work behind them -------------------------------------------------------------

    def register(self, body: Any) -> JSON:
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object (a FlowyML CatalogEntry)")
        name = check_catalog_text("name", _text(body, "name", required=True))
        artifact_type = check_catalog_text(
            "artifact_type", _text(body, "artifact_type") or "artifact"
        )
        fid = _text(body, "artifact_id")
        content_hash = _text(body, "content_hash")
        tags = _tags(body.get("tags"))
        _refuse_reserved(tags)
        if fid:
            tags[ID_TAG] = fid
        if content_hash:
            tags[HASH_TAG] = content_hash
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ApiError(400, "metadata must be a JSON object")
        kept = {k: _text(body, k) for k in ("uri", "created_at") if _text(body, k)}
        if body.get("version") is not None:
            kept["version"] = _text(body, "version")
        metadata = {**metadata, META_KEY: kept} if kept else dict(metadata)
        parents = body.get("parent_ids") or []
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise ApiError(400, "parent_ids must be a list of artifact ids")
        parent_ids = []
        for parent in parents:
            found = self.find(parent)
            if found is None:
                raise ApiError(
                    400, f"parent {parent[:200]!r} is not in the catalog: register it first"
                )
            parent_ids.append(found.id)
        try:
            rid = self.catalog.register(
                name,
                artifact_type,
                data=None,
                source_step=_text(body, "source_step") or None,
                source_run_id=_text(body, "source_run_id") or None,
                source_pipeline=_text(body, "source_pipeline") or None,
                tags=tags,
                parent_ids=parent_ids,
                metadata=metadata,
            )
        except cas.CasError:
            raise
        except (ValueError, TypeError) as exc:  # the catalog's checks of record fields
            raise ApiError(400, f"cannot register {name[:200]!r}: {exc}") from exc
        art = self.catalog.get(rid)
        if art is None:  # registered, then deleted by someone else at once
            raise ApiError(409, f"artifact {rid} was deleted while it was registered")
        return JSON(self.entry(art), status_code=201)

    def list(self, request: Request) -> JSON:
        artifact_type = str_param(request, "artifact_type") or None
        pipeline = str_param(request, "source_pipeline") or None
        step = str_param(request, "source_step") or None
        tags = _tags(_json_param(request, "tags"))
        limit = int_param(request, "limit", 100)

        def keep(a: cas.Artifact) -> bool:
            return (
                (artifact_type is None or a.artifact_type == artifact_type)
                and (pipeline is None or a.source_pipeline == pipeline)
                and (step is None or a.source_step == step)
                and all(a.tags.get(k) == v for k, v in tags.items())
            )

        queryable = {k: v for k, v in tags.items() if re.fullmatch(r'[^\s:"]+', k)}
        query = " ".join(f"{k}:{quote(v)}" for k, v in queryable.items())

        def fetch(n: int) -> list[cas.Artifact]:
            if query:
                return self.catalog.search(query, limit=n)
            return self.catalog.list(artifact_type=artifact_type, limit=n)

        items = [self.entry(a) for a in _filtered(fetch, keep, limit)]
        return JSON({"items": items, "count": len(items)})

    def _tag(self, fid: str, body: Any) -> JSON:
        tags = _tags(body, allow_null=True)
        _refuse_reserved(tags)
        art = self.need(fid)
        if tags:
            self.catalog.tag(art.id, **tags)
        fresh = self.catalog.get(art.id) or art
        return JSON(self.entry(fresh))


def _refuse_reserved(tags: dict[str, Any]) -> None:
    reserved = [k for k in tags if k in RESERVED_TAGS]
    if reserved:
        raise ApiError(400, f"tag {reserved[0]!r} is kept by cas serve for FlowyML's ids")


def _filtered(
    fetch: Callable[[int], list[cas.Artifact]], keep: Callable[[cas.Artifact], bool], limit: int
) -> list[cas.Artifact]:
    """The first ``limit`` records ``keep`` accepts, newest first. Filters are applied
    before the limit (FlowyML's SQLite backend applies its tag filter after it): fetch
    more, doubling, until enough are kept or the catalog has no more."""
    n = max(limit, 100)
    while True:
        batch = fetch(n)
        kept = [a for a in batch if keep(a)]
        if len(kept) >= limit or len(batch) < n or n >= _SCAN_CAP:
            return kept[:limit]
        n *= 4


async def _json_body(request: Request, empty: Any = None) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "the body is empty: send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None


def _json_param(request: Request, name: str) -> Any:
    raw = str_param(request, name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, f"{name} must be a JSON object, got {raw[:80]!r}") from None


def _text(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise ApiError(400, f"{key!r} is required")
        return ""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ApiError(400, f"{key!r} must be a string, got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_TEXT or "\0" in text:
        raise ApiError(400, f"{key!r} must be at most {MAX_TEXT} characters, without NUL")
    return text


def _tags(value: Any, allow_null: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "tags must be a JSON object of key: value")
    out: dict[str, Any] = {}
    for key, tag in value.items():
        if not key or "\0" in key or len(key.encode()) > 256:
            raise ApiError(400, f"tag key {key[:60]!r}: 1-256 bytes, no NUL")
        if tag is None and allow_null:
            out[key] = None  # removes the tag
            continue
        if isinstance(tag, (dict, list)) or tag is None:
            raise ApiError(400, f"tag {key[:60]!r} must have a string value")
        text = str(tag).lower() if isinstance(tag, bool) else str(tag)
        if len(text) > MAX_TEXT or "\0" in text:
            raise ApiError(
                400, f"tag {key[:60]!r}: a value of at most {MAX_TEXT} characters, no NUL"
            )
        out[key] = text
    return out
