"""moto's S3 at a benchmark's scale: listing in O(page), and a bulk load.

Loaded by :mod:`cas.testing.moto_atomic` (the server tests and benchmarks run), in the
server process only: it imports moto.

Listing. moto 5 answers every ListObjects / ListObjectsV2 page by copying the bucket's
key dictionary, splitting every name into keys and common prefixes, sorting both and
only then cutting the page (``S3Backend.list_objects``): a page costs O(bucket), so
listing a bucket of 500,000 files in pages of 1,000 costs the server O(bucket^2). Here
each bucket's key store (:class:`IndexedKeyStore`, moto's own ``_VersionedKeyStore``
with its mutators wrapped) keeps its names sorted, and the two listing methods walk
that order from the page's start: a common prefix is yielded once and the walk jumps
past every name under it (one bisection), so a page costs O(page log bucket). Every
write moto makes to a bucket's keys (put, copy, a multipart complete, delete, a
versioned delete's marker, a delete of many keys) goes through the store's mutators, so
the order cannot miss one. What a page holds is moto's answer exactly, its quirks
included (tests/test_moto_listing.py checks it against a model):

- ListObjects (v1) pages only the keys: every page carries every common prefix under
  the prefix, and ``marker`` filters keys only. That walk is O(prefixes + keys that
  are not under one), not O(page); cas lists with v2.
- A name whose latest version is a delete marker is no key, but still makes its common
  prefix (moto splits before it filters).
- ``start-after`` / a continuation token drop every entry (key or common prefix) whose
  name is not after it: a common prefix at or before it is gone even when names under
  it come after (what S3 does there is not checked).

A continuation token moto did not hand out, a negative ``max-keys`` and moto's table
buckets go to moto's own code.

Bulk load. ``POST /moto-api/cas-bulk`` (``cas.testing.moto_atomic.BULK_PATH``) with
a msgpack list of ``[bucket, key, bytes]`` or ``[bucket, key, bytes, content_type]``
stores each object as moto's PUT handler does for an s3fs / boto3 ``put_object`` with
no extra headers: the same FakeKey (MD5 ETag, size, last-modified now, storage class
STANDARD), the CRC32 checksum those clients send, the bucket's ACL, no tags, and the
content type s3fs would send (the fourth field, ``mimetypes.guess_type`` of the local
file; none: moto's ``binary/octet-stream``). The answer is JSON ``{"stored": n}``, or a
400 with the reason (objects before the one refused are stored). Client:
:func:`cas.testing.moto_atomic.bulk_put`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
from moto.s3.exceptions import S3ClientError
from moto.s3.models import (
    FakeBucket,
    FakeDeleteMarker,
    FakeTableStorageBucket,
    S3Backend,
    s3_backends,
)
from moto.s3.utils import _VersionedKeyStore, compute_checksum, metadata_from_headers

__all__ = ["BulkLoad", "IndexedKeyStore", "install"]

_MAX_CHAR = 0x10FFFF


def _after_all(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix`` (None:
    there is none). ``s`` starts with ``prefix`` iff ``prefix <= s < _after_all(prefix)``."""
    while prefix and ord(prefix[-1]) == _MAX_CHAR:
        prefix = prefix[:-1]
    return prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None


class IndexedKeyStore(_VersionedKeyStore):
    """moto's key store of a bucket, with its names also kept in sorted order.

    Every mutator takes the store's lock and changes the dictionary and the order
    together; a listing walks the order under the same lock. Names added inside
    :meth:`deferred` are sorted in once, at its end (a bulk load), not one by one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.RLock()
        self._names: list[str] = []
        self._pending: list[str] = []  # added, not yet sorted in
        self._defer = 0

    # -- the order -----------------------------------------------------------------------

    def ordered(self) -> list[str]:
        """The names, sorted (the caller holds :attr:`lock` while it reads them)."""
        if self._pending:
            self._names.extend(self._pending)
            self._names.sort()
            self._pending.clear()
        return self._names

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Names added in the block are sorted in at its end, in one sort."""
        with self.lock:
            self._defer += 1
            try:
                yield
            finally:
                self._defer -= 1
                if not self._defer:
                    self.ordered()

    def _added(self, key: str, was_there: bool) -> None:
        if was_there:
            return
        if self._defer:
            self._pending.append(key)
        else:
            bisect.insort(self.ordered(), key)

    def _removed(self, key: str) -> None:
        names = self.ordered()
        i = bisect.bisect_left(names, key)
        if i < len(names) and names[i] == key:
            del names[i]

    def _rebuilt(self) -> None:
        self._pending.clear()
        self._names = sorted(dict.keys(self))

    # -- moto's mutators, wrapped ----------------------------------------------------------

    def __setitem__(self, key: str, value: Any) -> None:
        with self.lock:
            was_there = dict.__contains__(self, key)
            super().__setitem__(key, value)
            self._added(key, was_there)

    def setlist(self, key: Any, list_: Any) -> None:
        with self.lock:
            was_there = dict.__contains__(self, key)
            super().setlist(key, list_)
            self._added(key, was_there)

    def pop(self, key: str) -> None:  # type: ignore[override]
        with self.lock:
            super().pop(key)
            self._removed(key)

    def __delitem__(self, key: str) -> None:
        with self.lock:
            super().__delitem__(key)
            self._removed(key)

    def clear(self) -> None:
        with self.lock:
            super().clear()
            self._rebuilt()

    # moto calls none of these; kept correct rather than fast
    def update(self, *args: Any, **kwargs: Any) -> None:
        with self.lock:
            super().update(*args, **kwargs)
            self._rebuilt()

    def setdefault(self, key: str, default: Any = None) -> Any:
        with self.lock:
            out = super().setdefault(key, default)
            self._rebuilt()
            return out

    def popitem(self) -> tuple[str, Any]:
        with self.lock:
            out = super().popitem()
            self._rebuilt()
            return out

    def __ior__(self, other: Any) -> IndexedKeyStore:  # type: ignore[misc]
        self.update(other)
        return self

    # -- the walk ------------------------------------------------------------------------

    def entries(self, prefix: str, delimiter: str, after: str | None) -> Iterator[tuple[str, Any]]:
        """What moto's listing holds under ``prefix``, in order: ``(folder, None)`` for
        a common prefix, ``(name, key)`` for a key (its latest version; none whose latest
        is a delete marker), only those whose name is after ``after``. Hold the lock."""
        names = self.ordered()
        lo = bisect.bisect_left(names, prefix) if prefix else 0
        if after is not None:
            lo = max(lo, bisect.bisect_right(names, after))
        end = _after_all(prefix)
        hi = bisect.bisect_left(names, end) if end is not None else len(names)
        start = len(prefix)
        i = lo
        while i < hi:
            name = names[i]
            cut = name.find(delimiter, start) if delimiter else -1
            if cut >= 0:
                folder = name[: cut + len(delimiter)]
                if after is None or folder > after:
                    yield folder, None
                past = _after_all(folder)
                i = bisect.bisect_left(names, past, i + 1, hi) if past is not None else hi
                continue
            i += 1
            versions = dict.__getitem__(self, name)
            if versions and not isinstance(versions[-1], FakeDeleteMarker):
                yield name, versions[-1]


# -- the listing methods ---------------------------------------------------------------

_moto_list_objects = S3Backend.list_objects
_moto_list_objects_v2 = S3Backend.list_objects_v2


def _take(entries: Iterable[tuple[str, Any]], n: int | None, folders: bool) -> list[Any]:
    """The first ``n`` (None: all) entries: keys, and common prefixes if ``folders``."""
    out: list[Any] = []
    for name, key in entries:
        if key is None and not folders:
            continue
        if n is not None and len(out) >= n:
            break
        out.append(name if key is None else key)
    return out


def list_objects(
    self: S3Backend,
    bucket: FakeBucket,
    prefix: str | None,
    delimiter: str | None,
    marker: str | None,
    max_keys: int | None,
) -> Any:
    # docstring inherited (moto's S3Backend.list_objects)
    store = bucket.keys
    if (
        not isinstance(store, IndexedKeyStore)
        or isinstance(bucket, FakeTableStorageBucket)
        or (max_keys is not None and max_keys < 0)
    ):
        return _moto_list_objects(self, bucket, prefix, delimiter, marker, max_keys)
    limit = (self._pagination_tokens.get(marker) or marker) if marker else None
    with store.lock:
        folders = [name for name, key in store.entries(prefix or "", delimiter or "", None)
                   if key is None]  # fmt: skip
        want = None if max_keys is None else max_keys + 1  # one more: is it truncated?
        keys = _take(store.entries(prefix or "", delimiter or "", limit), want, folders=False)
    if max_keys is None:
        return keys, folders, False, None
    keys, truncated, next_marker = self._truncate_result(keys, max_keys)
    return keys, folders, truncated, next_marker


def list_objects_v2(
    self: S3Backend,
    bucket: FakeBucket,
    prefix: str | None,
    delimiter: str | None,
    continuation_token: str | None,
    start_after: str | None,
    max_keys: int,
) -> Any:
    # docstring inherited (moto's S3Backend.list_objects_v2)
    store = bucket.keys
    token_known = not continuation_token or continuation_token in self._pagination_tokens
    if (
        not isinstance(store, IndexedKeyStore)
        or isinstance(bucket, FakeTableStorageBucket)
        or max_keys < 0
        or not token_known
    ):
        return _moto_list_objects_v2(
            self, bucket, prefix, delimiter, continuation_token, start_after, max_keys
        )
    limit = None
    if continuation_token:
        limit = self._pagination_tokens[continuation_token]
    elif start_after:
        limit = start_after
    with store.lock:
        page = _take(store.entries(prefix or "", delimiter or "", limit), max_keys + 1, True)
    return self._truncate_result(page, max_keys)


def _bucket_init(init: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: FakeBucket, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.keys = IndexedKeyStore()

    return __init__


def install() -> None:
    """Give every bucket made from now on an :class:`IndexedKeyStore`, and moto's
    backend the listing methods that walk it. Once per process."""
    if getattr(FakeBucket, "_cas_indexed", False):
        return
    FakeBucket.__init__ = _bucket_init(FakeBucket.__init__)  # type: ignore[method-assign]
    FakeBucket._cas_indexed = True  # type: ignore[attr-defined]
    S3Backend.list_objects = list_objects  # type: ignore[method-assign]
    S3Backend.list_objects_v2 = list_objects_v2  # type: ignore[method-assign]


# -- the bulk load ---------------------------------------------------------------------


def _backend_of(bucket: str) -> S3Backend:
    try:
        partition, account = s3_backends.bucket_accounts[bucket]
    except KeyError:
        raise ValueError(f"no bucket {bucket!r}") from None
    backend: S3Backend = s3_backends[account][partition]
    return backend


def _put(backend: S3Backend, bucket: FakeBucket, key: str, value: bytes, ctype: str | None) -> None:
    """What moto's PUT handler does for a put_object with no headers but the checksum
    (and the content type) s3fs and boto3 send (moto.s3.responses.put_object)."""
    checksum = compute_checksum(value, algorithm="CRC32").decode("utf-8")
    new_key = backend.put_object(
        bucket.name, key, value, storage="STANDARD", checksum_value=checksum
    )
    new_key.set_metadata(metadata_from_headers({"Content-Type": ctype} if ctype else {}))
    new_key.set_acl(bucket.acl)
    new_key.website_redirect_location = None
    new_key.checksum_algorithm = "CRC32"
    backend.put_object_tagging(new_key, {})


def bulk_load(items: list[Any]) -> int:
    """Store ``[bucket, key, bytes(, content_type)]`` items as PUTs would; the count."""
    stored = 0
    for bucket_name in dict.fromkeys(item[0] for item in items):
        backend = _backend_of(bucket_name)
        bucket = backend.get_bucket(bucket_name)
        if bucket.object_lock_enabled:
            raise ValueError(f"bucket {bucket_name!r} has object lock: PUT it")
        store = bucket.keys
        block = store.deferred() if isinstance(store, IndexedKeyStore) else contextlib.nullcontext()
        with block:
            for item in items:
                if item[0] != bucket_name:
                    continue
                _, key, value, *rest = item
                if not isinstance(key, str) or not isinstance(value, bytes):
                    raise ValueError(f"an item is [bucket, key, bytes]: got {item[:2]!r}")
                _put(backend, bucket, key, value, rest[0] if rest else None)
                stored += 1
    return stored


class BulkLoad:
    """A WSGI middleware: a ``POST`` to ``path`` loads objects; the rest to moto."""

    def __init__(self, app: Callable[..., Iterable[bytes]], path: str) -> None:
        self.app = app
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        answer: dict[str, Any]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            items = msgpack.unpackb(body, raw=False)
            if not isinstance(items, list):
                raise ValueError("the body is a msgpack list of [bucket, key, bytes]")
            answer, status = {"stored": bulk_load(items)}, "200 OK"
        except (ValueError, TypeError, S3ClientError) as exc:
            answer, status = {"error": f"{type(exc).__name__}: {exc}"}, "400 Bad Request"
        out = json.dumps(answer).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(out)))])  # fmt: skip
        return [out]
