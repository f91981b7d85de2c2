"""The ASGI application: routes, the guard in front of them, and errors as JSON."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

import cas
from cas.serve import content, flowyml_api, read_api
from cas.serve.auth import COOKIE, Auth, is_loopback
from cas.serve.responses import ApiError, error_body, from_exception

log = logging.getLogger("cas.serve")

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def create_app(
    store: cas.ArtifactStore,
    token: str,
    *,
    reads: str = "loopback",
    allowed_hosts: Sequence[str] | None = None,
    max_streams: int = content.MAX_STREAMS,
    idle_timeout: float = content.IDLE_TIMEOUT,
) -> Starlette:
    """The application over ``store``: ``/flowyml/v1``, ``/api/v1`` and the page.

    ``reads``: ``loopback`` (peers on this machine read without the token), ``open`` or
    ``token``; writes always need ``token``. ``allowed_hosts``: the ``Host`` headers to
    answer (None: any); a server bound to loopback passes ``LOOPBACK_HOSTS`` so that
    a web page of another site cannot read it through DNS rebinding. ``max_streams``:
    content downloads served at once (beyond: 503 with ``Retry-After``);
    ``idle_timeout``: seconds a download waits for its client to read before its
    connection is closed.
    """
    static = _static_files()
    streams = content.Streams(max_streams, idle_timeout)

    def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        body = static.get(name)
        if body is None:
            raise HTTPException(404, f"no page asset {name[:100]!r}")
        suffix = name[name.rfind(".") :]
        return Response(body, media_type=STATIC_TYPES[suffix],
                        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})  # fmt: skip

    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/static/{name}", page, methods=["GET", "HEAD"]),
            Mount("/flowyml/v1", routes=flowyml_api.routes(store)),
            Mount("/api/v1", routes=read_api.routes(store, streams)),
        ],
        exception_handlers={
            HTTPException: _http_error,
            ApiError: _any_error,
            cas.CasError: _any_error,
            Exception: _any_error,
        },  # fmt: skip
    )
    app.state.store = store
    app.add_middleware(Guard, auth=Auth(token, reads), allowed_hosts=allowed_hosts)
    return app


def _static_files() -> dict[str, bytes]:
    """The page's assets, read once: served from memory by exact name, so no request
    path ever reaches the filesystem."""
    folder = resources.files("cas.serve") / "static"
    return {
        item.name: item.read_bytes()
        for item in folder.iterdir()
        if item.is_file() and item.name[item.name.rfind(".") :] in STATIC_TYPES
    }


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_body(exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _any_error(request: Request, exc: Exception) -> Response:
    return from_exception(exc)


class Guard:
    """Before any route: the ``Host`` check, then the token (see :mod:`cas.serve.auth`);
    after: headers every answer carries. Plain ASGI, so nothing reaches a route without
    passing here, whatever routes are added later."""

    def __init__(self, app: ASGIApp, auth: Auth, allowed_hosts: Sequence[str] | None) -> None:
        self.app = app
        self.auth = auth
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)  # type: ignore[arg-type]

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> Response | None:
        if self.allowed is not None:
            host = _host_name(headers.get("host", ""))
            if host not in self.allowed:
                return error_body(421, f"this server does not answer for host {host[:100]!r}")
        path: str = scope.get("path", "")
        method: str = scope["method"]
        if method in ("GET", "HEAD") and (path == "/" or path.startswith("/static/")):
            return None  # the page's own assets hold no data: it must load to ask for a token
        client = scope.get("client")
        verdict = self.auth.check(method, headers.get("authorization"), _cookie(headers),
                                  client[0] if client else None)  # fmt: skip
        if verdict is None:
            return None
        response = error_body(verdict.status, verdict.message)
        if verdict.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="cas"'
        return response


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: dict[str, str]) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == COOKIE and value:
            return value
    return None


def loopback_hosts(host: str) -> list[str] | None:
    """The ``Host`` names a server bound to ``host`` answers: loopback ones when bound
    to loopback, any when bound elsewhere (its name is not known here)."""
    return [*LOOPBACK_HOSTS, host.lower()] if is_loopback(host) else None
