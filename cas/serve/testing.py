"""A server in a thread, for tests and notebooks: ``with running(store) as srv: srv.url``.

The real uvicorn server over the real application, on a free port of 127.0.0.1; the
thread is named ``cas-serve`` (its worker threads are anyio's), so a test can tell
the server's file accesses from its own.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cas
from cas.serve.deps import require


@dataclass(frozen=True)
class Running:
    url: str
    token: str
    store: cas.ArtifactStore
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@contextlib.contextmanager
def running(
    store: cas.ArtifactStore,
    token: str = "test-token",
    *,
    reads: str = "loopback",
    host: str = "127.0.0.1",
    timeout: float = 20.0,
) -> Iterator[Running]:
    """Serve ``store`` until the block ends; the server stops (and is joined) after."""
    require()
    import uvicorn

    from cas.serve.app import create_app, loopback_hosts
    from cas.serve.cli import bind

    app = create_app(store, token, reads=reads, allowed_hosts=loopback_hosts(host))
    sock = bind(host, 0)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="cas-serve")  # fmt: skip
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise cas.CasError(f"the test server did not start within {timeout} s")
        time.sleep(0.01)
    port = sock.getsockname()[1]
    try:
        yield Running(f"http://{host}:{port}", token, store, thread)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
