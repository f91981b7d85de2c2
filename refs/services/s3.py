"""Amazon S3 through s3fs: the one adapter refs and cas share (see refs.services.base)."""

from __future__ import annotations

import errno
from typing import Any

from .base import (
    PAGE,
    Detail,
    ObjectService,
    aiohttp_error,
    detail_of,
    mtime_of,
    run,
    split,
    split_root,
    unknown_outcome,
)  # fmt: skip

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
    if (translated_http := aiohttp_error(exc)) is not None:
        return translated_http
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, boto.BotoCoreError):
        return OSError(errno.EIO, str(exc))
    raise exc  # not an I/O failure: a bug, shown as it is


class S3Service(ObjectService):
    """S3 by its own requests: GetObject, PutObject ``If-None-Match``/``If-Match``,
    DeleteObject ``If-Match``, ListObjectsV2, HeadObject, CopyObject, DeleteObjects.
    The version of a file is its ETag, derived from the content, so a ref that moves
    away and back reads as unchanged; refs only relies on "it still holds what I read".
    """

    name, container = "S3", "bucket"
    # s3fs's cat_file sends a HEAD before its GET, to split objects over 50 MiB into
    # ranges read at once; what refs and cas read whole is a few MiB at most.
    read_options = {"max_concurrency": 1}  # noqa: RUF012 - read-only class default
    endpoint_option = "endpoint_url in storage_options"
    credentials = (
        "key/secret in storage_options, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE"
    )

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        bucket, key = split(path)
        return run(self.fs, self._read, bucket, key)

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
        bucket, key = split(path)
        done = run(self.fs, self._send_once, path, method, bucket, key, kwargs)
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
                raise unknown_outcome(path, exc) from exc
            if lost:
                return False
            raise _s3_error(exc) from exc
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise _s3_error(exc) from exc
        return True

    lists_after = True

    async def _list(
        self,
        bucket: str,
        prefix: str,
        delimiter: str | None,
        limit: int | None,
        start_after: str | None = None,
        details: dict[str, Detail] | None = None,
    ) -> list[str]:
        found: list[str] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if start_after is not None:
            params["StartAfter"] = start_after
        if delimiter:
            params["Delimiter"] = delimiter
        while True:
            params["MaxKeys"] = PAGE if limit is None else max(1, min(PAGE, limit - len(found)))
            try:
                # Through s3fs's retry loop: a listing may be repeated safely.
                page = await self.fs._call_s3("list_objects_v2", **params)
            except Exception as exc:  # noqa: BLE001 - translated, never swallowed
                raise _s3_error(exc) from exc
            names = [item["Key"] for item in page.get("Contents", [])]
            if details is not None:
                for item in page.get("Contents", []):
                    details[item["Key"]] = detail_of(item["ETag"], item["Size"], item)
            names += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
            found.extend(sorted(names))
            if not page.get("IsTruncated") or (limit is not None and len(found) >= limit):
                break
            params["ContinuationToken"] = page["NextContinuationToken"]
        return found if limit is None else found[:limit]

    def head(self, path: str) -> tuple[int, float]:
        bucket, key = split(path)
        out = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        return int(out["ContentLength"]), mtime_of({"LastModified": out["LastModified"]})

    def refresh(self, path: str) -> None:
        # CopyObject onto itself: one request, no data through the client. REPLACE is
        # what S3 requires to accept a copy of an object onto itself.
        bucket, key = split(path)
        self.fs.call_s3(
            "copy_object", Bucket=bucket, Key=key,
            CopySource={"Bucket": bucket, "Key": key}, MetadataDirective="REPLACE",
        )  # fmt: skip

    def holds_any(self, root: str) -> bool:
        bucket, prefix = split_root(root)
        out = self.fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return bool(out.get("KeyCount") or out.get("Contents"))

    def delete_keys(self, paths: list[str]) -> int:
        """DeleteObjects, 1,000 keys a request; raises if S3 reports any key it could not delete."""
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = split(path)
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
