"""Starting a server: :func:`serve`, and the command line (``python -m cas.serve``,
wired into ``cas serve`` through :func:`add_arguments` and :func:`run`)."""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import cas
from cas.serve.deps import require

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8750
MAX_STREAMS = 16
IDLE_TIMEOUT = 30.0
MAX_CONNECTIONS = 256
#: glibc's ``M_MMAP_THRESHOLD``, and the size from which the server's buffers are mapped.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def add_arguments(parser: argparse.ArgumentParser, *, root: bool = True) -> None:
    """Add ``serve``'s options to ``parser`` (``root=False`` when the caller, such as the
    ``cas`` CLI, already has ``--root``)."""
    if root:
        parser.add_argument("--root", default=None, metavar="URL",
                            help="the store (default: $CAS_ROOT, then ./.cas)")  # fmt: skip
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}: this machine only)")  # fmt: skip
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")  # fmt: skip
    parser.add_argument("--token-file", default=None, metavar="F",
                        help="file holding the bearer token writes need (default: generate "
                        "one, write it mode 0600 in the cache folder and print where)")  # fmt: skip
    parser.add_argument("--reads", choices=("loopback", "open", "token"), default="loopback",
                        help="who may read without the token (default: peers on this machine)")  # fmt: skip
    parser.add_argument("--max-streams", type=_positive(int), default=MAX_STREAMS, metavar="N",
                        help=f"content downloads served at once; beyond, 503 with Retry-After "
                        f"(default {MAX_STREAMS})")  # fmt: skip
    parser.add_argument("--idle-timeout", type=_positive(float), default=IDLE_TIMEOUT,
                        metavar="SECONDS", help="close a download whose client has read "
                        f"nothing for this long (default {IDLE_TIMEOUT:g})")  # fmt: skip
    parser.add_argument("--max-connections", type=_positive(int), default=MAX_CONNECTIONS,
                        metavar="N", help="connections and requests in progress at once; "
                        f"beyond, 503 (default {MAX_CONNECTIONS})")  # fmt: skip


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
        return value

    return parse


def run(args: argparse.Namespace) -> int:
    """Run a server from parsed arguments until interrupted; the exit code (0, or 2 for an
    error, printed as the CLI prints errors)."""
    root = getattr(args, "root", None) or os.environ.get("CAS_ROOT") or ".cas"
    try:
        serve(root, host=args.host, port=args.port, token_file=args.token_file,
              reads=getattr(args, "reads", "loopback"),
              max_streams=getattr(args, "max_streams", MAX_STREAMS),
              idle_timeout=getattr(args, "idle_timeout", IDLE_TIMEOUT),
              max_connections=getattr(args, "max_connections", MAX_CONNECTIONS))  # fmt: skip
    except cas.CasError as exc:
        print(f"cas serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def serve(
    root: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token_file: str | None = None,
    *,
    reads: str = "loopback",
    max_streams: int = MAX_STREAMS,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    **storage_options: Any,
) -> None:
    """Serve the store at ``root`` on ``host:port`` until interrupted (blocks).

    Writes need the token in ``token_file``; without one a token is generated and
    written (mode 0600) to a file in cas's cache folder, whose path is printed, so
    writes are never open by default. ``storage_options`` go to :func:`cas.open_store`.

    What clients can hold is bounded: ``max_streams`` content downloads at once (503
    with ``Retry-After`` beyond), a download whose client reads nothing for
    ``idle_timeout`` seconds is closed, and ``max_connections`` connections and requests
    in progress at once (uvicorn's ``limit_concurrency``: 503 beyond).
    """
    require()
    import uvicorn

    from cas.serve.app import create_app, loopback_hosts
    from cas.serve.auth import new_token_file, read_token_file

    if not 0 <= port <= 65535:
        raise cas.CasError(f"port must be 0-65535, got {port}")
    # Every argument is checked before the store is opened, and a root that is not a
    # store is refused, never created: a typo must not become a new store that serves.
    given = read_token_file(token_file) if token_file is not None else None
    store = cas.open_store(root, create=False, **storage_options)
    try:
        sock = bind(host, port)
    except BaseException:
        store.close()
        raise
    port = sock.getsockname()[1]
    drop_stalled_peers(sock, idle_timeout)
    return_freed_memory()
    if given is not None and token_file is not None:
        token, where = given, os.fspath(token_file)
    else:
        token, path = new_token_file(host, port)
        where = str(path)
    app = create_app(store, token, reads=reads, allowed_hosts=loopback_hosts(host),
                     max_streams=max_streams, idle_timeout=idle_timeout)  # fmt: skip
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False,
                            lifespan="off", limit_concurrency=max_connections)  # fmt: skip
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"cas serve: {store.url} at http://{shown}:{port}/ (the page)\n"
        f"  token for writes: {where}\n"
        f"  FlowyML: FLOWYML_CATALOG_ENDPOINT=http://{shown}:{port}/flowyml/v1 "
        f"FLOWYML_CATALOG_API_KEY=$(cat {where})",
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()


def return_freed_memory() -> None:
    """Have glibc map every buffer of a quarter MiB or more on its own, so that freeing
    it returns it to the system. By default glibc raises that threshold to the largest
    buffer freed so far (a chunk, about a MiB), after which chunk buffers come from
    per-thread heaps it seldom gives back: 96 downloads that ended left the server
    about 100 MiB larger for good. Elsewhere than glibc this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def drop_stalled_peers(sock: socket.socket, seconds: float) -> None:
    """Have the kernel abort a connection whose peer has taken none of the data sent to
    it for ``seconds`` (``TCP_USER_TIMEOUT``, which accepted connections inherit from
    the listening socket). Closing a stalled download's connection only asks for it to
    be closed once what is queued has gone, which a peer that never reads never lets
    happen: the connection, its buffers and its place among ``max_connections`` would
    stay. Elsewhere than Linux this does nothing."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(seconds * 1000)))


def bind(host: str, port: int) -> socket.socket:
    """A listening address of our own, so that port 0 (a free port) is known before
    the token file is named and the address printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise cas.CasError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cas.serve",
                                     description="Serve a cas store over HTTP: FlowyML's "
                                     "catalog API, a read API and a web page.")  # fmt: skip
    add_arguments(parser)
    return run(parser.parse_args(argv))
