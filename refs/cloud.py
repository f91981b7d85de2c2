"""Compare-and-swap on S3, GCS and Azure Blob, by the services' own conditional requests.

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
import errno
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from fsspec.asyn import sync

from refs.conditional import Conditional
from refs.errors import RefError

__all__ = ["AzureConditional", "GCSConditional", "S3Conditional", "conditional_for"]

T = TypeVar("T")


def conditional_for(fs: Any) -> Conditional:
    """The conditional-request :class:`Conditional` for an S3, GCS or Azure filesystem.

    Raises :class:`~refs.RefError` for any other filesystem. Only the client
    library of ``fs`` is looked at: none is imported that is not already loaded.
    """
    kinds: list[tuple[str, str, Callable[[Any], Conditional]]] = [
        ("s3fs", "S3FileSystem", S3Conditional),
        ("gcsfs.core", "GCSFileSystem", GCSConditional),
        ("adlfs", "AzureBlobFileSystem", AzureConditional),
    ]
    for module, name, make in kinds:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(fs, getattr(loaded, name)):
            return make(fs)
    raise RefError(
        f"refs.cloud has no compare-and-swap for {type(fs).__name__}"
        f" (protocol {fs.protocol!r}): S3 (s3fs), GCS (gcsfs) and Azure Blob (adlfs) only"
    )


def _run(fs: Any, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    result: T = sync(fs.loop, func, *args)
    return result


def _check_fs(fs: Any, kind: str) -> None:
    if getattr(fs, "asynchronous", False):
        raise ValueError(f"{kind} needs a filesystem made with asynchronous=False")


def _split(fs: Any, path: str) -> tuple[str, str]:
    """``(bucket, key)`` of a path without protocol, split as it is: the clients'
    ``split_path`` reads URL syntax into it (adlfs drops a trailing ``#``, so the refs of
    ``a/b#`` and ``a/b`` were one blob; s3fs reads ``?versionId=``)."""
    bucket, _, key = path.strip("/").partition("/")
    if not bucket or not key:
        raise ValueError(f"{path!r} is not 'bucket/key'")
    return bucket, key


def _unknown(path: str, exc: BaseException) -> OSError:
    """A conditional write that may or may not have landed (see "Unknown outcomes")."""
    return OSError(
        errno.EIO,
        f"the outcome of the conditional write to {path} is unknown: the request left but"
        f" no trustworthy answer came back ({type(exc).__name__}: {exc}); re-read to find out",
    )


def _aiohttp_error(exc: Exception) -> OSError | None:
    """The OSError for an aiohttp failure (s3fs and gcsfs both speak aiohttp), else None."""
    import aiohttp

    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return TimeoutError(errno.ETIMEDOUT, str(exc) or "timed out")
    if isinstance(exc, aiohttp.ClientConnectionError):  # some are OSErrors, not ConnectionErrors
        return ConnectionError(errno.ECONNRESET, str(exc))
    if isinstance(exc, aiohttp.ClientError):
        return OSError(errno.EIO, f"{type(exc).__name__}: {exc}")
    return None


# -- S3 ---------------------------------------------------------------------------------

_S3_LOST = {"PreconditionFailed", "ConditionalRequestConflict"}


def _s3_code(exc: BaseException) -> tuple[str, int, int]:
    """(error code, HTTP status, botocore retries) of a ClientError, or of the one it wraps."""
    for err in (exc, exc.__cause__):
        response = getattr(err, "response", None)
        if isinstance(response, dict) and "Error" in response:
            meta = response.get("ResponseMetadata", {})
            code = str(response["Error"].get("Code", ""))
            return code, int(meta.get("HTTPStatusCode", 0)), int(meta.get("RetryAttempts", 0))
    return "", 0, 0


def _s3_error(exc: Exception) -> OSError:
    import botocore.exceptions as boto
    from s3fs.errors import translate_boto_error

    if isinstance(exc, boto.ClientError):  # as s3fs does: NoSuchBucket -> FileNotFoundError, ...
        translated = translate_boto_error(exc)
        return translated if isinstance(translated, OSError) else OSError(errno.EIO, str(exc))
    if isinstance(exc, (boto.ConnectTimeoutError, boto.ReadTimeoutError)):
        return TimeoutError(errno.ETIMEDOUT, str(exc))
    if isinstance(exc, boto.ConnectionError):
        return ConnectionError(errno.ECONNREFUSED, str(exc))
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return PermissionError(errno.EACCES, str(exc))
    if (translated_http := _aiohttp_error(exc)) is not None:
        return translated_http
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, boto.BotoCoreError):
        return OSError(errno.EIO, str(exc))
    raise exc  # not an I/O failure: a bug, shown as it is


class S3Conditional(Conditional):
    """Compare-and-swap on an ``s3fs.S3FileSystem``; the version is the ETag.

    An S3 ETag is derived from the content, so a ref that moves away and back reads
    as unchanged; :class:`~refs.RefStore` only relies on "it still holds what I read".
    """

    def __init__(self, fs: Any) -> None:
        _check_fs(fs, "S3Conditional")
        self.fs = fs

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        bucket, key = _split(self.fs, path)
        return _run(self.fs, self._read, bucket, key)

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        return self._send(path, "put_object", Body=bytes(data), IfNoneMatch="*")

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        return self._send(path, "put_object", Body=bytes(data), IfMatch=version)

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        return self._send(path, "delete_object", IfMatch=version)

    async def _read(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        try:
            # Through s3fs's retry loop: a read may be repeated safely.
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                data = await resp["Body"].read()
            finally:
                resp["Body"].close()
        except FileNotFoundError as exc:
            if _s3_code(exc)[0] == "NoSuchKey":
                return None
            raise  # NoSuchBucket: the bucket is missing, not the ref
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _s3_error(exc) from exc
        return bytes(data), str(resp["ETag"])

    def _send(self, path: str, method: str, **kwargs: Any) -> bool:
        bucket, key = _split(self.fs, path)
        done = _run(self.fs, self._send_once, path, method, bucket, key, kwargs)
        self.fs.invalidate_cache(path)
        return done

    async def _send_once(
        self, path: str, method: str, bucket: str, key: str, kwargs: dict[str, Any]
    ) -> bool:
        from botocore.exceptions import ClientError

        await self.fs.set_session()
        client = await self.fs.get_s3(bucket)
        call = getattr(client, method)
        # s3fs's own filter: adds s3_additional_kwargs (SSE, requester pays) that apply.
        params = self.fs._get_s3_method_kwargs(call, Bucket=bucket, Key=key, **kwargs)
        try:
            await call(**params)
        except ClientError as exc:
            code, _status, retries = _s3_code(exc)
            lost = code in _S3_LOST or (code == "NoSuchKey" and "IfMatch" in kwargs)
            if lost and retries:
                raise _unknown(path, exc) from exc
            if lost:
                return False
            raise _s3_error(exc) from exc
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _s3_error(exc) from exc
        return True


# -- GCS --------------------------------------------------------------------------------

_GCS_BOUNDARY = "cas-refs-boundary"
_GCS_TRIES_ON_429 = 5


def _gcs_error(exc: Exception) -> OSError:
    import google.auth.exceptions
    from gcsfs.retry import HttpError

    if (translated := _aiohttp_error(exc)) is not None:
        return translated
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, HttpError) and exc.code in (401, 403):
        return PermissionError(errno.EACCES, str(exc))
    if isinstance(exc, HttpError):
        return OSError(errno.EIO, str(exc))
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return PermissionError(errno.EACCES, str(exc))
    raise exc  # not an I/O failure (a 400 is gcsfs's ValueError): shown as it is


class GCSConditional(Conditional):
    """Compare-and-swap on a ``gcsfs.GCSFileSystem``; the version is the generation."""

    def __init__(self, fs: Any) -> None:
        _check_fs(fs, "GCSConditional")
        self.fs = fs
        # Buckets seen to exist: a read of a missing object there answers None without
        # asking again (a 404 does not say whether the object or the bucket is missing).
        self._buckets: set[str] = set()

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        bucket, key = _split(self.fs, path)
        return _run(self.fs, self._read, bucket, key)

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        return self._upload(path, data, "0")

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        return self._upload(path, data, _generation(version))

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        bucket, key = _split(self.fs, path)
        url = f"{self.fs.base}b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"
        params = {"ifGenerationMatch": _generation(version)}
        done = _run(self.fs, self._send_once, path, bucket, "DELETE", url, params, None, None)
        self.fs.invalidate_cache(path)
        return done

    def _upload(self, path: str, data: bytes, generation: str) -> bool:
        bucket, key = _split(self.fs, path)
        # Multipart, not media or resumable: the one upload kind on which every GCS
        # implementation (fake-gcs-server included) checks ifGenerationMatch.
        url = f"{self.fs._location}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
        meta = json.dumps({"name": key}).encode()
        body = b"".join(
            [
                f"--{_GCS_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                meta,
                f"\r\n--{_GCS_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
                bytes(data),
                f"\r\n--{_GCS_BOUNDARY}--\r\n".encode(),
            ]
        )
        headers = {"Content-Type": f'multipart/related; boundary="{_GCS_BOUNDARY}"'}
        params = {"uploadType": "multipart", "ifGenerationMatch": generation}
        done = _run(self.fs, self._send_once, path, bucket, "POST", url, params, headers, body)
        self.fs.invalidate_cache(path)
        return done

    async def _read(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        url = f"{self.fs._location}/download/storage/v1/b/{{}}/o/{{}}"
        try:
            # Through gcsfs's retry loop: a read may be repeated safely.
            headers, data = await self.fs._call("GET", url, bucket, key, alt="media")
        except FileNotFoundError:
            if bucket not in self._buckets:
                await self._bucket_exists(bucket)
                self._buckets.add(bucket)
            return None
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _gcs_error(exc) from exc
        generation = headers.get("x-goog-generation")
        if not generation:
            raise OSError(errno.EPROTO, f"GCS answered gs://{bucket}/{key} without a generation")
        self._buckets.add(bucket)
        return bytes(data), str(generation)

    async def _bucket_exists(self, bucket: str) -> None:
        """Return if ``bucket`` exists; raise FileNotFoundError naming it if not.

        gcsfs drops the body of a 404, so a missing object and a missing bucket look
        alike until the bucket itself is asked about.
        """
        try:
            await self.fs._call("GET", "b/{}", bucket)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                errno.ENOENT, f"GCS bucket {bucket!r} does not exist", bucket
            ) from exc
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _gcs_error(exc) from exc

    async def _send_once(
        self,
        path: str,
        bucket: str,
        method: str,
        url: str,
        params: dict[str, str],
        headers: dict[str, str] | None,
        body: bytes | None,
    ) -> bool:
        """Send a conditional request without gcsfs's retries (see the module docstring)."""
        import aiohttp
        from gcsfs.retry import validate_response

        await self.fs._set_session()
        for attempt in range(_GCS_TRIES_ON_429):
            try:
                async with self.fs.session.request(
                    method,
                    url,
                    params=self.fs._get_params(params),
                    headers=self.fs._get_headers(headers),
                    data=body,
                    timeout=self.fs.requests_timeout,
                ) as resp:
                    status, content = resp.status, await resp.read()
            except aiohttp.ClientConnectorError as exc:  # never connected: nothing sent
                raise ConnectionError(errno.ECONNREFUSED, str(exc)) from exc
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise _unknown(path, exc) from exc
            if status != 429:
                break
            await asyncio.sleep(min(0.5 * 2**attempt, 8.0))  # rate-limited, not applied
        if status < 300:
            return True
        if status == 412:
            return False
        if status == 404:
            await self._bucket_exists(bucket)  # raises if the bucket is what is missing
            if method == "DELETE":
                return False  # the object went
        try:
            validate_response(status, content, url)
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _gcs_error(exc) from exc
        raise OSError(errno.EIO, f"GCS answered {status} to {method} {url}")


def _generation(version: str) -> str:
    if not version.isdigit():
        raise ValueError(f"not a GCS generation: {version!r}")
    return version


# -- Azure ------------------------------------------------------------------------------


def _azure_error(exc: Exception, container: str) -> OSError:
    import azure.core.exceptions as az

    if _azure_code(exc) == "ContainerNotFound":
        return FileNotFoundError(
            errno.ENOENT, f"Azure container {container!r} does not exist", container
        )
    if isinstance(exc, az.ClientAuthenticationError) or (
        isinstance(exc, az.HttpResponseError) and exc.status_code in (401, 403)
    ):
        return PermissionError(errno.EACCES, str(exc).splitlines()[0])
    if isinstance(exc, (az.ServiceRequestTimeoutError, az.ServiceResponseTimeoutError)):
        return TimeoutError(errno.ETIMEDOUT, str(exc))
    if isinstance(exc, (az.ServiceRequestError, az.ServiceResponseError)):
        return ConnectionError(errno.ECONNRESET, str(exc))
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, az.AzureError):
        return OSError(errno.EIO, str(exc).splitlines()[0] if str(exc) else repr(exc))
    raise exc  # not an I/O failure: a bug, shown as it is


def _azure_code(exc: BaseException) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


class AzureConditional(Conditional):
    """Compare-and-swap on an ``adlfs.AzureBlobFileSystem``; the version is the ETag."""

    def __init__(self, fs: Any) -> None:
        _check_fs(fs, "AzureConditional")
        self.fs = fs

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        container, blob = _split(self.fs, path)
        return _run(self.fs, self._read, container, blob)

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        # overwrite=False: the SDK sends If-None-Match: *; a 409 BlobAlreadyExists loses.
        return self._send(path, "upload_blob", {"BlobAlreadyExists"}, bytes(data), overwrite=False)

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        moved = _AZURE_MOVED
        return self._send(
            path, "upload_blob", moved, bytes(data), overwrite=True, **_if_match(version)
        )

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        return self._send(path, "delete_blob", _AZURE_MOVED, **_if_match(version))

    def _send(self, path: str, method: str, lost: set[str], *args: Any, **kwargs: Any) -> bool:
        container, blob = _split(self.fs, path)
        if method == "upload_blob":
            kwargs["metadata"] = {"is_directory": "false"}  # as adlfs writes files
        kwargs["retry_total"] = 0  # see "Unknown outcomes" in the module docstring
        done = _run(self.fs, self._send_once, path, container, blob, method, lost, args, kwargs)
        self.fs.invalidate_cache(path)
        return done

    async def _read(self, container: str, blob: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import AzureError

        try:
            async with self.fs.service_client.get_blob_client(container, blob) as client:
                # Large blobs come in ranges, each conditional on the first one's ETag.
                stream = await client.download_blob()
                data = await stream.readall()
        except AzureError as exc:
            if _azure_code(exc) == "BlobNotFound":
                return None
            raise _azure_error(exc, container) from exc
        return bytes(data), str(stream.properties.etag)

    async def _send_once(
        self,
        path: str,
        container: str,
        blob: str,
        method: str,
        lost: set[str],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> bool:
        from azure.core.exceptions import AzureError, ServiceResponseError

        try:
            async with self.fs.service_client.get_blob_client(container, blob) as client:
                await getattr(client, method)(*args, **kwargs)
        except ServiceResponseError as exc:  # sent, no answer
            raise _unknown(path, exc) from exc
        except AzureError as exc:
            if _azure_code(exc) in lost:  # a lease (412 LeaseIdMissing) is not a lost race
                return False
            raise _azure_error(exc, container) from exc
        return True


#: The blob moved (412 ConditionNotMet) or went (404 BlobNotFound).
_AZURE_MOVED = {"ConditionNotMet", "BlobNotFound"}


def _if_match(etag: str) -> dict[str, Any]:
    from azure.core import MatchConditions

    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}
