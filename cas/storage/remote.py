"""A store's root on any fsspec filesystem: memory, S3, GCS, Azure Blob, ..."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import fsspec
import fsspec.implementations.memory

from cas import refs
from cas.errors import BackendError
from cas.refs.services import (
    ObjectService,
    backend_failures,
    diagnose,
    mtime_of,
    service_for,
    version_of,
)
from cas.refs.services.base import split_root
from cas.storage.base import Stat, Storage


def _is_conflict(exc: BaseException) -> bool:
    """S3's answer to a conditional write racing another one to the same key (409)."""
    seen = 0
    err: BaseException | None = exc
    while err is not None and seen < 6:
        response = getattr(err, "response", None)
        error = response.get("Error") if isinstance(response, dict) else None
        if isinstance(error, dict) and error.get("Code") == "ConditionalRequestConflict":
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


_ADVICE: Final = {
    "missing": "check the {container} name in the URL, or create the {container}",
    "auth": "check the credentials ({credentials}) and that they may read and write it",
    "network": "check the network and the endpoint ({endpoint}; {endpoint_option})",
}


def _without_100_continue(fs: fsspec.AbstractFileSystem) -> None:
    """botocore asks S3 to accept every PUT before it sends the body (``Expect:
    100-continue``): a round trip more for each of a save's small objects. cas's
    objects are a few MiB at most; it sends them at once. Best effort: a filesystem
    that cannot be set up here keeps its default."""
    import botocore.handlers

    async def setup() -> None:
        await fs.set_session()
        fs._s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)

    with contextlib.suppress(Exception):  # noqa: BLE001 - an optimisation, never a failure
        fsspec.asyn.sync(fs.loop, setup)


class FsspecStorage(Storage):
    """Any fsspec filesystem. On S3, GCS and Azure Blob each file is one PUT (s3fs sends a
    single PutObject below 100 MiB, gcsfs one multipart upload below 50 MiB, adlfs one
    Put Blob below 64 MiB: cas objects are at most a few MiB), a read one GET, a check
    for a file one HEAD, a refresh one server-side copy.

    Failures are translated here, by an explicit tuple of exception types
    (:func:`backend_failures`), to :class:`BackendError` saying what to check: a missing
    bucket, refused credentials, an unreachable service. Absence (``None``, ``False``,
    ``FileNotFoundError``, an empty listing) is answered only once the bucket is known to
    exist (checked once per storage, on the first absence), so a missing bucket is never
    "an empty store" (adlfs lists a missing container as empty).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.service = service_for(fs)
        self.io_threads = self.service.io_threads
        self.creates = self.service.creates
        self.listing_stats = True  # fsspec listings carry size and age
        self._failures = backend_failures()
        self._bucket_known = not self.service.container  # nothing to check without buckets
        # s3fs's cat_file sends a HEAD before its GET, to split objects over 50 MiB into
        # ranges read at once; cas objects are a few MiB at most: one GET is enough.
        self._read_options: dict[str, Any] = dict(self.service.read_options)
        if type(fs).__name__ == "S3FileSystem":
            _without_100_continue(fs)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def conditional(self, *, durable: bool = True) -> refs.Conditional:
        # docstring inherited
        if isinstance(self.service, ObjectService):
            return self.service  # the service's adapter is its compare-and-swap
        if isinstance(self.fs, fsspec.implementations.memory.MemoryFileSystem):
            return refs.ProcessLocalConditional(self.fs)
        raise BackendError(
            f"cas has no compare-and-swap for names on {type(self.fs).__name__} "
            f"({self.url}): use a local folder, memory://, s3://, gs:// or az://"
        )

    # -- failures -----------------------------------------------------------------------

    def _fail(
        self, what: str, rel: str, exc: BaseException, *, missing: bool = False
    ) -> BackendError:
        """A BackendError for ``exc``, naming the file and what to check."""
        svc = self.service
        where = f"{self.url}/{rel}" if rel else self.url
        kind = "missing" if missing else diagnose(exc)
        if kind == "missing":
            head = f"the {svc.name} {svc.container} {svc.bucket(self.root)!r} does not exist"
        elif kind == "auth":
            head = f"{svc.name} refused the credentials"
        elif kind == "network":
            head = f"could not reach {svc.name}"
        else:
            return BackendError(f"{what} {where} failed: {type(exc).__name__}: {exc}")
        advice = _ADVICE[kind].format(
            container=svc.container or "bucket", credentials=svc.credentials or "storage_options",
            endpoint=svc.endpoint() or "the service's address", endpoint_option=svc.endpoint_option,
        )  # fmt: skip
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return BackendError(f"{head} ({what} {where}): {advice} [{type(exc).__name__}: {detail}]")

    @contextlib.contextmanager
    def _boundary(self, what: str, rel: str) -> Iterator[None]:
        """Translate every service failure inside the block; let absence through."""
        try:
            yield
        except (BackendError, FileNotFoundError):
            raise
        except self._failures as exc:
            raise self._fail(what, rel, exc) from exc

    def _check_bucket(self, what: str, rel: str) -> None:
        """Before answering "absent": the bucket exists (asked once per storage)."""
        if self._bucket_known:
            return
        try:
            self.service.holds_any(self.root)
        except FileNotFoundError as exc:
            raise self._fail(what, rel, exc, missing=True) from exc
        except self._failures as exc:
            raise self._fail(what, rel, exc) from exc
        self._bucket_known = True

    # -- the contract -------------------------------------------------------------------

    # docstring inherited
    def read(self, rel: str) -> bytes:
        try:
            with self._boundary("reading", rel):
                data: bytes = self.fs.cat_file(self._path(rel), **self._read_options)
        except FileNotFoundError:
            self._check_bucket("reading", rel)
            raise
        self._bucket_known = True
        return data

    def read_head(self, rel: str, n: int) -> bytes:
        try:
            with self._boundary("reading", rel):
                data: bytes = self.fs.cat_file(self._path(rel), start=0, end=n)
        except FileNotFoundError:
            self._check_bucket("reading", rel)
            raise
        return data

    def write_atomic(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        try:
            with self._boundary("writing", rel):
                self.fs.pipe_file(self._path(rel), data)
        except FileNotFoundError as exc:  # a write has nothing to be absent: the bucket is
            self._check_bucket("writing", rel)
            raise self._fail("writing", rel, exc) from exc

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        try:
            with self._boundary("reading", rel):
                data: bytes = self.fs.cat_file(self._path(rel), start=start, end=start + length)
        except FileNotFoundError:
            self._check_bucket("reading", rel)
            raise
        return data

    def read_ranges(self, rel: str, spans: list[tuple[int, int]]) -> list[bytes]:
        """One request per span, all in flight at once (fsspec's ``cat_ranges``)."""
        if len(spans) == 1:
            return [self.read_range(rel, spans[0][0], spans[0][1] - spans[0][0])]
        path = self._path(rel)
        out: list[bytes] = []
        try:
            self._cat_ranges_into(path, rel, spans, out)
        except FileNotFoundError:
            self._check_bucket("reading", rel)
            raise
        return out

    def _cat_ranges_into(
        self, path: str, rel: str, spans: list[tuple[int, int]], out: list[bytes]
    ) -> None:
        with self._boundary("reading", rel):
            got = self.fs.cat_ranges(
                [path] * len(spans), [s for s, _ in spans], [e for _, e in spans],
                on_error="return",
            )  # fmt: skip
            for item in got:
                if isinstance(item, BaseException):
                    raise item
        out.extend(got)

    def create(self, rel: str, data: bytes) -> bool:
        """On S3, GCS and Azure Blob one conditional write: PutObject ``If-None-Match: *``,
        an upload with ``ifGenerationMatch=0``, Put Blob ``If-None-Match: *`` (the
        clients' ``pipe_file(mode="create")``); elsewhere the base's check, then write.
        A retried request that meets its own first attempt reads as "was there", which
        for a content-addressed file is the truth. A conditional write that loses to
        another one still in flight (S3's 409 ConditionalRequestConflict) is written
        again unconditionally: the same name holds the same bytes."""
        if not self.creates:
            return super().create(rel, data)
        try:
            with self._boundary("writing", rel):
                try:
                    self.fs.pipe_file(self._path(rel), data, mode="create")
                except FileExistsError:
                    return False
                except self._failures as exc:
                    if not _is_conflict(exc):
                        raise
                else:
                    self._bucket_known = True
                    return True
        except FileNotFoundError as exc:  # a write has nothing to be absent: the bucket is
            self._check_bucket("writing", rel)
            raise self._fail("writing", rel, exc) from exc
        self.write_atomic(rel, data)
        return True

    def stat(self, rel: str) -> Stat | None:
        try:
            with self._boundary("checking", rel):
                size, mtime = self.service.head(self._path(rel))
        except FileNotFoundError:
            self._check_bucket("checking", rel)
            return None
        self._bucket_known = True
        return Stat(size, mtime)

    def touch(self, rel: str) -> bool:
        try:
            with self._boundary("refreshing", rel):
                self.service.refresh(self._path(rel))
        except FileNotFoundError:
            self._check_bucket("refreshing", rel)
            return False
        return True

    def delete(self, rel: str) -> bool:
        if self.service.name == "S3" and self.stat(rel) is None:
            return False  # S3 answers a delete of an absent key as done
        try:
            with self._boundary("deleting", rel):
                self.fs.rm_file(self._path(rel))
        except FileNotFoundError:
            self._check_bucket("deleting", rel)
            return False
        return True

    def delete_many(self, rels: list[str]) -> int:
        """Remove many files: S3 in batches of 1,000 keys a request, the others
        ``io_threads`` at a time. Returns how many went (S3: as it reports them)."""
        if not rels:
            return 0
        try:
            with self._boundary("deleting", rels[0]):
                done = self.service.delete_keys([self._path(rel) for rel in rels])
        except FileNotFoundError as exc:  # a batch delete has no absent keys: the bucket
            self._check_bucket("deleting", rels[0])
            raise self._fail("deleting", rels[0], exc) from exc
        if done is not None:
            return done
        if not self.io_threads:
            return super().delete_many(rels)
        with ThreadPoolExecutor(self.io_threads, thread_name_prefix="cas-delete") as pool:
            return sum(pool.map(self.delete, rels))

    def walk(self, rel_dir: str) -> Iterator[tuple[str, Stat]]:
        base = self._path(rel_dir)
        if isinstance(self.service, ObjectService):
            # The service's own listing: one request per 1,000 keys, an empty folder
            # one request (s3fs adds a HEAD and a listing of the parent), with each
            # file's version token.
            try:
                with self._boundary("listing", rel_dir):
                    details = self.service.list_details(*split_root(base))
            except FileNotFoundError:
                details = {}  # the bucket is missing: said just below
            if not details:
                self._check_bucket("listing", rel_dir)
            prefix = split_root(self.root)[1]
            for name in sorted(details):
                if not name.endswith("/"):  # a folder's placeholder, not a file
                    version, size, mtime = details[name]
                    yield name[len(prefix) :], Stat(size, mtime, version)
            return
        try:
            with self._boundary("listing", rel_dir):
                found: dict[str, dict[str, Any]] = self.fs.find(base, detail=True)
        except FileNotFoundError:
            found = {}
        if not found:
            self._check_bucket("listing", rel_dir)  # adlfs lists a missing container as empty
            return
        prefix = self.root.lstrip("/") + "/"
        for path in sorted(found):
            info = found[path]
            if info.get("type") == "directory":
                continue
            rel = path.lstrip("/")
            rel = rel[len(prefix) :] if rel.startswith(prefix) else rel
            yield rel, Stat(int(info.get("size") or 0), mtime_of(info), version_of(info))

    def listdir(self, rel_dir: str) -> list[str]:
        if isinstance(self.service, ObjectService):
            # One request (s3fs follows an empty listing with a HEAD and a listing of
            # the parent): the files of the folder, not its sub-folders.
            bucket, prefix = split_root(self._path(rel_dir))
            try:
                with self._boundary("listing", rel_dir):
                    keys = self.service.list_keys(bucket, prefix, "/")
            except FileNotFoundError:
                keys = []
            if not keys:
                self._check_bucket("listing", rel_dir)
            return sorted(k[len(prefix) :] for k in keys if not k.endswith("/"))
        try:
            with self._boundary("listing", rel_dir):
                entries = self.fs.ls(self._path(rel_dir), detail=True)
        except FileNotFoundError:
            entries = []
        if not entries:
            self._check_bucket("listing", rel_dir)
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"
        )

    def list_after(self, rel_dir: str, start: str) -> list[str] | None:
        # docstring inherited
        service = self.service
        if not isinstance(service, ObjectService) or not service.lists_after:
            return None
        bucket, key = split_root(self._path(rel_dir))
        with self._boundary("listing", rel_dir):
            keys = service.list_keys(bucket, key, None, None, start_after=key + start)
        if not keys:
            self._check_bucket("listing", rel_dir)
        _, root_key = split_root(self.root)
        return [k[len(root_key) :] for k in keys if k.startswith(key)]

    def is_empty(self) -> bool:
        """One listing of at most one key (raises if the bucket is missing)."""
        with self._boundary("listing", ""):
            try:
                holds = self.service.holds_any(self.root)
            except FileNotFoundError as exc:
                if self.service.container:
                    raise self._fail("listing", "", exc, missing=True) from exc
                holds = False
        self._bucket_known = True
        return not holds
