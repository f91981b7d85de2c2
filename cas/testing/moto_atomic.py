"""moto's S3 server with S3's conditional writes made atomic: ``python -m
cas.testing.moto_atomic -H HOST -p PORT``.

moto checks a write's ``If-Match`` / ``If-None-Match`` and then stores the object: two
steps with no lock between them, on a threaded server. Under load two writers that read
the same version can then both succeed, which S3 never allows (a conditional write is
atomic there), and a compare-and-swap test fails for the server's sake, not the code's
(seen as a lost increment when the machine was busy). This serves moto's own
application, with every request that carries a condition run one at a time; all other
requests stay concurrent.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

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


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined]  # as moto.server sets it
    run_simple(
        args.host, args.port, AtomicConditions(app), threaded=True,
        request_handler=MotoRequestHandler,
    )  # fmt: skip


if __name__ == "__main__":
    main()
