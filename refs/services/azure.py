"""Azure Blob Storage through adlfs: the one adapter refs and cas share (see
refs.services.base)."""

from __future__ import annotations

import errno
from typing import Any

from fsspec.asyn import sync

from .base import (
    PAGE,
    Detail,
    ObjectService,
    detail_of,
    mtime_of,
    run,
    split,
    split_root,
    unknown_outcome,
)


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


class AzureService(ObjectService):
    """Azure Blob by its own requests (the SDK under adlfs): Get Blob, Put Blob
    ``If-None-Match``/``If-Match``, Delete Blob ``If-Match``, List Blobs, Get Blob
    Properties, Set Blob Metadata. The version of a file is its ETag."""

    name, container = "Azure Blob", "container"
    endpoint_option = "account_name, or the BlobEndpoint of the connection string"
    credentials = (
        "connection_string, or account_name with account_key / sas_token / credential in"
        " storage_options, or AZURE_STORAGE_CONNECTION_STRING"
    )

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        container, blob = split(path)
        return run(self.fs, self._read, container, blob)

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
        container, blob = split(path)
        if method == "upload_blob":
            kwargs["metadata"] = {"is_directory": "false"}  # as adlfs writes files
        kwargs["retry_total"] = 0  # see "Unknown outcomes" in the module docstring
        done = run(self.fs, self._send_once, path, container, blob, method, lost, args, kwargs)
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
            raise unknown_outcome(path, exc) from exc
        except AzureError as exc:
            if _azure_code(exc) in lost:  # a lease (412 LeaseIdMissing) is not a lost race
                return False
            raise _azure_error(exc, container) from exc
        return True

    async def _list(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None,
        limit: int | None,
        start_after: str | None = None,
        details: dict[str, Detail] | None = None,
    ) -> list[str]:
        from azure.core.exceptions import AzureError

        found: list[str] = []
        try:
            async with self.fs.service_client.get_container_client(bucket) as client:
                page = PAGE if limit is None else max(1, min(PAGE, limit))
                options = {"name_starts_with": prefix, "include": ["metadata"],
                           "results_per_page": page}  # fmt: skip
                if delimiter:
                    listing = client.walk_blobs(delimiter=delimiter, **options)
                else:
                    listing = client.list_blobs(**options)
                async for item in listing:
                    if _folder_marker(getattr(item, "metadata", None)):
                        continue  # a folder's placeholder blob (adlfs, HNS accounts), not a file
                    found.append(str(item.name))
                    if details is not None:
                        details[str(item.name)] = detail_of(
                            item.etag, item.size, {"last_modified": item.last_modified}
                        )
                    if limit is not None and len(found) >= limit:
                        break
        except AzureError as exc:
            raise _azure_error(exc, bucket) from exc
        return found

    def _call(self, path: str, method: str, *args: Any) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        container, blob = split(path)

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
        container, prefix = split_root(root)

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


#: The blob moved (412 ConditionNotMet) or went (404 BlobNotFound).
_AZURE_MOVED = {"ConditionNotMet", "BlobNotFound"}


def _if_match(etag: str) -> dict[str, Any]:
    from azure.core import MatchConditions

    return {"etag": etag, "match_condition": MatchConditions.IfNotModified}


def _folder_marker(metadata: Any) -> bool:
    if not metadata:
        return False
    return "true" in (
        str(metadata.get("is_directory")).lower(),
        str(metadata.get("hdi_isfolder")).lower(),
    )
