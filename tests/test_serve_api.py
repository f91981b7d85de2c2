"""cas serve's read API (/api/v1), its guard, and a fuzz of paths and query strings,
against the real server (uvicorn in a thread) over a temporary store."""

from __future__ import annotations

import http.client
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.serve import content
from cas.serve.testing import Running, running

BIG = 6 * 1024 * 1024 + 12345  # above 4 MiB: stored as chunks
CANARY = b"cas-serve-canary-7f3a9c-this-must-never-be-served"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("serve-api")
    (base / "outside").mkdir()
    (base / "outside" / "secret.txt").write_bytes(CANARY)
    root = base / "store"
    store = cas.open_store(str(root), fsync=False)
    raw = store.save(b"hello world", "data/raw", metadata={"rows": 3, "blob": b"\x00\x01"})
    fraud = store.save(
        {"auc": 0.91}, "models/fraud", parent_ids=[raw], tags={"stage": "production"}
    )
    report = store.save(b"report v1", "reports/r1", parent_ids=[fraud])
    store.save(b"report v2", "reports/r1", parent_ids=[fraud])
    folder = base / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(b"\x00bee")
    images = store.save(folder, "data/images")
    big = os.urandom(BIG)
    store.save(big, "blobs/big")
    empty = store.catalog.register("external/thing", "model", data=None, tags={"team": "x"})
    for i in range(5):
        store.save(f"item {i}".encode(), f"many/item{i}")
    with running(store) as srv:
        yield {"srv": srv, "store": store, "root": root, "base": base, "big": big,
               "ids": {"raw": raw, "fraud": fraud, "report": report, "images": images,
                       "empty": empty}}  # fmt: skip
    store.close()


@pytest.fixture(scope="module")
def client(world: dict[str, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world["srv"].url, timeout=30) as c:
        yield c


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, (r.status_code, r.text[:500])
    return r.json()


def err(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# -- names, artifacts, history, search, lineage ----------------------------------------


def test_names_prefix_delimiter_and_paging(client: httpx.Client) -> None:
    top = ok(client.get("/api/v1/names", params={"delimiter": "/"}))
    assert top["prefixes"] == ["blobs/", "data/", "external/", "many/", "models/", "reports/"]
    assert top["names"] == [] and top["next"] is None
    data = ok(client.get("/api/v1/names", params={"prefix": "data/"}))
    assert data["names"] == ["data/images", "data/raw"]
    seen, after = [], ""
    while True:
        page = ok(
            client.get("/api/v1/names", params={"prefix": "many/", "limit": 2, "after": after})
        )
        seen += page["names"]
        if page["next"] is None:
            break
        after = page["next"]
    assert seen == [f"many/item{i}" for i in range(5)]
    err(client.get("/api/v1/names", params={"limit": "0"}), 400)
    err(client.get("/api/v1/names", params={"limit": "ten"}), 400)
    err(client.get("/api/v1/names", params={"prefix": "../"}), 400)


def test_artifact_by_name_and_id(client: httpx.Client, world: dict[str, Any]) -> None:
    by_name = ok(client.get("/api/v1/artifacts/models/fraud"))
    by_id = ok(client.get(f"/api/v1/artifacts/{world['ids']['fraud']}"))
    assert by_name == by_id
    assert by_name["id"] == world["ids"]["fraud"] and by_name["kind"] == "file"
    assert by_name["tags"] == {"stage": "production"}
    assert by_name["parent_ids"] == [world["ids"]["raw"]]
    raw = ok(client.get("/api/v1/artifacts/data/raw"))
    assert raw["metadata"] == {"rows": 3, "blob": {"$base64": "AAE="}}  # bytes survive JSON
    assert ok(client.get("/api/v1/artifacts/data/images"))["kind"] == "folder"
    assert ok(client.get("/api/v1/artifacts/external/thing"))["kind"] == "none"
    recent = ok(client.get("/api/v1/artifacts", params={"limit": 3}))
    assert len(recent["items"]) == 3


def test_history_and_versions(client: httpx.Client, world: dict[str, Any]) -> None:
    entries = ok(client.get("/api/v1/history/reports/r1"))["entries"]
    assert len(entries) == 2
    assert entries[1]["old"] is None and entries[1]["new"] == world["ids"]["report"]
    assert entries[0]["old"] == world["ids"]["report"]  # newest first
    versions = ok(client.get("/api/v1/versions/reports/r1"))["items"]
    assert [v["id"] for v in versions] == [entries[0]["new"], entries[1]["new"]]


def test_search_uses_the_query_language(client: httpx.Client, world: dict[str, Any]) -> None:
    found = ok(client.get("/api/v1/search", params={"q": "stage:production"}))
    assert [a["id"] for a in found["items"]] == [world["ids"]["fraud"]]
    assert ok(client.get("/api/v1/search", params={"q": "fraud"}))["count"] == 1
    assert (
        ok(client.get("/api/v1/search", params={"q": "team:x model"}))["items"][0]["name"]
        == "external/thing"
    )
    assert "quote" in err(client.get("/api/v1/search", params={"q": 'stage:"open'}), 400)
    err(client.get("/api/v1/search", params={"q": "stage:"}), 400)


def test_lineage_depth_and_edges(client: httpx.Client, world: dict[str, Any]) -> None:
    ids = world["ids"]
    one = ok(client.get("/api/v1/lineage/data/raw", params={"depth": 1}))
    assert one["parents"] == [] and one["children"] == [ids["fraud"]]
    every = ok(client.get("/api/v1/lineage/data/raw", params={"depth": "all"}))
    assert set(every["children"]) == {ids["fraud"], ids["report"],
                                      ok(client.get("/api/v1/artifacts/reports/r1"))["id"]}  # fmt: skip
    edges = {(e["from"], e["to"]) for e in every["edges"]}
    assert (ids["raw"], ids["fraud"]) in edges and (ids["fraud"], ids["report"]) in edges
    sides = {n["id"]: n["side"] for n in every["nodes"]}
    assert sides[ids["raw"]] == "self" and sides[ids["report"]] == "descendant"
    mid = ok(client.get(f"/api/v1/lineage/{ids['fraud']}"))
    assert mid["parents"] == [ids["raw"]]
    mermaid = client.get("/api/v1/lineage/models/fraud", params={"format": "mermaid"})
    assert mermaid.status_code == 200 and ids["raw"][:8] in mermaid.text
    err(client.get("/api/v1/lineage/models/fraud", params={"depth": "-2"}), 400)
    err(client.get("/api/v1/lineage/models/fraud", params={"format": "svg"}), 400)


# -- content -------------------------------------------------------------------------


def test_download_verified_with_etag(client: httpx.Client, world: dict[str, Any]) -> None:
    meta = ok(client.get("/api/v1/artifacts/data/raw"))
    r = client.get("/api/v1/content/data/raw")
    assert r.status_code == 200 and r.content == b"hello world"
    assert r.headers["etag"] == f'"{meta["content_id"]}"'
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["content-type"] == "application/octet-stream"
    by_id = client.get(f"/api/v1/content/{meta['id']}")
    assert by_id.content == b"hello world" and "immutable" in by_id.headers["cache-control"]
    again = client.get("/api/v1/content/data/raw", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    head = client.head("/api/v1/content/data/raw")
    assert (
        head.status_code == 200 and head.headers["content-length"] == "11" and head.content == b""
    )
    big = client.get("/api/v1/content/blobs/big")
    assert big.status_code == 200 and big.content == world["big"]
    err(client.get("/api/v1/content/external/thing"), 404)  # registered without data


@pytest.mark.parametrize(
    ("header", "status", "first", "last"),
    [
        ("bytes=0-4", 206, 0, 4),
        ("bytes=6-", 206, 6, 10),
        ("bytes=-5", 206, 6, 10),
        ("bytes=3-3", 206, 3, 3),
        ("bytes=4-400", 206, 4, 10),
        ("bytes=11-", 416, None, None),
        ("bytes=-0", 416, None, None),
        ("bytes=5-2", 200, 0, 10),  # malformed: ignored, the whole content
        ("bytes=0-1,4-5", 200, 0, 10),  # several ranges: the whole content
        ("items=0-1", 200, 0, 10),
    ],
)
def test_range_requests(
    client: httpx.Client, header: str, status: int, first: int | None, last: int | None
) -> None:
    r = client.get("/api/v1/content/data/raw", headers={"Range": header})
    assert r.status_code == status, r.text
    if status == 416:
        assert r.headers["content-range"] == "bytes */11"
        return
    assert first is not None and last is not None
    assert r.content == b"hello world"[first : last + 1]
    if status == 206:
        assert r.headers["content-range"] == f"bytes {first}-{last}/11"


def test_range_inside_a_chunked_file_and_if_range(
    client: httpx.Client, world: dict[str, Any]
) -> None:
    start = 5 * 1024 * 1024 - 17  # crosses a chunk boundary or two
    r = client.get(
        "/api/v1/content/blobs/big", headers={"Range": f"bytes={start}-{start + 99_999}"}
    )
    assert r.status_code == 206 and r.content == world["big"][start : start + 100_000]
    tail = client.get("/api/v1/content/blobs/big", headers={"Range": "bytes=-1000"})
    assert tail.content == world["big"][-1000:]
    stale = client.get(
        "/api/v1/content/blobs/big", headers={"Range": "bytes=0-9", "If-Range": '"abc"'}
    )
    assert stale.status_code == 200 and len(stale.content) == BIG


def test_folder_files_and_one_file(client: httpx.Client, world: dict[str, Any]) -> None:
    listing = ok(client.get("/api/v1/files/data/images"))
    assert listing["kind"] == "folder"
    assert [(e["name"], e["type"]) for e in listing["entries"]] == [
        ("a.txt", "file"),
        ("sub", "directory"),
    ]
    sub = ok(client.get("/api/v1/files/data/images", params={"path": "sub"}))
    assert [e["path"] for e in sub["entries"]] == ["sub/b.bin"]
    assert ok(client.get("/api/v1/files/data/images:sub"))["entries"] == sub["entries"]
    one = client.get("/api/v1/content/data/images:sub/b.bin")
    assert one.status_code == 200 and one.content == b"\x00bee"
    assert one.headers["etag"] == f'"{sub["entries"][0]["id"]}"'
    assert 'filename="b.bin"' in one.headers["content-disposition"]
    assert client.get("/api/v1/content/data/images", params={"path": "a.txt"}).content == b"alpha"
    assert "folder" in err(client.get("/api/v1/content/data/images"), 400)
    assert "folder" in err(client.get("/api/v1/content/data/images:sub"), 400)
    err(client.get("/api/v1/content/data/images:nope.txt"), 404)
    err(client.get("/api/v1/content/data/images", params={"path": "sub/../../outside"}), 400)
    err(client.get("/api/v1/content/data/raw:a.txt"), 404)  # a file artifact has no files
    err(client.get("/api/v1/content/data/images:a.txt", params={"path": "a.txt"}), 400)
    inline = client.get("/api/v1/content/data/images:a.txt", params={"inline": "1"})
    assert inline.headers["content-type"].startswith("text/plain")
    assert inline.headers["content-security-policy"].startswith("sandbox")


def test_errors_are_json_4xx(client: httpx.Client, world: dict[str, Any]) -> None:
    err(client.get("/api/v1/artifacts/no/such/name"), 404)
    err(client.get("/api/v1/artifacts/" + "0" * 64), 404)
    err(client.get("/api/v1/artifacts/bad..name"), 400)
    err(client.get("/api/v1/artifacts/a%00b"), 400)
    err(client.get("/api/v1/artifacts/" + "x" * 300), 400)
    err(client.get("/api/v1/history/" + "0" * 63 + "~"), 400)
    err(client.get("/api/v1/nothing/here"), 404)
    err(client.get("/static/../../etc/passwd"), 404)
    err(client.post("/api/v1/search", headers={"Authorization": "Bearer test-token"}), 405)


def test_corrupt_object_is_502_naming_it(tmp_path: pathlib.Path) -> None:
    store = cas.open_store(str(tmp_path / "s"), fsync=False)
    store.save(os.urandom(100_000), "small")
    store.save(os.urandom(BIG), "big")
    cids = {n: store.get_metadata(n)["content_id"] for n in ("small", "big")}
    for path in (tmp_path / "s" / "objects").rglob("*"):
        if path.is_file() and path.stat().st_size > 50_000:  # the small blob (loose)
            data = bytearray(path.read_bytes())
            data[-20] ^= 0xFF
            path.chmod(0o644)
            path.write_bytes(bytes(data))
    for pack_id in store.space.packs.ids():  # every chunk of the big one (packed)
        path = tmp_path / "s" / "packs" / f"{pack_id}.pack"
        data = bytearray(path.read_bytes())
        for _, where in store.space.packs.index(pack_id).entries():
            if where.length > 50_000:
                data[where.offset + where.length - 20] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    with running(store) as srv, httpx.Client(base_url=srv.url) as c:
        r = c.get("/api/v1/content/small")
        assert r.status_code == 502, r.text
        assert r.json()["object_id"] == cids["small"] and "fsck" in r.json()["error"]
        r = c.get("/api/v1/content/big")
        assert r.status_code == 502 and len(r.json()["object_id"]) == 64
        assert c.get("/api/v1/artifacts/small").status_code == 200  # the catalog is fine
    store.close()


def test_the_last_block_waits_for_the_whole_hash() -> None:
    """Corruption found at EOF (the whole-content check) must cut the body before its
    last block: a client never receives a complete, wrong file."""

    class Lying:
        def __init__(self) -> None:
            self.parts = [b"a" * 10, b"b" * 10]

        def read(self, n: int = -1) -> bytes:
            if self.parts:
                return self.parts.pop(0)
            raise cas.IntegrityError("f" * 64, "whole content does not hash to its id")

        def close(self) -> None:
            pass

    sent = []
    with pytest.raises(cas.IntegrityError):
        for block in content._body(Lying(), b"", 20, to_eof=True):  # type: ignore[arg-type]
            sent.append(block)
    assert b"".join(sent) == b"a" * 10


# -- the guard: tokens, hosts -----------------------------------------------------------


def _snapshot(root: pathlib.Path) -> dict[str, int]:
    """Every durable file of a store (the LMDB index aside: readers may touch its lock)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] != "index"}  # fmt: skip


def test_host_header_is_checked(world: dict[str, Any]) -> None:
    srv: Running = world["srv"]
    r = httpx.get(srv.url + "/api/v1/names", headers={"Host": "attacker.example"})
    assert r.status_code == 421
    assert (
        httpx.get(srv.url + "/api/v1/names", headers={"Host": f"localhost:{srv.port}"}).status_code
        == 200
    )


def test_reads_policy_token(tmp_path: pathlib.Path) -> None:
    store = cas.open_store(str(tmp_path / "s"), fsync=False)
    store.save(b"x", "a")
    with running(store, "sekrit", reads="token") as srv, httpx.Client(base_url=srv.url) as c:
        assert c.get("/api/v1/names").status_code == 401
        assert c.get("/api/v1/names", headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.get("/api/v1/names", headers={"Authorization": "Bearer sekrit"}).status_code == 200
        assert c.get("/api/v1/content/a", headers={"Cookie": "cas_token=sekrit"}).content == b"x"
        assert c.get("/").status_code == 200  # the page loads, to ask for the token
        bad = c.post("/flowyml/v1/artifacts", json={"name": "n", "artifact_type": "t"},
                     headers={"Cookie": "cas_token=sekrit"})  # fmt: skip
        assert bad.status_code == 401  # the cookie never authorizes a write
    assert store.list_artifacts() == ["a"]
    store.close()


_PATH_PARTS = st.sampled_from([
    "/", "..", ".", "%2e%2e", "%2F", ":", "%00", "~1", "@{", ".lock", "models/fraud", "data/raw",
    "data/images", "sub/b.bin", "a.txt", "outside/secret.txt", "../outside/secret.txt",
    "%2e%2e%2foutside%2fsecret.txt", "/etc/passwd", "0" * 64, "x" * 210, "%ff%fe", "\\",
    "search", "by-hash", "tags", "lineage", "%20", "?", "#", "*", "[", "é",
])  # fmt: skip
_PREFIXES = st.sampled_from([
    "/api/v1/names", "/api/v1/artifacts/", "/api/v1/content/", "/api/v1/files/",
    "/api/v1/history/", "/api/v1/lineage/", "/api/v1/versions/", "/api/v1/search",
    "/api/v1/", "/flowyml/v1/artifacts/", "/flowyml/v1/artifacts/search",
    "/flowyml/v1/artifacts/by-hash", "/flowyml/v1/artifacts", "/static/", "/", "//",
])  # fmt: skip
_KEYS = st.sampled_from(["prefix", "delimiter", "after", "limit", "q", "query", "path", "depth",
                         "max_nodes", "format", "hash", "content_hash", "tags", "artifact_type",
                         "source_step", "inline", "type"])  # fmt: skip
_VALUES = st.one_of(_PATH_PARTS, st.text(max_size=40), st.integers(-5, 10**12).map(str),
                    st.sampled_from(["all", "mermaid", "dot", "{", '{"a": 1}', "[]", '"', "/"]))  # fmt: skip


def _encode(piece: str) -> str:
    if "%" in piece and all(33 <= ord(c) < 127 for c in piece):
        return piece  # percent-encoded on purpose (spaces and controls: no client sends them)
    return urllib.parse.quote(piece, safe="/:@!$&'()*+,;=~.")


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[str, dict[str, str]]:
    path = draw(_PREFIXES) + "".join(
        _encode(p) for p in draw(st.lists(_PATH_PARTS | st.text(max_size=12), max_size=5))
    )
    query = draw(st.lists(st.tuples(_KEYS, _VALUES), max_size=4))
    if query:
        path += "?" + "&".join(
            f"{urllib.parse.quote(k)}={_encode(v).replace('&', '%26')}" for k, v in query
        )
    headers = {}
    if draw(st.booleans()):
        headers["Range"] = draw(st.sampled_from(["bytes=0-3", "bytes=-2", "bytes=9999999-", "bytes=a-b"])
                                | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))  # fmt: skip
    return path, headers


class _Audit:
    """Every file the server's threads open or list while armed (an audit hook: it sees
    ``open``, ``os.open``, ``os.listdir`` and ``os.scandir`` whoever calls them)."""

    installed: _Audit | None = None

    def __init__(self) -> None:
        self.armed = False
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or event not in ("open", "os.listdir", "os.scandir"):
            return
        if threading.current_thread() is threading.main_thread() or not args:
            return
        target = args[0]
        if isinstance(target, (str, bytes, os.PathLike)):
            with self.lock:
                self.seen.append(os.fsdecode(os.path.abspath(target)))

    @classmethod
    def get(cls) -> _Audit:
        if cls.installed is None:
            cls.installed = cls()
            sys.addaudithook(cls.installed.hook)  # cannot be removed: a no-op when disarmed
        return cls.installed


def _raw_get(conn: list[http.client.HTTPConnection], srv: Running, path: str,
             headers: dict[str, str], method: str = "GET") -> tuple[int, bytes]:  # fmt: skip
    for attempt in range(2):
        try:
            conn[0].request(method, path, headers=headers)
            resp = conn[0].getresponse()
            return resp.status, resp.read()
        except (http.client.HTTPException, OSError):
            conn[0].close()
            conn[0] = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
            if attempt:
                raise
    raise AssertionError("unreachable")


def test_fuzz_paths_and_queries_never_500_never_outside(world: dict[str, Any]) -> None:
    srv: Running = world["srv"]
    root = str(world["root"])
    allowed = [root, os.path.dirname(cas.__file__), os.path.dirname(os.path.dirname(cas.__file__)),
               sys.prefix, sys.base_prefix, sys.exec_prefix, os.environ.get("CAS_CACHE_DIR", root),
               "/dev/urandom", "/proc/self", "/dev/null"]  # fmt: skip
    repo = os.path.dirname(os.path.dirname(cas.__file__))
    audit = _Audit.get()
    conn = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)]
    statuses: dict[int, int] = {}

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(raw_requests())
    def check(request: tuple[str, dict[str, str]]) -> None:
        path, headers = request
        status, body = _raw_get(conn, srv, path, headers)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (path, headers, status, body[:300])
        assert CANARY not in body, path
        if status >= 400 and status != 416:
            assert body.startswith(b"{") and b'"error"' in body, (path, status, body[:200])

    audit.armed = True
    try:
        check()
    finally:
        audit.armed = False
        conn[0].close()
    outside = sorted({p for p in audit.seen
                      if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)})  # fmt: skip
    assert outside == [], outside[:20]
    secret = str(world["base"] / "outside")
    assert not [p for p in audit.seen if p.startswith(secret)]
    store_files = [p for p in audit.seen if p.startswith(root)]
    assert store_files, "the audit hook saw nothing: it is not watching the server"
    assert not [p for p in audit.seen if p.startswith(repo + "/tests")]
    assert statuses.get(200, 0) > 0 and sum(v for k, v in statuses.items() if 400 <= k < 500) > 0


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH"]),
    request=raw_requests(),
    auth=st.sampled_from(
        [
            None,
            "Bearer wrong",
            "Bearer",
            "Basic dGVzdC10b2tlbg==",
            "Bearer test-token-",
            "bearer TEST-TOKEN",
            "test-token",
        ]
    ),  # fmt: skip
    body=st.sampled_from(
        [b"", b"{}", b'{"name": "evil", "artifact_type": "t"}', b'{"stage": "x"}']
    ),
)
def test_fuzz_no_write_without_the_token(
    world: dict[str, Any],
    method: str,
    request: tuple[str, dict[str, str]],
    auth: str | None,
    body: bytes,
) -> None:
    srv: Running = world["srv"]
    before = _snapshot(world["root"])
    path, headers = request
    if auth is not None:
        headers["Authorization"] = auth
    headers["Cookie"] = "cas_token=test-token"  # a browser's cookie: never enough to write
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    finally:
        conn.close()
    assert status in (401, 403, 421), (method, path, auth, status, data[:200])
    assert b'"error"' in data
    assert _snapshot(world["root"]) == before


# -- starting it -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["-m", "cas.serve"], ["-m", "cas.cli", "serve"]],
                         ids=["python -m cas.serve", "cas serve"])  # fmt: skip
def test_serve_command_generates_a_private_token(
    tmp_path: pathlib.Path, command: list[str]
) -> None:
    root = tmp_path / "store"
    cas.open_store(str(root)).save(b"served", "hello")
    env = {**os.environ, "CAS_ROOT": str(root), "CAS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, *command, "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = lines[0].split(" at ", 1)[1].split()[0].rstrip("/")
        token_file = pathlib.Path(lines[1].split(": ", 1)[1].strip())
        assert token_file.is_relative_to(tmp_path / "cache")
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert "FLOWYML_CATALOG_ENDPOINT=" in lines[2]
        deadline = time.monotonic() + 20
        while True:
            try:
                assert httpx.get(url + "/api/v1/content/hello").content == b"served"
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        entry = {"name": "via-cli", "artifact_type": "t"}
        assert httpx.post(url + "/flowyml/v1/artifacts", json=entry).status_code == 401
        r = httpx.post(url + "/flowyml/v1/artifacts", json=entry,
                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 201, r.text
    finally:
        proc.terminate()
        proc.wait(20)
    assert cas.open_store(str(root)).exists("via-cli")


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from cas.serve import deps

    real = importlib.util.find_spec
    monkeypatch.setattr(deps.importlib.util, "find_spec",
                        lambda name, *a: None if name == "uvicorn" else real(name, *a))  # fmt: skip
    with pytest.raises(cas.CasError, match=r"pip install 'cas-store\[serve\]'"):
        deps.require()


def test_token_file_and_arguments(tmp_path: pathlib.Path) -> None:
    import argparse

    from cas.serve import add_arguments
    from cas.serve.auth import read_token_file

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "9", "--token-file", "t"])
    assert (args.host, args.port, args.token_file, args.root) == ("127.0.0.1", 9, "t", None)
    (tmp_path / "t").write_text("  abc  \n")
    assert read_token_file(tmp_path / "t") == "abc"
    (tmp_path / "e").write_text("\n")
    with pytest.raises(cas.CasError):
        read_token_file(tmp_path / "e")
    with pytest.raises(cas.CasError):
        read_token_file(tmp_path / "missing")
