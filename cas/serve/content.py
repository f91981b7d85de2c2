"""Content downloads: verified streams, ``ETag`` = content id, single ``Range`` requests.

A store's stream is verified as it is read and cannot seek, so a range starting at
byte *n* reads (and decompresses and hashes) the *n* bytes before it and drops them:
a range costs what reading up to its end costs. Before the status line goes out the
first block is read, so a corrupt object of up to one block (every blob up to 4 MiB is
verified whole when opened) is a 502 naming it; corruption found later in a large,
chunked file can only cut the connection, which the client sees as a short body
(``Content-Length`` promised more), never as a complete, wrong file.

What a client can hold is bounded (:class:`Streams`): at most ``limit`` content
streams at once (beyond: 503 with ``Retry-After``), and a stream whose client has not
taken a block for ``idle`` seconds is closed. An open stream holds its decoder's
read-ahead (a few chunks, about 9 MiB for a chunked file), so the limit, not the
number of clients, sets the server's memory; a stream's buffers are released the
moment it ends, however it ends.
"""

from __future__ import annotations

import logging
import mimetypes
import re
import threading
import urllib.parse
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, BinaryIO

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cas.serve.responses import ApiError

log = logging.getLogger("cas.serve")

BLOCK = 256 * 1024
#: Content streams a server holds at once, by default.
MAX_STREAMS = 16
#: Seconds a stream waits for its client to take a block before closing the connection.
IDLE_TIMEOUT = 30.0
#: Seconds a client refused for want of a stream is asked to wait.
RETRY_AFTER = 5
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
# Types a browser may show inline from this origin; everything else downloads as bytes
# (an artifact holding HTML or SVG must never run script on the page's origin).
_INLINE_SAFE = frozenset({"text/plain", "text/csv", "application/json", "image/png",
                          "image/jpeg", "image/gif", "image/webp", "application/pdf"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Blob:
    """What is downloaded: its filename, size, and the id its bytes hash to."""

    filename: str
    size: int
    etag_id: str
    immutable: bool  # reached by id: the same URL can never serve other bytes


class Streams:
    """The content streams in flight: at most ``limit`` at once, each closed when its
    client has not read for ``idle`` seconds."""

    def __init__(self, limit: int = MAX_STREAMS, idle: float = IDLE_TIMEOUT) -> None:
        if limit < 1 or idle <= 0:
            raise ValueError(f"need limit >= 1 and idle > 0, got {limit} and {idle}")
        self.limit = limit
        self.idle = idle
        self._slots = threading.BoundedSemaphore(limit)

    def take(self) -> None:
        """A slot for one stream, or a 503 asking the client to retry shortly."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(503, f"{self.limit} downloads are in flight, the most this server "
                           f"serves at once; retry in {RETRY_AFTER} s",
                           headers={"Retry-After": str(RETRY_AFTER)})  # fmt: skip

    def give_back(self) -> None:
        self._slots.release()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(first, last)`` of one satisfiable byte range, None to send everything (no
    header, several ranges or a malformed one: RFC 9110 lets a server ignore those),
    or ``"unsatisfiable"``."""
    if not header:
        return None
    m = _RANGE.match(header)
    if m is None:
        return None
    first_text, last_text = m.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # a suffix: the last n bytes
        n = int(last_text)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1) if size else "unsatisfiable"
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None  # invalid: ignored
    if first >= size:
        return "unsatisfiable"
    last = int(last_text) if last_text else size - 1
    return first, min(last, size - 1)


def etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return etag in tags


def headers_for(blob: Blob, inline: bool) -> dict[str, str]:
    guessed = mimetypes.guess_type(blob.filename)[0] or "application/octet-stream"
    show = inline and guessed in _INLINE_SAFE
    quoted = urllib.parse.quote(blob.filename, safe="")
    ascii_name = blob.filename.encode("ascii", "replace").decode().replace('"', "_")
    ascii_name = "".join(c if c.isprintable() and c not in "\\;" else "_" for c in ascii_name)
    disposition = "inline" if show else "attachment"
    return {
        "ETag": f'"{blob.etag_id}"',
        "Accept-Ranges": "bytes",
        "Content-Type": guessed if show else "application/octet-stream",
        "Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}",
        "Cache-Control": "public, max-age=31536000, immutable" if blob.immutable else "no-cache",
        "Content-Security-Policy": "sandbox; default-src 'none'",
    }


def respond(
    request: Request, blob: Blob, opener: Callable[[], BinaryIO], streams: Streams
) -> Response:
    """The response for a GET or HEAD of ``blob``; ``opener`` opens its verified stream,
    in one of ``streams``' slots."""
    headers = headers_for(blob, inline=request.query_params.get("inline") in ("1", "true"))
    etag = headers["ETag"]
    if etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=_only(headers, "ETag", "Cache-Control"))
    wanted = parse_range(request.headers.get("range"), blob.size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's partial copy is of other bytes: send them all
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={"Content-Range": f"bytes */{blob.size}",
                                                  "ETag": etag})  # fmt: skip
    status, first, length = 200, 0, blob.size
    if isinstance(wanted, tuple):
        first, last = wanted
        status, length = 206, last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{blob.size}"
    headers["Content-Length"] = str(length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    streams.take()
    try:
        stream = opener()
        try:
            head = _skip_then_read(stream, first, min(length, BLOCK))
            if len(head) == length and first + length >= blob.size:
                stream.read(1)  # small enough to verify whole before the status goes out
        except BaseException:
            stream.close()
            raise
    except BaseException:
        streams.give_back()
        raise
    body = _body(stream, head, length, first + length >= blob.size)
    return BlobResponse(body, streams, status_code=status, headers=headers)


class BlobResponse(Response):
    """A body sent block by block, each read in a worker thread only once the client
    took the one before. It owns its stream and its slot: both are released when it
    ends, whether the body is complete, the client left, the client stopped reading
    for ``streams.idle`` seconds (the connection is then closed), or a read failed."""

    def __init__(self, body: Generator[bytes, None, None], streams: Streams, status_code: int,
                 headers: dict[str, str]) -> None:  # fmt: skip
        self.body_parts = body
        self.streams = streams
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._until_disconnect, receive, group.cancel_scope)
                await self._send_all(send)
                group.cancel_scope.cancel()
        finally:
            # no worker is inside the generator now (a read in a worker is waited
            # for, not abandoned, when cancelled): closing it closes the stream
            self.body_parts.close()
            self.streams.give_back()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})  # fmt: skip
        while True:
            part = await anyio.to_thread.run_sync(next, self.body_parts, None)
            if part is None:
                break
            if not await self._send_or_idle(send, {"type": "http.response.body", "body": part,
                                                   "more_body": True}):  # fmt: skip
                return
        await self._send_or_idle(send, {"type": "http.response.body", "body": b"",
                                        "more_body": False})  # fmt: skip

    async def _send_or_idle(self, send: Send, message: dict[str, Any]) -> bool:
        """Send ``message``; False if the client did not take it within the idle time.
        The app then returns without completing the body, so the server closes the
        connection (the client sees a body shorter than its ``Content-Length``)."""
        with anyio.move_on_after(self.streams.idle):
            await send(message)
            return True
        log.warning("closed a download whose client read nothing for %.0f s", self.streams.idle)
        return False

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def _skip_then_read(stream: BinaryIO, skip: int, n: int) -> bytes:
    while skip > 0:
        dropped = stream.read(min(skip, BLOCK))
        if not dropped:
            return b""
        skip -= len(dropped)
    return _read_exactly(stream, n)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = stream.read(min(n, BLOCK))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _body(stream: BinaryIO, head: bytes, length: int, to_eof: bool) -> Generator[bytes, None, None]:
    """The body, one block behind the reads: the last block goes out only after the
    stream reached EOF (where it checks the whole file's hash) without an error."""
    try:
        pending, left = head, length - len(head)
        while left > 0:
            part = stream.read(min(left, BLOCK))
            if not part:
                break
            left -= len(part)
            if pending:
                yield pending
            pending = part
        if to_eof:
            stream.read(1)  # at EOF the stream checks the whole content's hash
        if pending:
            yield pending
    finally:
        stream.close()


def _only(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k in names}
