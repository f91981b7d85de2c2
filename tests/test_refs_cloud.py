"""The RefStore suite (refs/testing.py) on S3, GCS and Azure Blob, through the local
servers: compare-and-swap by the services' conditional requests (refs/cloud.py).

Each test gets a fresh bucket: the suite lists the root's parent to check that no
name escapes the root, so the parent must hold nothing else.

Azure: two gaps of adlfs (the client library, so real Azure has them too), each
pinned by a deterministic strict xfail below. ``find("c/refs/a")`` answers with the
blob ``c/refs/a`` itself when there is one, not with ``c/refs/a/b`` below it, so the
name-tree check of ``refs`` misses a child created concurrently; and ``find`` of a
folder whose name holds ``#`` answers ``[]``, so ``list(prefix)`` misses its refs, and
``set`` of a name whose last part holds ``#`` loops for ever (its history folder reads
as empty: ``_fresh`` is False on every try). The property test excludes ``#``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings

from cas.testing.servers import Server
from refs import RefStore
from refs.cloud import conditional_for
from refs.testing import A, MakeRefStore, RefStoreTests, valid_names

pytestmark = pytest.mark.slow  # about two minutes for the three servers

ADLFS_FIND_FILE = (
    "adlfs gap: find('refs/a') answers the blob 'refs/a' itself, not 'refs/a/b' below it,"
    " so refs' name-tree recheck misses a concurrent child on Azure"
)
ADLFS_FIND_HASH = (
    "adlfs gap: find() of a folder whose name holds '#' answers [], so list() misses refs"
    " below it (and set() of a name ending in '#' never returns: its history folder reads"
    " as empty, so refs withdraws its claim and tries again, forever)"
)


def _make(server: Server) -> MakeRefStore:
    bucket = server.new_bucket()
    fs = server.filesystem()

    def make(**options: Any) -> RefStore:
        options.setdefault("conditional", conditional_for(fs))
        return RefStore(fs, f"{bucket}/.cas", **options)

    return make


class TestS3RefStore(RefStoreTests):
    @pytest.fixture
    def make_refstore(self, s3_server: Server) -> MakeRefStore:
        return _make(s3_server)


class TestGCSRefStore(RefStoreTests):
    @pytest.fixture
    def make_refstore(self, gcs_server: Server) -> MakeRefStore:
        return _make(gcs_server)


class TestAzureRefStore(RefStoreTests):
    @pytest.fixture
    def make_refstore(self, azure_server: Server) -> MakeRefStore:
        return _make(azure_server)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(name=valid_names)
    def test_valid_names_round_trip(self, rs: RefStore, name: str) -> None:
        assume("#" not in name)  # see ADLFS_FIND_HASH: test_hash_in_a_folder_name pins it
        inner = RefStoreTests.test_valid_names_round_trip.hypothesis.inner_test  # type: ignore[attr-defined]
        inner(self, rs, name)

    @pytest.mark.xfail(strict=True, reason=ADLFS_FIND_HASH)
    def test_hash_in_a_folder_name(self, rs: RefStore) -> None:
        rs.set("x#/y", A)
        assert rs.list("x#/") == ["x#/y"]

    @pytest.mark.xfail(strict=False, reason=ADLFS_FIND_FILE + " (when the race goes that way)")
    def test_parent_and_child_created_at_once(self, make_refstore: MakeRefStore) -> None:
        super().test_parent_and_child_created_at_once(make_refstore)

    @pytest.mark.xfail(strict=True, reason=ADLFS_FIND_FILE)
    def test_a_child_written_behind_a_ref_is_seen(self, rs: RefStore) -> None:
        rs.set("a", A)
        rs.fs.pipe_file(f"{rs.root}/refs/a/b", (A + "\n").encode())  # as a racing writer would
        assert rs._conflicting("a") == "a/b"
