"""One adapter per object service (S3, GCS, Azure Blob), shared by refs and cas.

fsspec gives every filesystem the same calls, but not always the cheapest or the safest
one, and no word for a conditional write. A :class:`Service` holds, for one service,
the requests each operation costs and how its answers and failures read:

- compare-and-swap on one small file (the :class:`~refs.Conditional` contract: S3
  ``If-None-Match``/``If-Match``, GCS ``ifGenerationMatch``, Azure ``If-None-Match``/
  ``If-Match``), each sent once (see "Unknown outcomes");
- listings of a key prefix (one request per 1,000 keys) and reads of many small files;
- a stat by one HEAD, a refresh by one server-side copy, deletes in batches;
- how a path splits into bucket and key (as it is: the clients' ``split_path`` reads URL
  syntax into a path), the event loop calls run on, and what a failure means
  (:func:`diagnose`: a missing bucket, refused credentials, an unreachable service).

The base class serves any other fsspec filesystem (``memory://``) with fsspec's own
calls. Nothing here knows objects or refs: ``refs`` and ``cas.storage`` build on it.

Compare-and-swap on S3, GCS and Azure Blob, by the services' own conditional requests.

fsspec has no word for "write iff absent" or "write iff unchanged" that works on all
three (fsspec #1693, s3fs #917), so each class reaches through its fsspec filesystem
to the client underneath and sends the service's precondition itself:

=====  =========================================  ==========================  =================
       create / replace                           read (content, version)     remove
=====  =========================================  ==========================  =================
S3     PutObject ``If-None-Match: *`` /           one GetObject: body, ETag   DeleteObject
       ``If-Match: <etag>``                                                   ``If-Match``
GCS    multipart upload ``ifGenerationMatch=0``   one media GET: body,        DELETE
       / ``=<generation>``                        ``x-goog-generation``       ``ifGenerationMatch``
Azure  Put Blob ``If-None-Match: *`` /            one Get Blob: body, ETag    Delete Blob
       ``If-Match: <etag>``                                                   ``If-Match``
=====  =========================================  ==========================  =================

The real services enforce every one of these. The local servers the tests run
(moto 5, fake-gcs-server, Azurite 3.35) enforce all of them but one: fake-gcs-server
ignores ``ifGenerationMatch`` on DELETE (and on media and resumable uploads, which is
why writes here are multipart). ``tests/test_cloud_conditional.py`` marks that test
as a strict xfail naming the gap.

Answers. ``False`` means the service said the precondition failed, and only that:
412 (S3 PreconditionFailed, GCS 412, Azure ConditionNotMet), 409 where the service
uses it for a lost race (S3 ConditionalRequestConflict, Azure BlobAlreadyExists),
and, for replace and remove, 404 for the object (it went). Everything else raises
an ``OSError`` subclass, as fsspec does: ``FileNotFoundError`` for a missing bucket
or container (never "absent"), ``PermissionError`` for refused credentials,
``ConnectionError`` / ``TimeoutError`` for the network, ``OSError`` otherwise, each
with the client's exception as ``__cause__``. (A GCS 404 does not say which is
missing: a ``GCSConditional`` asks about the bucket at its first absent read and
remembers the answer, as cas's storage does; a bucket deleted while it runs then
reads as empty until a write fails.)

Unknown outcomes. A write that is retried after its first attempt may have landed
can meet its own success as a failed precondition. So a write trusts a precondition
answer only from a request sent once: S3 calls the boto client directly (not s3fs's
retry loop) and treats a 412/409/404 after botocore retried as unknown; GCS sends
its writes once through gcsfs's session, repeating only a 429 (refused before it
was applied); Azure turns the SDK's retries off for writes. An unknown outcome
raises ``OSError`` saying so, and :class:`~refs.RefStore` re-reads to learn it.

Threads. Each call runs the filesystem's coroutine on the filesystem's own event
loop (``fsspec.asyn.sync``); the classes keep no state of their own (but GCS's set
of buckets seen), so one instance serves many threads. Pass a filesystem made with ``asynchronous=False`` (the
default), one per process: its client sessions do not survive ``fork``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import importlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import fsspec
from fsspec.asyn import sync

from ..conditional import Conditional

T = TypeVar("T")

_FOREIGN_FAILURES: Final = (
    ("botocore.exceptions", ("BotoCoreError", "ClientError")),
    ("aiohttp", ("ClientError",)),
    ("azure.core.exceptions", ("AzureError",)),
    ("gcsfs.retry", ("HttpError",)),
    ("google.auth.exceptions", ("GoogleAuthError",)),
)


def backend_failures() -> tuple[type[BaseException], ...]:
    """The exception types translated to :class:`BackendError` at this seam."""
    found: list[type[BaseException]] = [OSError, TimeoutError, ConnectionError]
    found.append(asyncio.TimeoutError)  # not the builtin TimeoutError before Python 3.11
    for module, names in _FOREIGN_FAILURES:
        if module.partition(".")[0] not in sys.modules:
            continue
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            continue
        found += [getattr(loaded, name) for name in names if hasattr(loaded, name)]
    return tuple(found)


# What a failure is, from its class names (any in the MRO) and the service's error code,
# so that no client library needs importing to tell.
_NETWORK_CLASSES: Final = frozenset(
    {"ConnectionError", "TimeoutError", "EndpointConnectionError", "ConnectTimeoutError",
     "ReadTimeoutError", "ConnectionClosedError", "ProxyConnectionError", "HTTPClientError",
     "ClientConnectionError", "ServerTimeoutError", "ServiceRequestError",
     "ServiceResponseError", "TransportError"}
)  # fmt: skip
_AUTH_CLASSES: Final = frozenset(
    {"PermissionError", "NoCredentialsError", "PartialCredentialsError",
     "CredentialRetrievalError", "ClientAuthenticationError", "DefaultCredentialsError",
     "RefreshError"}
)  # fmt: skip
_AUTH_CODES: Final = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AuthenticationFailed", "AuthorizationFailure",
     "AuthorizationPermissionMismatch", "InvalidAuthenticationInfo"}
)  # fmt: skip
_MISSING_CODES: Final = frozenset({"NoSuchBucket", "ContainerNotFound"})


def diagnose(exc: BaseException) -> str:
    """``"missing"`` (bucket or container), ``"auth"``, ``"network"`` or ``"other"``."""
    seen: list[BaseException] = []
    err: BaseException | None = exc
    while err is not None and len(seen) < 6 and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    for err in seen:
        code, status = _code_of(err)
        classes = {klass.__name__ for klass in type(err).__mro__}
        if code in _MISSING_CODES:
            return "missing"
        if code in _AUTH_CODES or status in (401, 403) or classes & _AUTH_CLASSES:
            return "auth"
        if classes & _NETWORK_CLASSES or isinstance(err, asyncio.TimeoutError):
            return "network"
    return "other"


def _code_of(err: BaseException) -> tuple[str, int]:
    """(service error code, HTTP status) from a botocore, azure-core, gcsfs or aiohttp error."""
    response = getattr(err, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        meta = response.get("ResponseMetadata") or {}
        return str(response["Error"].get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
    code = getattr(err, "error_code", None)  # azure-core
    code = str(getattr(code, "value", code) or "")
    status = getattr(err, "status_code", None) or getattr(err, "status", None)
    if status is None:  # gcsfs HttpError: the HTTP status is its "code"
        status = getattr(err, "code", None)
    return code, status if isinstance(status, int) else 0


def run(fs: Any, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    result: T = sync(fs.loop, func, *args)
    return result


def check_fs(fs: Any, kind: str) -> None:
    if getattr(fs, "asynchronous", False):
        raise ValueError(f"{kind} needs a filesystem made with asynchronous=False")


def split(path: str) -> tuple[str, str]:
    """``(bucket, key)`` of a path without protocol, split as it is: the clients'
    ``split_path`` reads URL syntax into it (adlfs drops a trailing ``#``, so the refs of
    ``a/b#`` and ``a/b`` were one blob; s3fs reads ``?versionId=``)."""
    bucket, _, key = path.strip("/").partition("/")
    if not bucket or not key:
        raise ValueError(f"{path!r} is not 'bucket/key'")
    return bucket, key


def unknown_outcome(path: str, exc: BaseException) -> OSError:
    """A conditional write that may or may not have landed (see "Unknown outcomes")."""
    return OSError(
        errno.EIO,
        f"the outcome of the conditional write to {path} is unknown: the request left but"
        f" no trustworthy answer came back ({type(exc).__name__}: {exc}); re-read to find out",
    )


def aiohttp_error(exc: Exception) -> OSError | None:
    """The OSError for an aiohttp failure (s3fs and gcsfs both speak aiohttp), else None."""
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TimeoutError(errno.ETIMEDOUT, str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectionError):  # some are OSErrors, not ConnectionErrors
        return ConnectionError(errno.ECONNRESET, str(exc))
    if isinstance(exc, aiohttp.ClientError):
        return OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
    return None


class Service:
    """How refs and cas reach a filesystem past fsspec's generic calls, one request per call.

    This base serves any fsspec filesystem (``memory://`` and others) with fsspec's own
    calls; the object services below override them with the single request each has:
    fsspec's ``info`` of an absent key costs a second request (a listing, to look for a
    "directory"), and it has no in-place touch.
    """

    name = "fsspec"
    container = ""  # what the service calls a bucket; "" for none
    credentials = ""  # where the client looks for credentials, for error messages
    endpoint_option = "storage_options"  # where the address is set, for error messages
    io_threads = 0  # requests worth running at once (0: the CPU pool is enough)
    creates = False  # pipe_file(mode="create") is one request the service checks
    #: Options for ``fs.cat_file`` of a whole small file (S3: one GET, not HEAD + ranges).
    read_options: dict[str, Any] = {}  # noqa: RUF012 - read-only class default

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs: Any = fs  # each subclass calls its own client's methods

    def head(self, path: str) -> tuple[int, float]:
        """(size, modification time) of a file; ``FileNotFoundError`` if absent."""
        info = self.fs.info(path)
        if info.get("type") == "directory":
            raise FileNotFoundError(path)
        return int(info.get("size") or 0), mtime_of(info)

    def refresh(self, path: str) -> None:
        """Move a file's modification time to now; ``FileNotFoundError`` if absent."""
        # No in-place touch here: write the same bytes again (one PUT, never partial).
        # fsspec's touch(truncate=False) would create an empty file if it went meanwhile.
        self.fs.pipe_file(path, self.fs.cat_file(path))

    def holds_any(self, root: str) -> bool:
        """True if any file is below ``root``; ``FileNotFoundError`` if the bucket is missing."""
        try:
            return bool(self.fs.find(root, maxdepth=None))
        except FileNotFoundError:
            return False

    def delete_keys(self, paths: list[str]) -> int | None:
        """Delete many files in batched requests, returning how many went; None where the
        service has no batch delete (the caller deletes one by one)."""
        return None

    def bucket(self, root: str) -> str:
        return str(root.strip("/").split("/", 1)[0])

    def endpoint(self) -> str:
        return ""


class ObjectService(Service, Conditional):
    """A service with buckets, reached by its own requests: compare-and-swap on single
    files (the :class:`~refs.Conditional` contract), listings of key prefixes and reads
    of many small files; subclasses implement the coroutines ``_read``, ``_list`` and
    the writes."""

    io_threads = 16
    creates = True

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        check_fs(fs, type(self).__name__)
        super().__init__(fs)

    async def _read(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """(content, version) of one file, or None if there is none (one GET)."""
        raise NotImplementedError

    #: True if a listing can start after a key on the service's side (``start_after``):
    #: S3's StartAfter, GCS's startOffset. Azure Blob has no such parameter.
    lists_after = False

    async def _list(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None,
        limit: int | None,
        start_after: str | None = None,
        details: dict[str, Detail] | None = None,
    ) -> list[str]:
        """Keys (and with a delimiter, folders) below ``prefix``, in name order; with
        ``start_after`` (where :attr:`lists_after`), only the keys after it. With
        ``details``, each listed key's :data:`Detail` goes into it: its version token
        (what a read of the key returns beside the bytes, :meth:`_read`: the S3 ETag,
        the GCS generation, the Azure ETag; a caller can tell a file it read before is
        unchanged without reading it again), size and modification time."""
        raise NotImplementedError

    def list_keys(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None = None,
        limit: int | None = None,
        start_after: str | None = None,
    ) -> list[str]:
        if start_after is not None and not self.lists_after:
            raise NotImplementedError(f"{type(self).__name__} cannot list after a key")
        return run(self.fs, self._list, bucket, prefix, delimiter, limit, start_after)

    def list_versions(self, bucket: str, prefix: str) -> dict[str, str]:
        """Every key below ``prefix`` with its version token (see :meth:`_list`), one
        listing per 1,000 keys."""
        return {key: detail[0] for key, detail in self.list_details(bucket, prefix).items()}

    def list_details(self, bucket: str, prefix: str) -> dict[str, Detail]:
        """Every key below ``prefix`` with its :data:`Detail`, one listing per 1,000 keys."""
        details: dict[str, Detail] = {}
        run(self.fs, self._list, bucket, prefix, None, None, None, details)
        return details

    def read_many(self, where: list[tuple[str, str]]) -> list[bytes | None]:
        """Contents of many (bucket, key), ``READS_IN_FLIGHT`` at once; None where absent."""
        return [None if got is None else got[0] for got in self.read_many_versions(where)]

    def read_many_versions(self, where: list[tuple[str, str]]) -> list[tuple[bytes, str] | None]:
        """(content, version) of many (bucket, key), ``READS_IN_FLIGHT`` at once; None
        where absent."""
        return run(self.fs, self._read_many, where)

    async def _read_many(self, where: list[tuple[str, str]]) -> list[tuple[bytes, str] | None]:
        semaphore = asyncio.Semaphore(READS_IN_FLIGHT)

        async def one(bucket: str, key: str) -> tuple[bytes, str] | None:
            async with semaphore:
                got = await self._read(bucket, key)
            return None if got is None else (bytes(got[0]), got[1])

        return list(await asyncio.gather(*(one(bucket, key) for bucket, key in where)))


def split_root(root: str) -> tuple[str, str]:
    """``(bucket, key prefix ending in "/" or "")`` of a root inside a bucket."""
    bucket, _, key = root.strip("/").partition("/")
    return bucket, key.strip("/") + "/" if key.strip("/") else ""


#: Keys a listing request asks for (the most S3 and Azure return).
PAGE: Final = 1000
#: Reads of many small files (refs, history entries) in flight at once.
READS_IN_FLIGHT: Final = 32


#: What a listing says of one file: (version token, size, modification time).
Detail = tuple[str, int, float]


def detail_of(version: object, size: object, info: dict[str, Any]) -> Detail:
    """A listed file's :data:`Detail` (an unquoted version token, as :func:`version_of`)."""
    return str(version).strip('"'), int(size or 0), mtime_of(info)  # type: ignore[call-overload]


def version_of(info: dict[str, Any]) -> str | None:
    """The version token of a file from an fsspec listing's info dict (s3fs ``ETag``,
    gcsfs ``generation``, adlfs ``etag``), as a read gives it unquoted; None if the
    listing gives none."""
    for key in ("ETag", "generation", "etag"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return None


def mtime_of(info: dict[str, Any]) -> float:
    """Modification time from an fsspec info dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "ctime"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.timezone.utc)
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()  # unknown: treat as new, so gc's grace period spares it
