"""The Storage conformance suite (cas/testing/storage_suite.py) on every storage cas
opens: a local folder (fsync on and off), ``memory://``, and S3, GCS and Azure Blob on
the local servers. Each class only wires its fixtures.

A broken storage is, for the object stores, one aimed at a closed port and one on a
bucket that does not exist; for ``memory://``, a filesystem whose every call fails as
a dropped connection would; for a local folder, a root that is a symlink loop (every
system call on it fails with ``ELOOP``: a failure, not absence).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from cas.storage import FsspecStorage, LocalStorage, Storage, open_storage
from cas.testing.servers import Server
from cas.testing.storage_suite import StorageTests

MISSING = "cas-missing-0123456789abcdef"


def _looping_root(tmp_path: Path) -> str:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)  # a symlink to itself: ELOOP on every path through it
    return str(loop)


class TestLocal(StorageTests):
    failure = OSError  # LocalStorage raises the system's error; the contract asks no more
    mtime_resolution = 0.05

    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return open_storage(str(tmp_path / "root"), fsync=True)

    @pytest.fixture
    def broken_storage(self, tmp_path: Path) -> Storage:
        return LocalStorage(_looping_root(tmp_path), fsync=True)


class TestLocalNoFsync(TestLocal):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> Storage:
        return open_storage(f"file://{tmp_path / 'root'}", fsync=False)

    @pytest.fixture
    def broken_storage(self, tmp_path: Path) -> Storage:
        return LocalStorage(_looping_root(tmp_path), fsync=False)


class _DownMemoryFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A memory filesystem whose service is down: every call fails as a refused connection."""

    def _down(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ConnectionRefusedError(111, "memory service down (test)")

    cat_file = cat_ranges = pipe_file = info = ls = find = rm_file = _down
    exists = touch = _open = cp_file = rm = modified = _down


class TestMemory(StorageTests):
    mtime_resolution = 0.05

    @pytest.fixture
    def storage(self) -> Iterator[Storage]:
        top = f"/cas-storage-test-{uuid.uuid4().hex}"
        yield open_storage(f"memory://{top}/root")
        fs = fsspec.filesystem("memory")
        if fs.exists(top):
            fs.rm(top, recursive=True)

    @pytest.fixture
    def broken_storage(self) -> Storage:
        fs = _DownMemoryFileSystem(skip_instance_cache=True)
        return FsspecStorage(fs, "/cas-down/root", "memory://cas-down/root")


class _CloudStorageTests(StorageTests):
    @pytest.fixture
    def server(self) -> Server:
        raise NotImplementedError

    @pytest.fixture
    def storage(self, server: Server) -> Storage:
        return open_storage(server.url(server.new_bucket(), "root"), **server.storage_options)

    @pytest.fixture(params=["unreachable", "missing-bucket"])
    def broken_storage(self, server: Server, request: pytest.FixtureRequest) -> Storage:
        if request.param == "unreachable":
            url = server.url("cas-anything", "root")
            return FsspecStorage(server.unreachable_filesystem(), "cas-anything/root", url)
        return open_storage(server.url(MISSING, "root"), **server.storage_options)


class TestS3(_CloudStorageTests):
    lists_after = True
    known_bugs: ClassVar[dict[str, str]] = {
        "test_delete_many_counts_only_present_files": "bug: S3 DeleteObjects reports absent "
        "keys as Deleted (moto and real S3), so FsspecStorage.delete_many counts them",
    }

    @pytest.fixture
    def server(self, s3_server: Server) -> Server:
        return s3_server


class TestGCS(_CloudStorageTests):
    lists_after = True

    @pytest.fixture
    def server(self, gcs_server: Server) -> Server:
        return gcs_server


class TestAzure(_CloudStorageTests):
    @pytest.fixture
    def server(self, azure_server: Server) -> Server:
        return azure_server
