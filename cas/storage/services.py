"""How cas reaches each object service past fsspec's generic calls, and what its
failures mean.

fsspec gives every filesystem the same calls, but not always the cheapest or the safest
one: ``info`` of an absent key costs a second request (a listing, to look for a
"directory"), there is no in-place touch (and the default ``touch(truncate=False)``
creates an empty file if the key went meanwhile), and each client raises its own
exceptions, some of them not ``OSError`` at all (botocore's EndpointConnectionError,
azure-core's ServiceRequestError). A :class:`Service` holds the one request each
operation costs on S3, GCS and Azure Blob; :func:`diagnose` tells a missing bucket,
refused credentials and an unreachable service apart, from class names and the
services' error codes, so no client library is imported to tell. ``cas.storage`` uses
both; nothing here knows cas's storage contract.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import importlib
import sys
import time
from typing import Any, Final

import fsspec
from fsspec.asyn import sync

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


class Service:
    """How cas reaches a filesystem past fsspec's generic calls, one request per call.

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

    def bucket(self, root: str) -> str:
        return str(root.strip("/").split("/", 1)[0])

    def endpoint(self) -> str:
        return ""


class S3Service(Service):
    name, container, io_threads = "S3", "bucket", 16
    creates = True
    endpoint_option = "endpoint_url in storage_options"
    credentials = (
        "key/secret in storage_options, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE"
    )

    def _split(self, path: str) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(path)
        return str(bucket), str(key)

    def head(self, path: str) -> tuple[int, float]:
        bucket, key = self._split(path)
        out = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        return int(out["ContentLength"]), mtime_of({"LastModified": out["LastModified"]})

    def refresh(self, path: str) -> None:
        # CopyObject onto itself: one request, no data through the client. REPLACE is
        # what S3 requires to accept a copy of an object onto itself.
        bucket, key = self._split(path)
        self.fs.call_s3(
            "copy_object", Bucket=bucket, Key=key,
            CopySource={"Bucket": bucket, "Key": key}, MetadataDirective="REPLACE",
        )  # fmt: skip

    def holds_any(self, root: str) -> bool:
        bucket, key = self._split(root)
        prefix = key.strip("/") + "/" if key.strip("/") else ""
        out = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return bool(out.get("KeyCount") or out.get("Contents"))

    def delete_keys(self, paths: list[str]) -> int:
        """DeleteObjects, 1,000 keys a request; raises if S3 reports any key it could not delete."""
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = self._split(path)
            by_bucket.setdefault(bucket, []).append(key)
        done = 0
        for bucket, keys in by_bucket.items():
            for i in range(0, len(keys), 1000):
                objects = [{"Key": k} for k in keys[i : i + 1000]]
                out = self.fs.call_s3(
                    "delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": False}
                )
                errors = out.get("Errors") or []
                if errors:
                    first = errors[0]
                    denied = first.get("Code") == "AccessDenied"
                    raise (PermissionError if denied else OSError)(
                        errno.EACCES if denied else errno.EIO,
                        f"S3 did not delete {len(errors)} keys, e.g. {first.get('Key')}:"
                        f" {first.get('Code')} {first.get('Message')}",
                    )
                done += len(out.get("Deleted") or [])
        for path in paths:
            self.fs.invalidate_cache(path)
        return done

    def endpoint(self) -> str:
        return str(getattr(self.fs, "endpoint_url", None) or "https://s3.amazonaws.com")


class GCSService(Service):
    name, container, io_threads = "GCS", "bucket", 16
    creates = True
    endpoint_option = "endpoint_url in storage_options, or STORAGE_EMULATOR_HOST"
    credentials = "token in storage_options, or GOOGLE_APPLICATION_CREDENTIALS / gcloud login"

    def head(self, path: str) -> tuple[int, float]:
        info = sync(self.fs.loop, self.fs._get_object, path)
        return int(info.get("size") or 0), mtime_of(info)

    def refresh(self, path: str) -> None:
        # A rewrite onto itself: one request, copied inside GCS (a new generation, so
        # "updated" moves; fake-gcs-server ignores a metadata PATCH's time).
        self.fs.cp_file(path, path)

    def holds_any(self, root: str) -> bool:
        bucket, _, key = root.strip("/").partition("/")
        prefix = key.strip("/") + "/" if key.strip("/") else ""
        out = self.fs.call("GET", "b/{}/o", bucket, prefix=prefix, maxResults=1, json_out=True)
        return bool(out.get("items"))

    def endpoint(self) -> str:
        return str(getattr(self.fs, "_location", "") or "https://storage.googleapis.com")


class AzureService(Service):
    name, container, io_threads = "Azure Blob", "container", 16
    creates = True
    endpoint_option = "account_name, or the BlobEndpoint of the connection string"
    credentials = (
        "connection_string, or account_name with account_key / sas_token / credential in"
        " storage_options, or AZURE_STORAGE_CONNECTION_STRING"
    )

    def _call(self, path: str, method: str, *args: Any) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        container, blob, _ = self.fs.split_path(path)

        async def call() -> Any:
            async with self.fs.service_client.get_blob_client(container, blob) as client:
                return await getattr(client, method)(*args)

        try:
            return sync(self.fs.loop, call)
        except ResourceNotFoundError as exc:  # BlobNotFound, or ContainerNotFound: see holds_any
            raise FileNotFoundError(errno.ENOENT, f"no such blob: {path}", path) from exc

    def head(self, path: str) -> tuple[int, float]:
        props = self._call(path, "get_blob_properties")
        return int(props.size), mtime_of({"last_modified": props.last_modified})

    def refresh(self, path: str) -> None:
        # Set Blob Metadata moves Last-Modified: one request, no data. adlfs marks its
        # files with is_directory=false; keep that, as the call replaces all metadata.
        self._call(path, "set_blob_metadata", {"is_directory": "false"})

    def holds_any(self, root: str) -> bool:
        container, _, key = root.strip("/").partition("/")
        prefix = key.strip("/") + "/" if key.strip("/") else ""

        async def first_page() -> bool:
            async with self.fs.service_client.get_container_client(container) as client:
                pages = client.list_blobs(name_starts_with=prefix, results_per_page=1).by_page()
                async for page in pages:
                    async for _ in page:
                        return True
                    return False
            return False

        from azure.core.exceptions import ResourceNotFoundError

        try:
            found: bool = sync(self.fs.loop, first_page)
        except ResourceNotFoundError as exc:  # the container
            raise FileNotFoundError(errno.ENOENT, f"no such container: {container}") from exc
        return found

    def endpoint(self) -> str:
        client = getattr(self.fs, "service_client", None)
        return str(getattr(client, "url", "") or getattr(self.fs, "account_url", ""))


def service_for(fs: fsspec.AbstractFileSystem) -> Service:
    """The :class:`Service` for a filesystem, by its class (no client is imported here)."""
    kinds = [("s3fs", "S3FileSystem", S3Service), ("gcsfs.core", "GCSFileSystem", GCSService),
             ("adlfs", "AzureBlobFileSystem", AzureService)]  # fmt: skip
    for module, name, make in kinds:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(fs, getattr(loaded, name)):
            return make(fs)
    return Service(fs)


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
