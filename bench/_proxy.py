"""A latency-injecting TCP proxy that counts the HTTP requests passing through it.

Round trips decide how fast a real bucket is, and the local S3 server (moto) answers in
a millisecond or two: put this proxy in front of it and every byte waits ``delay``
seconds in each direction (20 ms by default: a 40 ms round trip, as to a nearby
region), while bandwidth is left alone (data is delayed, not throttled: a delay line,
not a queue of whole messages). Binds 127.0.0.1 only.

It also reads the HTTP/1.1 streams it carries (request and status lines, headers,
``Content-Length`` and chunked bodies, keep-alive) and logs every request: method, kind,
path, when it arrived and when its answer was back with the client. ::

    with latency_proxy(srv.endpoint, delay=0.020) as proxy:
        fs = s3fs.S3FileSystem(endpoint_url=proxy.endpoint, ...)
        with proxy.window() as seen:
            fs.pipe_file("bucket/k", b"v")
        seen.by_kind            # Counter({"PUT": 1})
        seen.round_trips        # 1: requests in flight together count once
        proxy.total.by_method   # everything since the proxy started

Kinds (S3's operations as they look on the wire): ``LIST`` is a GET of a bucket with
``list-type=2`` (ListObjectsV2) or a v1 listing (``prefix=``/``delimiter=``/``marker=``
on the bucket); ``PUT part`` an UploadPart (``partNumber`` and ``uploadId``); ``COPY``
a PUT with ``x-amz-copy-source``; ``POST`` covers multipart create/complete and batch
deletes; ``GET``, ``HEAD``, ``PUT``, ``DELETE`` the rest (``by_detail`` splits further).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

DEFAULT_DELAY = 0.020  # seconds, one way
HOST = "127.0.0.1"
_READ = 256 * 1024
_QUEUED = 256  # reads waiting in one direction's delay line before the reader waits


@dataclass
class Request:
    """One HTTP request the proxy carried, and when its answer was complete."""

    method: str
    kind: str
    detail: str
    target: str
    start: float  # time.monotonic() when its first line reached the proxy
    end: float | None = None  # when the last byte of its answer reached the client
    status: int | None = None
    sent: int = 0  # body bytes of the request
    received: int = 0  # body bytes of the response
    expect: bool = False  # sent "Expect: 100-continue": the body waits for the server's go
    waits: int = 0  # round trips before the answer: 1, or 2 when the body waited for 100 Continue

    @property
    def seconds(self) -> float:
        return (self.end if self.end is not None else self.start) - self.start


@dataclass
class Tally:
    """Requests of one stretch of time (a window) or of the proxy's whole life."""

    requests: list[Request] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def by_method(self) -> collections.Counter[str]:
        return collections.Counter(r.method for r in self.requests)

    @property
    def by_kind(self) -> collections.Counter[str]:
        return collections.Counter(r.kind for r in self.requests)

    @property
    def by_detail(self) -> collections.Counter[str]:
        return collections.Counter(r.detail for r in self.requests)

    @property
    def round_trips(self) -> int:
        """Round trips on the critical path: requests whose times overlap (in flight
        together) count once, so N sequential requests are N round trips and N parallel
        ones are 1; a request whose body waited for ``100 Continue`` is two."""
        trips, group, horizon = 0, 0, float("-inf")
        for r in sorted(self.requests, key=lambda r: r.start):
            end = r.end if r.end is not None else r.start
            if r.start > horizon:
                trips += group
                group, horizon = 0, end
            else:
                horizon = max(horizon, end)
            group = max(group, r.waits or 1)
        return trips + group

    @property
    def continues(self) -> int:
        """Requests whose body waited a round trip for the server's ``100 Continue``."""
        return sum(1 for r in self.requests if r.waits > 1)

    @property
    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests)

    @property
    def bytes_received(self) -> int:
        return sum(r.received for r in self.requests)

    def summary(self, per: int = 1) -> str:
        """``12 (PUT 10, HEAD 1, LIST 1)``, each count divided by ``per``."""
        kinds = sorted(self.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        inner = ", ".join(f"{k} {_num(v / per)}" for k, v in kinds)
        return f"{_num(self.count / per)} ({inner})" if inner else _num(self.count / per)


def _num(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) or x >= 100 else f"{x:,.2f}".rstrip("0").rstrip(".")


def classify(method: str, target: str, headers: dict[str, str]) -> tuple[str, str]:
    """(kind, detail) of an S3 request from its request line and headers."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.strip("/")
    bucket_only = "/" not in path
    if method == "GET":
        if query.get("list-type") == ["2"]:
            return "LIST", "ListObjectsV2"
        if bucket_only and path and ({"prefix", "delimiter", "marker"} & query.keys() or not query):
            return "LIST", "ListObjects"
        if "uploads" in query:
            return "LIST", "ListMultipartUploads"
        if "location" in query:
            return "GET", "GetBucketLocation"
        if bucket_only:
            return "GET", "GET bucket " + ",".join(sorted(query)) if query else "ListBuckets"
        return "GET", "GetObject"
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "PUT part", "UploadPart"
        if "x-amz-copy-source" in headers:
            return "COPY", "CopyObject"
        if bucket_only:
            return "PUT", "CreateBucket" if not query else "PUT bucket " + ",".join(sorted(query))
        return "PUT", "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "POST", "CreateMultipartUpload"
        if "uploadId" in query:
            return "POST", "CompleteMultipartUpload"
        if "delete" in query:
            return "POST", "DeleteObjects"
        return "POST", "POST"
    if method == "HEAD":
        return "HEAD", "HeadBucket" if bucket_only else "HeadObject"
    if method == "DELETE":
        if "uploadId" in query:
            return "DELETE", "AbortMultipartUpload"
        return "DELETE", "DeleteBucket" if bucket_only else "DeleteObject"
    return method, method


# -- reading HTTP/1.1 as it flows past ----------------------------------------------------


class _Messages:
    """An incremental HTTP/1.1 message reader for one direction of one connection.

    ``feed(data)`` returns the events the bytes complete, in order: ``("head", first
    line, headers)`` when a message's head is read and ``("end", body bytes)`` when its
    body is. A response's body length depends on its request (HEAD: none), which the
    caller passes through ``head_only``. Anything unreadable turns the reader off: bytes
    still flow, they are just no longer counted.
    """

    def __init__(self, responses: bool) -> None:
        self.responses = responses
        self.buf = bytearray()
        self.state = "head"
        self.left = 0  # body bytes (or chunk bytes) still to skip
        self.body = 0
        self.broken = False
        self.head_only: collections.deque[bool] = collections.deque()  # responses: per request

    def feed(self, data: bytes) -> list[tuple[object, ...]]:
        if self.broken:
            return []
        self.buf += data
        events: list[tuple[object, ...]] = []
        try:
            while self._step(events):
                pass
        except (ValueError, IndexError):
            self.broken = True
        return events

    def close(self) -> list[tuple[object, ...]]:
        """The stream ended: a body that runs to the end of the connection is complete."""
        if self.state == "to-eof" and not self.broken:
            self.state = "head"
            return [("end", self.body + len(self.buf))]
        return []

    def _step(self, events: list[tuple[object, ...]]) -> bool:
        if self.state == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[: end + 4]
            first, headers = head[0], {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            events.append(("head", first, headers))
            self._start_body(first, headers, events)
            return True
        if self.state == "fixed":
            take = min(self.left, len(self.buf))
            del self.buf[:take]
            self.left -= take
            self.body += take
            if self.left:
                return False
            self._end(events)
            return True
        if self.state == "chunk-size":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(self.buf[:end]).split(b";")[0].strip() or b"0", 16)
            del self.buf[: end + 2]
            self.state, self.left = ("trailer", 0) if size == 0 else ("chunk", size + 2)
            return True
        if self.state == "chunk":
            take = min(self.left, len(self.buf))
            del self.buf[:take]
            self.left -= take
            self.body += take
            if self.left:
                return False
            self.body -= 2  # the CRLF after each chunk is framing
            self.state = "chunk-size"
            return True
        if self.state == "trailer":
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            line = bytes(self.buf[:end])
            del self.buf[: end + 2]
            if not line:
                self._end(events)
            return True
        # to-eof: everything until the connection closes is this body
        self.body += len(self.buf)
        self.buf.clear()
        return False

    def _start_body(
        self, first: str, headers: dict[str, str], events: list[tuple[object, ...]]
    ) -> None:
        self.body = 0
        if self.responses:
            status = int(first.split()[1])
            if 100 <= status < 200:  # 100 Continue: the real answer follows
                self.state = "head"
                return
            head_only = self.head_only.popleft() if self.head_only else False
            if head_only or status in (204, 304):
                self._end(events)
                return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.state = "chunk-size"
        elif "content-length" in headers:
            self.left = int(headers["content-length"])
            self.state = "fixed"
            if self.left == 0:
                self._end(events)
        elif self.responses:
            self.state = "to-eof"
        else:
            self._end(events)  # a request without a length has no body

    def _end(self, events: list[tuple[object, ...]]) -> None:
        events.append(("end", self.body))
        self.state = "head"


# -- the proxy --------------------------------------------------------------------------


class LatencyProxy:
    """The running proxy (made by :func:`latency_proxy`): ``endpoint`` to aim clients at,
    ``total`` for every request so far, ``window()`` for the requests of one block."""

    def __init__(self, upstream_host: str, upstream_port: int, delay: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.log: list[Request] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="bench-proxy", daemon=True
        )
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def total(self) -> Tally:
        return Tally(list(self.log))

    @contextlib.contextmanager
    def window(self) -> Iterator[Tally]:
        """A tally of the requests that start while the block runs (filled in at its end)."""
        seen = Tally()
        first = len(self.log)
        try:
            yield seen
        finally:
            seen.requests[:] = self.log[first:]

    # -- lifecycle

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._client, HOST, 0, limit=_READ), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- one connection

    async def _client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream, limit=_READ)
        except OSError:
            c_writer.close()
            self._tasks.discard(task)
            return
        pending: collections.deque[Request] = collections.deque()
        sending: list[Request] = []  # the request whose body is being read
        requests, responses = _Messages(responses=False), _Messages(responses=True)

        def on_request(events: list[tuple[object, ...]], now: float) -> None:
            for event in events:
                if event[0] == "head":
                    first, headers = str(event[1]), event[2]
                    assert isinstance(headers, dict)
                    method, target = (first.split(" ") + ["", ""])[:2]
                    kind, detail = classify(method, target, headers)
                    req = Request(method, kind, detail, target, start=now)
                    req.expect = "100-continue" in headers.get("expect", "").lower()
                    self.log.append(req)
                    pending.append(req)
                    sending[:] = [req]
                    responses.head_only.append(method == "HEAD")
                elif sending:
                    sending.pop().sent = int(str(event[1]))

        def on_response(events: list[tuple[object, ...]], now: float) -> None:
            for event in events:
                if event[0] == "head" and pending:
                    first = str(event[1])
                    with contextlib.suppress(ValueError, IndexError):
                        status = int(first.split()[1])
                        if status >= 200:
                            pending[0].status = status
                        elif status == 100 and pending[0].expect:
                            pending[0].waits = 2
                elif event[0] == "end" and pending:
                    req = pending.popleft()
                    req.received = int(str(event[1]))
                    req.end = now + self.delay  # when the client has it
                    req.waits = req.waits or 1

        try:
            await asyncio.gather(
                self._pump(c_reader, u_writer, requests, on_request),
                self._pump(u_reader, c_writer, responses, on_response),
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a connection reset, or the proxy stopping: both sides are closed below
        finally:
            for w in (u_writer, c_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    parser: _Messages, note: object) -> None:  # fmt: skip
        """Copy one direction, each read delivered ``delay`` after it arrived."""
        assert callable(note)
        loop = asyncio.get_running_loop()
        line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED)

        async def deliver() -> None:
            while True:
                due, data = await line.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver()) if self.delay > 0 else None
        try:
            while True:
                try:
                    data = await reader.read(_READ)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                now = time.monotonic()
                note(parser.feed(data) if data else parser.close(), now)
                if sender is not None:
                    if sender.done():  # the other side went away: stop reading
                        break
                    await line.put((loop.time() + self.delay, data))
                elif data:
                    writer.write(data)
                    await writer.drain()
                elif writer.can_write_eof():
                    writer.write_eof()
                if not data:
                    break
            if sender is not None:
                await sender
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            if sender is not None and not sender.done():
                sender.cancel()


@contextlib.contextmanager
def latency_proxy(upstream: str, delay: float = DEFAULT_DELAY) -> Iterator[LatencyProxy]:
    """Run a proxy in front of ``upstream`` (``http://127.0.0.1:PORT`` or ``host:port``),
    adding ``delay`` seconds to each direction; yield it (``.endpoint``, ``.total``,
    ``.window()``)."""
    parts = urlsplit(upstream if "://" in upstream else f"tcp://{upstream}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"upstream {upstream!r} needs a host and a port")
    proxy = LatencyProxy(parts.hostname, parts.port, delay)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m bench._proxy http://127.0.0.1:PORT [--delay-ms 20]``: run a proxy in
    front of a server until interrupted, then print what it carried (for trying a
    client by hand: ``AWS_ENDPOINT_URL_S3=<printed endpoint> cas ...``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench._proxy", description=main.__doc__)
    ap.add_argument("upstream", help="http://127.0.0.1:PORT of the server")
    ap.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY * 1000,
                    help="delay each way, ms (20)")  # fmt: skip
    args = ap.parse_args(argv)
    with latency_proxy(args.upstream, delay=args.delay_ms / 1000) as proxy:
        print(f"proxy {proxy.endpoint} -> {args.upstream}, {args.delay_ms:g} ms each way;"
              " Ctrl-C to stop", flush=True)  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
        total = proxy.total
        print(f"\n{total.summary()}; {total.bytes_sent:,} bytes up, {total.bytes_received:,} down")
        for detail, n in total.by_detail.most_common():
            print(f"  {n:>8,}  {detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
