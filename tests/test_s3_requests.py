"""Requests per save and load on the S3 server: pinned, so that they cannot creep back.

Counted at aiobotocore's client, where every request s3fs and refs send passes. The
bounds are today's counts; the code before them (refs listing history folders and the
tree of names through s3fs, s3fs's HEAD before every GET) sent 19 requests for a save
of a new name, 13 for a ref move, 14 for a ref move by a store that had not seen the
name, and 3 for a load. docs/backends.md explains each request.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest

import cas
from cas.testing.servers import Server, s3_calls
from refs import RefStore
from refs.cloud import conditional_for
from refs.testing import A, B

pytestmark = pytest.mark.slow

Requests = collections.Counter[str]


@pytest.fixture
def store(s3_server: Server) -> Iterator[Any]:
    with cas.open_store(
        s3_server.url(s3_server.new_bucket(), "store"), **s3_server.storage_options
    ) as opened:
        opened.save(b"first", "warm/up")  # the root's marker, the catalog: done once
        yield opened


def _total(counts: Requests) -> int:
    return sum(counts.values())


def test_save_of_a_new_name(store: Any) -> None:
    with s3_calls() as counts:
        store.save(b"fraud v1", "models/fraud")
    # cas: HEAD + PUT of content and of record, PUT of the journal entry (5); refs:
    # GET of the ref (cas reads it first; the update starts from that read), GET of
    # the parent "models", a listing of one key below the name, PUT of history entry
    # 1, GET of the prune marker, PUT of the ref, and after publishing the parent and
    # the listing again (8).
    assert _total(counts) <= 13, counts
    assert counts["ListObjectsV2"] <= 2, counts
    with s3_calls() as counts:
        store.save(b"fraud v1", "models/other")
    # The parent "models" is known to be a folder now: the first check skips it.
    assert _total(counts) <= 12, counts


def test_ref_move(store: Any) -> None:
    store.save(b"fraud v1", "models/fraud")
    with s3_calls() as counts:
        store.save(b"fraud v2", "models/fraud")
    # cas 5; refs: GET of the ref, PUT of history entry 2, GET of entry 1 (still
    # there: not pruned meanwhile), PUT of the ref if it still holds what was read.
    assert _total(counts) <= 9, counts
    assert counts["ListObjectsV2"] == 0, counts


def test_ref_move_by_a_store_that_never_saw_the_name(store: Any, s3_server: Server) -> None:
    store.save(b"fraud v1", "models/fraud")
    with cas.open_store(store.url, **s3_server.storage_options) as other:
        other.index  # noqa: B018 - opens the catalog, outside the count
        with s3_calls() as counts:
            other.save(b"fraud v2", "models/fraud")
    # refs lists the name's history once to find its newest entry: 1 listing, 1 GET.
    assert _total(counts) <= 11, counts
    assert counts["ListObjectsV2"] <= 1, counts


def test_load(store: Any) -> None:
    store.save(b"fraud v1", "models/fraud")
    with s3_calls() as counts:
        assert store.load("models/fraud") == b"fraud v1"
    assert _total(counts) <= 2, counts  # GET of the ref, GET of the object


def test_refstore_set_without_a_read_first(s3_server: Server) -> None:
    fs = s3_server.filesystem()
    rs = RefStore(fs, f"{s3_server.new_bucket()}/.cas", conditional=conditional_for(fs))
    with s3_calls() as counts:
        rs.set("a/b", A, expected=None)
    # GET of the ref, GET of "a", a listing below "a/b", PUT of entry 1, GET of the
    # prune marker, PUT of the ref, GET of "a" and the listing again.
    assert _total(counts) <= 8, counts
    with s3_calls() as counts:
        rs.set("a/b", B, expected=A)
    assert _total(counts) <= 4, counts  # GET of the ref, PUT entry 2, GET entry 1, PUT ref
