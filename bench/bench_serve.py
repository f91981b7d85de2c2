"""``cas serve`` benchmark: content over HTTP beside a plain Starlette ``FileResponse``.

Run: ``python -m bench.bench_serve [--small 2000] [--large-mib 64] [--large-gets 5]``
(or ``python -m bench serve``).

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

No targets yet (none is written in an issue): requests/s and MB/s, and cas over the
peer as a ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3

from bench._common import MB, MIB, Rounds, fmt_rate, table, workdir, write_corpus

BLOCK = MIB


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
            with running(store) as srv, file_server(files) as peer:
                print(f"serve benchmark: GET of a {args.small_size:,}-byte and a {args.large_mib} MiB"
                      f" artifact, one keep-alive connection, best of {args.rounds}")  # fmt: skip
                return _run(args, store, srv.url, peer, small, large, want)
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


if __name__ == "__main__":
    main()
