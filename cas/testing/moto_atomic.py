"""moto's S3 server with S3's conditional writes made atomic: ``python -m
cas.testing.moto_atomic -H HOST -p PORT``.

moto checks a write's ``If-Match`` / ``If-None-Match`` and then stores the object: two
steps with no lock between them, on a threaded server. Under load two writers that read
the same version can then both succeed, which S3 never allows (a conditional write is
atomic there), and a compare-and-swap test fails for the server's sake, not the code's
(seen as a lost increment when the machine was busy). This serves moto's own
application, with every request that carries a condition run one at a time; all other
requests stay concurrent.

At a benchmark's scale (:mod:`cas.testing.moto_scale`, loaded here): listings answered
in O(page) from a sorted index of each bucket's names, where moto walks and sorts the
whole bucket for every page; and ``POST /moto-api/cas-bulk``, which stores many objects
in one request exactly as their PUTs would (client: :func:`bulk_put`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgpack

#: Where the server takes a bulk load (see cas.testing.moto_scale); moto uses no such path.
BULK_PATH = "/moto-api/cas-bulk"

_CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")
_WRITES = ("PUT", "POST", "DELETE")


class AtomicConditions:
    """A WSGI middleware: conditional writes one at a time, the rest as they come."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in _WRITES and any(c in environ for c in _CONDITIONS):
            with self.lock:  # the check and the store, and the answer, inside it
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def bulk_put(
    endpoint: str, bucket: str, items: Iterable[tuple[str, bytes] | tuple[str, bytes, str | None]]
) -> int:
    """Store ``(key, bytes)`` or ``(key, bytes, content_type)`` items in ``bucket`` of
    the server at ``endpoint`` in one request, each as its PUT would (same ETag, size,
    checksum, last-modified now); return how many. For benchmarks: keep a request to a
    few thousand small objects. Raises ``OSError`` (``urllib.error.HTTPError``, with the
    server's reason) if the server refused the load."""
    import urllib.request

    body = msgpack.packb([[bucket, *item] for item in items], use_bin_type=True)
    req = urllib.request.Request(
        endpoint.rstrip("/") + BULK_PATH, data=body, method="POST",
        headers={"Content-Type": "application/x-msgpack"},
    )  # fmt: skip
    # loopback: never through an HTTP(S)_PROXY the environment may name
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=600) as resp:
        stored: int = json.loads(resp.read())["stored"]
    return stored


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    from cas.testing import moto_scale

    moto_scale.install()

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]  # as moto.server sets it
    served = moto_scale.BulkLoad(AtomicConditions(app), BULK_PATH)
    run_simple(
        args.host, args.port, served, threaded=True, request_handler=MotoRequestHandler,
    )  # fmt: skip


if __name__ == "__main__":
    main()
