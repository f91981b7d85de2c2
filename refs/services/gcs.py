"""Google Cloud Storage through gcsfs: the one adapter refs and cas share (see
refs.services.base)."""

from __future__ import annotations

import asyncio
import errno
import json
from typing import Any
from urllib.parse import quote

from fsspec.asyn import sync

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

_GCS_BOUNDARY = "cas-refs-boundary"
_GCS_TRIES_ON_429 = 5


def _gcs_error(exc: Exception) -> OSError:
    import google.auth.exceptions
    from gcsfs.retry import HttpError

    if (translated := aiohttp_error(exc)) is not None:
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


class GCSService(ObjectService):
    """GCS by its own requests: media GET, multipart upload ``ifGenerationMatch``, DELETE
    ``ifGenerationMatch``, objects.list, objects.get, rewrite. The version of a file is
    its generation."""

    name, container = "GCS", "bucket"
    endpoint_option = "endpoint_url in storage_options, or STORAGE_EMULATOR_HOST"
    credentials = "token in storage_options, or GOOGLE_APPLICATION_CREDENTIALS / gcloud login"

    def __init__(self, fs: Any) -> None:
        super().__init__(fs)
        # Buckets seen to exist: a read of a missing object there answers None without
        # asking again (a 404 does not say whether the object or the bucket is missing).
        self._buckets: set[str] = set()

    def read(self, path: str) -> tuple[bytes, str] | None:
        # docstring inherited
        bucket, key = split(path)
        return run(self.fs, self._read, bucket, key)

    def create(self, path: str, data: bytes) -> bool:
        # docstring inherited
        return self._upload(path, data, "0")

    def replace(self, path: str, data: bytes, version: str) -> bool:
        # docstring inherited
        return self._upload(path, data, _generation(version))

    def remove(self, path: str, version: str) -> bool:
        # docstring inherited
        bucket, key = split(path)
        url = f"{self.fs.base}b/{quote(bucket, safe='')}/o/{quote(key, safe='')}"
        params = {"ifGenerationMatch": _generation(version)}
        done = run(self.fs, self._send_once, path, bucket, "DELETE", url, params, None, None)
        self.fs.invalidate_cache(path)
        return done

    def _upload(self, path: str, data: bytes, generation: str) -> bool:
        bucket, key = split(path)
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
        done = run(self.fs, self._send_once, path, bucket, "POST", url, params, headers, body)
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
                raise unknown_outcome(path, exc) from exc
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
        params: dict[str, Any] = {"prefix": prefix}
        if start_after is not None:
            params["startOffset"] = start_after  # inclusive: the key itself is dropped below
        if delimiter:
            params["delimiter"] = delimiter
        while True:
            params["maxResults"] = PAGE if limit is None else max(1, min(PAGE, limit - len(found)))
            try:
                # Through gcsfs's retry loop: a listing may be repeated safely.
                page = await self.fs._call("GET", "b/{}/o", bucket, json_out=True, **params)
            except FileNotFoundError as exc:  # a prefix is never missing: the bucket is
                raise FileNotFoundError(
                    errno.ENOENT, f"GCS bucket {bucket!r} does not exist", bucket
                ) from exc
            except Exception as exc:  # noqa: BLE001 - translated, never swallowed
                raise _gcs_error(exc) from exc
            names = [str(item["name"]) for item in page.get("items", [])]
            if details is not None:
                for item in page.get("items", []):
                    details[str(item["name"])] = detail_of(item["generation"], item["size"], item)
            if start_after is not None:
                names = [n for n in names if n > start_after]
            names += [str(folder) for folder in page.get("prefixes", [])]
            found.extend(sorted(names))
            token = page.get("nextPageToken")
            if not token or (limit is not None and len(found) >= limit):
                break
            params["pageToken"] = token
        return found if limit is None else found[:limit]

    def head(self, path: str) -> tuple[int, float]:
        info = sync(self.fs.loop, self.fs._get_object, path)
        return int(info.get("size") or 0), mtime_of(info)

    def refresh(self, path: str) -> None:
        # A rewrite onto itself: one request, copied inside GCS (a new generation, so
        # "updated" moves; fake-gcs-server ignores a metadata PATCH's time).
        self.fs.cp_file(path, path)

    def holds_any(self, root: str) -> bool:
        bucket, prefix = split_root(root)
        out = self.fs.call("GET", "b/{}/o", bucket, prefix=prefix, maxResults=1, json_out=True)
        return bool(out.get("items"))

    def endpoint(self) -> str:
        return str(getattr(self.fs, "_location", "") or "https://storage.googleapis.com")


def _generation(version: str) -> str:
    if not version.isdigit():
        raise ValueError(f"not a GCS generation: {version!r}")
    return version
