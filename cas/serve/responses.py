"""JSON in and out: safe encoding, parameter parsing, and cas errors as HTTP statuses.

Every refusal is ``{"error": "<what and the next step>", ...}`` with a 4xx status. The
one justified 5xx is a corrupt or unreadable object (``IntegrityError``: 502, the
storage answered with bytes that are not what their id promises; ``BackendError``:
503, the storage did not answer); its body names the object and says ``cas fsck``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

import cas

log = logging.getLogger("cas.serve")

MAX_LIMIT = 10_000
# The catalog indexes a name or type as one LMDB key (at most 480 bytes), a tighter limit
# than the ref rules' (200 bytes per component): longer ones are refused here, before
# they reach it (a register would move the ref, then fail to index the record).
MAX_NAME_BYTES = 480


class ApiError(Exception):
    """A refusal with its HTTP status; ``extra`` joins the JSON body, ``headers`` the
    response (``Retry-After``, say)."""

    def __init__(
        self, status: int, message: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra


def jsonable(value: Any) -> Any:
    """``value`` made strict JSON: record metadata may hold bytes (as ``{"$base64": ..}``),
    NaN and infinities (as strings) and non-string keys, which ``json`` refuses."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):  # an Artifact
        return {f: jsonable(getattr(value, f)) for f in value.__dataclass_fields__}
    return str(value)


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:  # the common case at C speed; only what json refuses takes the long way
            text = json.dumps(content, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False, default=_plain)  # fmt: skip
        except (TypeError, ValueError):
            text = json.dumps(jsonable(content), ensure_ascii=False, separators=(",", ":"))
        return text.encode()


def _plain(value: Any) -> Any:
    """What ``json`` cannot write by itself, as :func:`jsonable` writes it."""
    if isinstance(value, (bytes, bytearray, memoryview, set, frozenset)):
        return jsonable(value)
    if hasattr(value, "__dataclass_fields__"):
        return {f: getattr(value, f) for f in value.__dataclass_fields__}
    raise TypeError(f"not JSON: {type(value).__name__}")


def error_body(status: int, message: str, **extra: Any) -> JSON:
    return JSON({"error": message, **extra}, status_code=status)


def from_exception(exc: BaseException) -> JSON:
    """The response for an exception raised while answering a request."""
    if isinstance(exc, ApiError):
        response = error_body(exc.status, exc.message, **exc.extra)
        response.headers.update(exc.headers)
        return response
    if isinstance(exc, cas.ObjectNotFound):
        return error_body(404, str(exc))
    if isinstance(exc, cas.IsAFolder):
        return error_body(400, str(exc), folder=exc.what)
    if isinstance(exc, (cas.InvalidRefName, cas.InvalidId, cas.QueryError, cas.InvalidInput)):
        return error_body(400, str(exc))
    if isinstance(exc, cas.IntegrityError):
        log.error("corrupt object %s: %s", exc.object_id, exc)
        return error_body(502, str(exc), object_id=exc.object_id, next="run 'cas fsck'")
    if isinstance(exc, (cas.RefConflict, cas.RefLocked)):
        return error_body(409, str(exc))
    if isinstance(exc, cas.MaterializerError):
        return error_body(400, str(exc))
    if isinstance(exc, cas.BackendError):
        log.error("storage failed: %s", exc)
        return error_body(503, f"the storage did not answer: {exc}")
    log.exception("unexpected error", exc_info=exc)
    return error_body(500, f"internal error: {type(exc).__name__}: {exc}")


def int_param(
    request: Request, name: str, default: int, low: int = 1, high: int = MAX_LIMIT
) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


def depth_param(request: Request, default: int | None = 1) -> int | None:
    """``depth``: a number of hops (1-1000) or ``all`` (None: transitive)."""
    raw = request.query_params.get("depth")
    if raw is None or raw == "":
        return default
    if raw.strip().lower() in ("all", "none", "0"):
        return None
    return int_param(request, "depth", 1, 1, 1000)


def str_param(request: Request, *names: str, required: bool = False, max_len: int = 4096) -> str:
    """The first of ``names`` present in the query string ('' if none and not required)."""
    for name in names:
        value = request.query_params.get(name)
        if value is not None:
            if len(value) > max_len:
                raise ApiError(400, f"{name} is longer than {max_len} characters")
            return value
    if required:
        raise ApiError(400, f"missing query parameter {names[0]!r}")
    return ""


def fast_path(store: cas.ArtifactStore) -> bool:
    """True if catalog reads of ``store`` take microseconds (a local or memory root:
    LMDB and a small file read), so they run on the event loop rather than paying a
    hop to a worker thread; a cloud root's ref reads are network calls and do not."""
    url = store.url
    return "://" not in url or url.startswith(("file://", "memory://"))


def endpoint(
    fn: Callable[[Request], Response], inline: bool
) -> Callable[[Request], Awaitable[Response]]:
    """An async endpoint running ``fn`` on the event loop (``inline``) or in a worker."""
    if inline:

        async def run_inline(request: Request) -> Response:
            return fn(request)

        return run_inline

    async def run_in_worker(request: Request) -> Response:
        return await run_in_threadpool(fn, request)

    return run_in_worker


def check_catalog_text(what: str, value: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise ApiError(400, f"{what} is longer than {MAX_NAME_BYTES} bytes, the catalog's limit")
    return value
