"""``/api/v1``: a read API for scripts and for the page.

===================================  ==================================================
``GET /names?prefix&delimiter&after&limit``   names (``delimiter=/``: one level, S3-like)
``GET /artifacts?type&limit``        the newest artifacts
``GET /artifacts/{name or id}``      an artifact's metadata, and ``kind``: file|folder|none
``GET /versions/{name}?limit``       every record saved under a name, newest first
``GET /history/{name}``              the name's updates (time, who, old, new, message)
``GET /search?q&limit``              cas's query language: ``stage:production resnet``
``GET /lineage/{ref}?depth&max_nodes&format``  ancestors and descendants, with edges
``GET /files/{ref}?path``            one level of a folder artifact
``GET|HEAD /content/{ref}[:path]``   the bytes, verified; ``ETag``, ``Range``
===================================  ==================================================

``{ref}`` is a name or a 64-hex artifact id; a name holds ``/`` (``/artifacts/models/
fraud``). A file inside a folder artifact is ``/content/<ref>:<path>`` (``:`` is never
in a name) or ``/content/<ref>?path=<path>``. Nothing here builds a filesystem path
from input: names go through the ref name rules, paths inside a folder artifact are
looked up in its tree object.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

import cas
from cas.serve import content
from cas.serve.flowyml_api import is_record_id
from cas.serve.responses import (
    JSON,
    ApiError,
    check_catalog_text,
    depth_param,
    endpoint,
    fast_path,
    int_param,
    str_param,
)

MAX_NODES = 500


def routes(store: cas.ArtifactStore, streams: content.Streams | None = None) -> list[BaseRoute]:
    api = ReadApi(store, streams or content.Streams())
    quick = fast_path(store)
    return [
        Route("/", endpoint(api.index, True), methods=["GET"]),
        Route("/names", endpoint(api.names, False), methods=["GET"]),
        Route("/artifacts", endpoint(api.recent, quick), methods=["GET"]),
        Route("/artifacts/{ref:path}", endpoint(api.artifact, quick), methods=["GET"]),
        Route("/versions/{ref:path}", endpoint(api.versions, quick), methods=["GET"]),
        Route("/history/{ref:path}", endpoint(api.history, False), methods=["GET"]),
        Route("/search", endpoint(api.search, quick), methods=["GET"]),
        Route("/lineage/{ref:path}", endpoint(api.lineage, quick), methods=["GET"]),
        Route("/files/{ref:path}", endpoint(api.files, quick), methods=["GET"]),
        # opening content reads objects (up to 4 MiB verified at once): always a worker
        Route("/content/{ref:path}", endpoint(api.content, False), methods=["GET", "HEAD"]),
    ]


def inner_path(text: str) -> str:
    """A path inside a folder artifact, ``/``-separated, without empty, ``.`` or ``..``
    parts (it is looked up in a tree object, never on a filesystem: this is for clear
    errors, not safety)."""
    parts = text.strip("/").split("/") if text.strip("/") else []
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise ApiError(400, f"bad path {text[:200]!r}: no empty, '.' or '..' parts")
    return "/".join(parts)


def split_ref(request: Request) -> tuple[str, str]:
    """(name or id, path inside it) from ``<ref>:<path>`` or ``?path=``."""
    ref = request.path_params["ref"]
    ref, colon, path = ref.partition(":")
    query_path = str_param(request, "path")
    if colon and query_path:
        raise ApiError(400, "give the path once: as <ref>:<path> or as ?path=, not both")
    if not ref:
        raise ApiError(400, "no artifact name or id before ':'")
    return ref, inner_path(path or query_path)


class ReadApi:
    """The endpoints; all are plain functions, which starlette runs in worker threads."""

    def __init__(self, store: cas.ArtifactStore, streams: content.Streams) -> None:
        self.store = store
        self.streams = streams
        self.catalog = store.catalog

    def index(self, request: Request) -> JSON:
        return JSON({"store": self.store.url, "version": cas.__version__,
                     "endpoints": [getattr(r, "path", "") for r in routes(self.store)]})  # fmt: skip

    def names(self, request: Request) -> JSON:
        prefix = str_param(request, "prefix", max_len=1024)
        delimiter = str_param(request, "delimiter", max_len=8)
        after = str_param(request, "after", max_len=1024)
        limit = int_param(request, "limit", 1000)
        if delimiter not in ("", "/"):
            raise ApiError(400, "delimiter can only be '/'")
        keys: dict[str, str] = {}  # key -> "name" | "prefix", in sorted order
        for name in self.store.list_artifacts(prefix):
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                keys.setdefault(prefix + rest.split(delimiter, 1)[0] + delimiter, "prefix")
            else:
                keys[name] = "name"
        ordered = [k for k in keys if k > after] if after else list(keys)
        page = ordered[:limit]
        return JSON({
            "prefix": prefix,
            "names": [k for k in page if keys[k] == "name"],
            "prefixes": [k for k in page if keys[k] == "prefix"],
            "next": page[-1] if len(ordered) > limit else None,
        })  # fmt: skip

    def recent(self, request: Request) -> JSON:
        kind = str_param(request, "type", "artifact_type") or None
        found = self.catalog.list(artifact_type=kind, limit=int_param(request, "limit", 100))
        return JSON({"items": found, "count": len(found)})

    def artifact(self, request: Request) -> JSON:
        ref = request.path_params["ref"]
        meta = self.store.get_metadata(ref)
        return JSON({**meta, "kind": self.kind(meta)})

    def versions(self, request: Request) -> JSON:
        name = check_catalog_text("a name", request.path_params["ref"])
        self.store.exists(name)  # refuses a malformed name with InvalidRefName
        found = self.catalog.versions(name, limit=int_param(request, "limit", 100))
        return JSON({"name": name, "items": found})

    def history(self, request: Request) -> JSON:
        name = request.path_params["ref"]
        return JSON({"name": name, "entries": self.store.history(name)})

    def search(self, request: Request) -> JSON:
        query = str_param(request, "q", "query")
        found = self.catalog.search(query, limit=int_param(request, "limit", 100))
        return JSON({"query": query, "items": found, "count": len(found)})

    def lineage(self, request: Request) -> Response:
        rid = self.store.get_metadata(request.path_params["ref"])["id"]
        depth = depth_param(request, 1)
        fmt = str_param(request, "format") or "json"
        if fmt in ("mermaid", "dot"):
            return PlainTextResponse(self.catalog.lineage_graph(rid, format=fmt, depth=depth))
        if fmt != "json":
            raise ApiError(400, f"format must be json, mermaid or dot, got {fmt[:40]!r}")
        max_nodes = int_param(request, "max_nodes", MAX_NODES, 1, 10_000)
        found = self.catalog.get_lineage(rid, depth=depth)
        me = self.catalog.get(rid)
        if me is None:
            raise cas.ObjectNotFound(rid, f"artifact {rid} is not in the catalog")
        half = max(1, max_nodes // 2)
        parents, children = found["parents"][:half], found["children"][:half]
        nodes: dict[str, dict[str, Any]] = {rid: {**me.to_dict(), "side": "self"}}
        for side, arts in (("ancestor", parents), ("descendant", children)):
            for a in arts:
                nodes.setdefault(a.id, {**a.to_dict(), "side": side})
        edges = [{"from": p, "to": n["id"]} for n in nodes.values() for p in n["parent_ids"]
                 if p in nodes]  # fmt: skip
        return JSON({
            "id": rid,
            "depth": depth,
            "parents": [a.id for a in parents],
            "children": [a.id for a in children],
            "nodes": list(nodes.values()),
            "edges": edges,
            "truncated": len(parents) < len(found["parents"])
            or len(children) < len(found["children"]),
        })  # fmt: skip

    def files(self, request: Request) -> JSON:
        ref, path = split_ref(request)
        meta = self.store.get_metadata(ref)
        entries = self.store.list_files(meta["id"], path)
        return JSON({"id": meta["id"], "name": meta["name"], "path": path,
                     "kind": self.kind(meta), "entries": entries})  # fmt: skip

    def content(self, request: Request) -> Response:
        ref, path = split_ref(request)
        meta = self.store.get_metadata(ref)
        rid = meta["id"]
        if meta["content_id"] is None:
            raise cas.ObjectNotFound(rid, f"artifact {meta['name']} ({rid}) has no data: it "
                                          "was registered without any")  # fmt: skip
        immutable = is_record_id(ref)
        if path:
            folder, _, leaf = path.rpartition("/")
            entries = self.store.list_files(rid, folder)
            entry = next((e for e in entries if e["name"] == leaf), None)
            if entry is None or (self.kind(meta) != "folder"):
                raise cas.ObjectNotFound(path, f"artifact {meta['name']} has no file {path!r}")
            if entry["type"] == "directory":
                raise ApiError(400, f"{path!r} in artifact {meta['name']} is a folder",
                               files=f"/api/v1/files/{rid}?path={path}")  # fmt: skip
            blob = content.Blob(leaf, int(entry["size"] or 0), entry["id"], immutable)
            return content.respond(request, blob, lambda: self.store.open(rid, path=path),
                                   self.streams)  # fmt: skip
        files = self.store.list_files(rid)
        if self.kind(meta, files) == "folder":
            raise ApiError(400, f"artifact {meta['name']} is a folder: download one of its "
                                "files", files=f"/api/v1/files/{rid}")  # fmt: skip
        filename = files[0]["name"] if files else meta["name"].rsplit("/", 1)[-1]
        blob = content.Blob(filename, int(meta["size"] or 0), meta["content_id"], immutable)
        return content.respond(request, blob, lambda: self.store.open(rid), self.streams)

    def kind(self, meta: dict[str, Any], files: list[dict[str, Any]] | None = None) -> str:
        """``none`` (registered without data), ``folder`` or ``file``. The public API has
        no flag for it: a file artifact's listing is itself, one entry of its content id."""
        content_id = meta["content_id"]
        if content_id is None:
            return "none"
        if meta.get("materializer") not in (None, "path"):
            return "file"  # only files and folders (pathlib.Path) can be trees
        if files is None:
            files = self.store.list_files(meta["id"])
        single = len(files) == 1 and files[0]["id"] == content_id and files[0]["type"] == "file"
        return "file" if single else "folder"
