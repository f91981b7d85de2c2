"""What a client can hold in ``cas serve``: stalled readers of a large artifact, against
the real server process (``python -m cas.serve``) on 127.0.0.1, its memory read from
``/proc``. Loopback reads need no token, so any local process can do this."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

import cas

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

MiB = 1 << 20
SIZE = 16 * MiB


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    port: int

    def rss_mib(self) -> float:
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def stall(self, n: int, name: str = "big") -> list[socket.socket]:
        """``n`` connections that ask for ``name``'s content and never read."""
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            request = f"GET /api/v1/content/{name} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n\r\n"
            s.sendall(request.encode())
            socks.append(s)
        return socks


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("serve-limits") / "store"
    store = cas.open_store(str(root), fsync=False)
    store.save(os.urandom(SIZE), "big")
    store.close()
    return root


@contextlib.contextmanager
def serving(root: pathlib.Path, *options: str) -> Iterator[Server]:
    env = {**os.environ, "CAS_CACHE_DIR": str(root.parent / "cache")}
    command = [sys.executable, "-m", "cas.serve", "--root", str(root), "--port", "0", *options]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" at ", 1)[1].split()[0].rstrip("/")
        server = Server(proc, url, int(url.rsplit(":", 1)[1]))
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/api/v1/names", timeout=5).raise_for_status()
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        proc.wait(20)


def poll(check: object, seconds: float) -> bool:
    """True as soon as ``check()`` is, False if it still is not after ``seconds``."""
    assert callable(check)
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return bool(check())
        time.sleep(0.1)
    return True


def test_stalled_readers_hold_bounded_memory_and_free_it(root: pathlib.Path) -> None:
    with serving(root) as server:
        assert len(httpx.get(server.url + "/api/v1/content/big", timeout=30).content) == SIZE
        baseline = server.rss_mib()
        socks = server.stall(96)
        try:
            peak = 0.0
            for _ in range(30):  # the streams fill what the sockets take, then stall
                peak = max(peak, server.rss_mib())
                time.sleep(0.1)
            assert peak < 256, f"96 stalled readers: {peak:.0f} MiB (baseline {baseline:.0f})"
            # the server still answers while they stall
            assert httpx.get(server.url + "/api/v1/names", timeout=10).status_code == 200
        finally:
            for s in socks:
                s.close()
        assert poll(lambda: server.rss_mib() < baseline + 64, 5), (
            f"5 s after the clients left: {server.rss_mib():.0f} MiB (baseline {baseline:.0f})"
        )


def test_downloads_beyond_the_limit_wait_and_an_idle_one_is_closed(root: pathlib.Path) -> None:
    with serving(root, "--max-streams", "4", "--idle-timeout", "2") as server:
        socks = server.stall(4)
        try:
            # each stalled reader holds its stream: the fifth download is told to retry
            def refused() -> bool:
                r = httpx.get(server.url + "/api/v1/content/big", timeout=10)
                return r.status_code == 503

            assert poll(refused, 5)
            r = httpx.get(server.url + "/api/v1/content/big", timeout=10)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
            assert "retry" in r.json()["error"]
            # other requests are still answered, and a HEAD holds no stream
            assert httpx.get(server.url + "/api/v1/names", timeout=10).status_code == 200
            assert httpx.head(server.url + "/api/v1/content/big", timeout=10).status_code == 200
            # after the idle time the stalled streams are closed and their slots free
            assert poll(lambda: not refused(), 15)
            got = httpx.get(server.url + "/api/v1/content/big", timeout=30)
            assert got.status_code == 200 and len(got.content) == SIZE
            # a stalled reader that reads at last finds a short body, then the end (or a
            # reset, once the kernel dropped the connection): never the whole content
            assert len(_read_to_end(socks[0])) < SIZE
        finally:
            for s in socks:
                s.close()


def _read_to_end(s: socket.socket) -> bytes:
    parts = []
    s.settimeout(30)
    try:
        while part := s.recv(1 << 20):
            parts.append(part)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def test_a_peer_that_never_reads_loses_its_connection(root: pathlib.Path) -> None:
    with serving(root, "--idle-timeout", "2") as server:
        resting = _sockets(server)
        socks = server.stall(4)
        try:
            assert poll(lambda: _sockets(server) > resting, 5)
            # the server closes them (its stream after 2 s idle, the kernel the connection
            # whose queued data the peer never takes), though the peers never close
            assert poll(lambda: _sockets(server) <= resting, 20), (_sockets(server), resting)
        finally:
            for s in socks:
                s.close()


def _sockets(server: Server) -> int:
    count = 0
    for fd in pathlib.Path(f"/proc/{server.proc.pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            continue  # closed while we counted: the server is closing what it holds
    return count
