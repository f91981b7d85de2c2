"""``cas serve`` benchmark: content over HTTP beside a plain Starlette ``FileResponse``.

Run: ``python -m bench.bench_serve [--small 2000] [--large-mib 64] [--large-gets 5]
[--records 100000] [--named 1000] [--reads 2000] [--searches 200]`` (or ``python -m bench
serve``; ``--quick``: 10,000 records).

A store holds a small artifact (``--small-size`` bytes) and a large one (``--large-mib``
of the mixed corpus, saved from a file). The real server (``cas.serve.testing.running``:
uvicorn over the application, in a thread) answers ``GET /api/v1/content/<name>``; the
peer is a Starlette application of one route returning ``FileResponse`` of the same
bytes from a file, on the same uvicorn settings. One client, one keep-alive
connection, requests one after another (``http.client``, in this process: client and
server share the machine's two cores, as they would on a laptop). Also shown: reading
the file in this process (the ceiling of any server) and ``store.load`` of the same
artifact. cas verifies what it sends (BLAKE3 of every chunk, then of the whole); a
``FileResponse`` sends the file as it is.

No targets for content (none is written in an issue): requests/s and MB/s, and cas over
the peer as a ratio.

Catalog reads (issue 22: ">= 1,000 catalog reads per second through the read API; p50
< 5 ms for search at 100,000 records"): the store holds ``--records`` records (100,000).
The newest ``--named`` (1,000) are registered through the public API
(``store.catalog.register(..., data=...)`` in one ``store.batch()``: a record object,
a journal entry, a name, content); the rest, which that path would take minutes to
write, go straight into the store's catalog engine in batches of 10,000, as
``bench_catalog`` builds its records (complete records, ``make_record``-checked, with
ids). Building is setup, not timed. Then, over one keep-alive ``httpx`` client:
``GET /api/v1/artifacts/<id>`` for ids drawn from every record, and
``GET /api/v1/artifacts/<name>`` for the named ones (``--reads`` each, requests/s);
``GET /api/v1/search?q=`` for a tag, the artifact type (a word), free text and word +
tag (``--searches`` each, 100 results at most, p50 and p95 in ms).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3

from bench._common import MB, MIB, Rounds, fmt_rate, mark, table, workdir, write_corpus

BLOCK = MIB
ENGINE_BATCH = 10_000
READS_TARGET = 1_000  # catalog reads/s through the read API (issue 22)
SEARCH_P50_MS = 5.0  # search p50 at 100,000 records (issue 22)


@contextlib.contextmanager
def file_server(folder: Path) -> Iterator[str]:
    """A Starlette app serving ``folder``'s files with ``FileResponse``, on uvicorn in a
    thread (as ``cas.serve.testing.running`` runs cas's); yields its URL."""
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, Response
    from starlette.routing import Route

    def one(request: Request) -> Response:
        return FileResponse(folder / Path(request.path_params["name"]).name)

    app = Starlette(routes=[Route("/file/{name}", one)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="bench-file-server")  # fmt: skip
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise SystemExit("the FileResponse server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


class Client:
    """One keep-alive HTTP/1.1 connection; ``get`` reads a whole body, returns its size."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def get(self, path: str, digest: bool = False) -> tuple[int, str]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {resp.read()[:200]!r}")
        h = blake3.blake3() if digest else None
        n = 0
        while part := resp.read(BLOCK):
            n += len(part)
            if h is not None:
                h.update(part)
        return n, h.hexdigest() if h is not None else ""

    def close(self) -> None:
        self.conn.close()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--small", type=int, default=2_000, help="GETs of the small artifact (2,000)")
    ap.add_argument("--small-size", type=int, default=4096, help="its bytes (4096)")
    ap.add_argument("--large-mib", type=int, default=64, help="the large artifact, MiB (64)")
    ap.add_argument("--large-gets", type=int, default=5, help="GETs of it (5)")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many (2)")
    ap.add_argument("--records", type=int, default=100_000,
                    help="catalog records in the store (100,000)")  # fmt: skip
    ap.add_argument("--named", type=int, default=1_000,
                    help="of them, registered through the public API (1,000)")  # fmt: skip
    ap.add_argument("--reads", type=int, default=2_000,
                    help="GETs of /api/v1/artifacts/{id}, and of {name}, per round (2,000)")  # fmt: skip
    ap.add_argument("--searches", type=int, default=200, help="GETs of each search query (200)")
    args = ap.parse_args(argv)
    try:
        import cas
        from cas.serve.testing import running
    except ImportError as exc:
        print(f"serve benchmark: skipped, cas serve does not import ({exc})")
        return {"skipped": str(exc)}
    with workdir("cas-bench-serve-") as work:
        os.environ.setdefault("CAS_CACHE_DIR", str(work / "cache"))
        files = work / "files"
        files.mkdir()
        small, large = files / "small.bin", files / "large.bin"
        small.write_bytes(os.urandom(args.small_size))
        write_corpus(large, args.large_mib * MIB)
        want = blake3.blake3(large.read_bytes()).hexdigest()
        store = cas.open_store(work / "store", fsync=False)
        store.save(small.read_bytes(), "bench/small")
        store.save(large, "bench/large")
        try:
            built = build_catalog(store, max(args.records, 1), max(0, args.named))
            with running(store) as srv, file_server(files) as peer:
                print(f"serve benchmark: GET of a {args.small_size:,}-byte and a {args.large_mib} MiB"
                      f" artifact, one keep-alive connection, best of {args.rounds}")  # fmt: skip
                res = _run(args, store, srv.url, peer, small, large, want)
                cat = _catalog_reads(args, srv.url, built)
                return {**res, **cat, "pass": {**res["pass"], **cat["pass"]}}
        except cas.CasError as exc:  # e.g. the serve extra is not installed
            print(f"serve benchmark: skipped, {exc}")
            return {"skipped": str(exc)}
        finally:
            store.close()


def _run(args: argparse.Namespace, store: Any, url: str, peer: str, small: Path, large: Path,
         want: str) -> dict[str, Any]:  # fmt: skip
    r = Rounds()
    n_small, n_large = args.small, args.large_gets
    size_small, size_large = small.stat().st_size, large.stat().st_size
    paths = {
        "cas": ("/api/v1/content/bench/small", "/api/v1/content/bench/large"),
        "file": ("/file/small.bin", "/file/large.bin"),
    }
    for who, base in (("cas", url), ("file", peer)):  # check once: the bytes, whole
        c = Client(base)
        got = c.get(paths[who][1], digest=True)
        c.close()
        if got != (size_large, want):
            raise SystemExit(f"{who} served {got[0]} bytes hashing to {got[1][:12]}, not the file")

    def gets(base: str, path: str, n: int, size: int) -> None:
        c = Client(base)
        try:
            for _ in range(n):
                if c.get(path)[0] != size:
                    raise SystemExit(f"GET {path}: a short body")
        finally:
            c.close()

    def read_file(path: Path, n: int) -> None:
        for _ in range(n):
            with open(path, "rb") as f:
                while f.read(BLOCK):
                    pass

    for _ in range(max(1, args.rounds)):
        for who, base in (("cas", url), ("file", peer)):
            r.run(f"{who} small", lambda b=base, p=paths[who][0]: gets(b, p, n_small, size_small))
            r.run(f"{who} large", lambda b=base, p=paths[who][1]: gets(b, p, n_large, size_large))
        r.run("read small", lambda: read_file(small, n_small))
        r.run("read large", lambda: read_file(large, n_large))
        r.run("load small", lambda: [store.load("bench/small") for _ in range(n_small)])
        r.run("load large", lambda: [store.open("bench/large").read() for _ in range(n_large)])

    rows = []
    figures: dict[str, float] = {}
    for label, key in (
        ("cas serve GET /api/v1/content", "cas"),
        ("Starlette FileResponse", "file"),
        ("read the file, in process", "read"),
        ("store.load / store.open().read(), in process", "load"),
    ):
        s, big = r.best[f"{key} small"], r.best[f"{key} large"]
        x_small = r.best["file small"] / s
        x_large = r.best["file large"] / big
        rows.append([label, f"{n_small / s:,.0f}", f"{x_small:.2f}x", fmt_rate(n_large * size_large / big / MB),
                     f"{n_large / big:,.1f}", f"{x_large:.2f}x"])  # fmt: skip
        figures[f"{key} small /s"] = n_small / s
        figures[f"{key} large MB/s"] = n_large * size_large / big / MB
    print(table(
        f"content over HTTP: {size_small:,} bytes x {n_small:,}, {size_large / MIB:.0f} MiB x {n_large}",
        ["", "small GET/s", "vs FileResponse", "large", "large GET/s", "vs FileResponse"], rows,
        ["one client, one keep-alive connection, one request at a time; server and client in this"
         " process (uvicorn in a thread, as cas.serve.testing runs it)",
         "cas verifies what it sends; the large artifact is chunked (FastCDC), stored compressed"],
    ))  # fmt: skip
    return {**figures, "pass": {}}


# -- catalog reads through the read API ------------------------------------------------


def build_catalog(store: Any, n: int, named: int) -> dict[str, Any]:
    """``n`` records in ``store``'s catalog: the newest ``named`` through the public API,
    the rest into the catalog engine (see the module's text). Returns the ids (all),
    the names (the public ones), what built them and how long it took."""
    from bench.bench_catalog import STAGES, TEAMS, TYPES, WORDS, make_records
    from cas.repo.records import FIELDS, make_record

    named = min(named, n)
    bulk = n - named
    t0 = time.perf_counter()
    ids: list[str] = []
    engine = store.repo.index.catalog  # what store.catalog reads (ArtifactCatalog._engine)
    records = make_records(bulk)
    for start in range(0, bulk, ENGINE_BATCH):
        chunk = []
        for r in records[start : start + ENGINE_BATCH]:
            fields = {k: r[k] for k in FIELDS if k in r}
            chunk.append({**make_record(**fields, materializer="pickle", content_kind="blob"),
                          "id": r["id"]})  # fmt: skip
        engine.put_many(chunk)
        ids += [c["id"] for c in chunk]
    t_engine = time.perf_counter() - t0
    rnd = random.Random(22)
    names: list[str] = []
    t1 = time.perf_counter()
    with store.batch():
        for i in range(named):
            team = TEAMS[i % len(TEAMS)]
            name = f"served/{team}/{rnd.choice(WORDS)}_{i}"
            rid = store.catalog.register(
                name, TYPES[i % len(TYPES)], data=f"artifact {i}".encode(),
                source_step=rnd.choice(("prepare", "train", "evaluate")),
                source_run_id=f"run{i // 10}", source_pipeline=f"pipe{i % 50}",
                tags={"stage": rnd.choice(STAGES), "team": team},
                metadata={"framework": rnd.choice(WORDS), "auc": rnd.random(), "epochs": 10},
            )  # fmt: skip
            ids.append(rid)
            names.append(name)
    t_public = time.perf_counter() - t1
    how = (f"{named:,} through store.catalog.register(data=...) in one store.batch()"
           f" ({t_public:.1f} s, {named / max(t_public, 1e-9):,.0f}/s), {bulk:,} straight into"
           f" the catalog engine, put_many of {ENGINE_BATCH:,} ({t_engine:.1f} s)")  # fmt: skip
    print(f"serve benchmark: catalog of {n:,} records built (setup, not timed): {how}")
    return {"n": n, "ids": ids, "names": names, "how": how}


def _catalog_reads(args: argparse.Namespace, url: str, built: dict[str, Any]) -> dict[str, Any]:
    import httpx

    n, ids, names = built["n"], built["ids"], built["names"]
    rnd = random.Random(5)
    n_reads = max(1, args.reads)
    by_id = [f"/api/v1/artifacts/{rnd.choice(ids)}" for _ in range(n_reads)]
    by_name = [f"/api/v1/artifacts/{rnd.choice(names)}" for _ in range(n_reads)] if names else []
    queries = ["stage:production", "model", "resnet", "fraud stage:production"]
    client = httpx.Client(base_url=url, timeout=60)
    try:
        for path in (by_id[0], *by_name[:1]):  # check once: the record it names
            got = client.get(path)
            want = path.removeprefix("/api/v1/artifacts/")
            if got.status_code != 200 or want not in (got.json()["id"], got.json()["name"]):
                raise SystemExit(f"GET {path}: {got.status_code} {got.text[:200]!r}")
        hits = {}
        for q in queries:  # warm once; and count what each query returns
            got = client.get("/api/v1/search", params={"q": q})
            if got.status_code != 200:
                raise SystemExit(f"search {q!r}: {got.status_code} {got.text[:200]!r}")
            hits[q] = got.json()["count"]
        for path in by_id[:100] + by_name[:100]:  # warm the connection and the caches
            client.get(path)

        def reads(paths: list[str]) -> None:
            for path in paths:
                if client.get(path).status_code != 200:
                    raise SystemExit(f"GET {path}: not 200")

        r = Rounds()
        lat: dict[str, list[float]] = {}
        for _ in range(max(1, args.rounds)):
            r.run("id", lambda: reads(by_id))
            if by_name:
                r.run("name", lambda: reads(by_name))
            for q in queries:
                times = []
                for _ in range(max(1, args.searches)):
                    t0 = time.perf_counter()
                    resp = client.get("/api/v1/search", params={"q": q})
                    times.append(time.perf_counter() - t0)
                    if resp.status_code != 200:
                        raise SystemExit(f"search {q!r}: {resp.status_code}")
                if q not in lat or statistics.median(times) < statistics.median(lat[q]):
                    lat[q] = times  # the round with the best p50
    finally:
        client.close()

    def p(times: list[float], pct: int) -> float:
        if len(times) < 2:
            return times[0] * 1e3
        return statistics.quantiles(times, n=100, method="inclusive")[pct - 1] * 1e3

    figures: dict[str, float] = {"catalog records": n}
    figures["read by id /s"] = n_reads / r.best["id"]
    rows = [[f"GET /api/v1/artifacts/{{id}}, ids of all {n:,}", f"{figures['read by id /s']:,.0f}",
             f"{1e3 * r.best['id'] / n_reads:.2f}", "", "", f">= {READS_TARGET:,}/s"]]  # fmt: skip
    if by_name:
        figures["read by name /s"] = n_reads / r.best["name"]
        rows.append([f"GET /api/v1/artifacts/{{name}}, {len(names):,} names",
                     f"{figures['read by name /s']:,.0f}", f"{1e3 * r.best['name'] / n_reads:.2f}",
                     "", "", f">= {READS_TARGET:,}/s"])  # fmt: skip
    for q in queries:
        p50, p95 = statistics.median(lat[q]) * 1e3, p(lat[q], 95)
        figures[f"search {q!r} p50 ms"] = p50
        figures[f"search {q!r} p95 ms"] = p95
        mean = statistics.fmean(lat[q])
        rows.append([f"GET /api/v1/search?q={q} -> {hits[q]}", f"{1 / mean:,.0f}", f"{1e3 * mean:.2f}",
                     f"{p50:.2f}", f"{p95:.2f}", f"p50 < {SEARCH_P50_MS:g} ms"])  # fmt: skip
    read_rate = min(v for k, v in figures.items() if k.startswith("read by"))
    search_p50 = max(v for k, v in figures.items() if k.startswith("search") and "p50" in k)
    ok_reads, ok_search = read_rate >= READS_TARGET, search_p50 < SEARCH_P50_MS
    print(table(
        f"catalog reads through the read API: {n:,} records, best of {max(1, args.rounds)}",
        ["", "req/s", "ms/req", "p50 ms", "p95 ms", "target"], rows,
        [f"reads: {read_rate:,.0f}/s (the slower of id and name), target >= {READS_TARGET:,}/s:"
         f" {mark(ok_reads)}",
         f"search: worst p50 {search_p50:.2f} ms, target < {SEARCH_P50_MS:g} ms"
         f"{'' if n >= 100_000 else f' at 100,000 records (this run: {n:,})'}: {mark(ok_search)}",
         "one httpx client, one keep-alive connection, one request at a time; server and client"
         f" in this process (uvicorn in a thread); reads: {n_reads:,} GETs, timed together;"
         f" search: at most 100 results (the API's default limit), each of"
         f" {max(1, args.searches)} GETs timed",
         f"records: {built['how']}"],
    ))  # fmt: skip
    return {**figures, "pass": {"catalog reads": ok_reads, "search": ok_search}}


if __name__ == "__main__":
    main()
