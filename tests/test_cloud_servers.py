"""The local S3, GCS and Azure servers, through their fsspec filesystems.

Besides checking that the servers work, these tests pin what each filesystem raises
for a missing bucket, refused credentials and a network that is down: the table in
``cas/testing/servers.py``, which the store's error translation relies on.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import pytest

from cas.testing.servers import Server

N_MANY = 1_010  # more than one listing page for S3 and GCS (1,000 keys a page; Azure: 5,000)


def _exception(dotted: str) -> type[BaseException]:
    """The exception class named ``module.Class`` (imported only when a test needs it)."""
    module, _, name = dotted.rpartition(".")
    exc: type[BaseException] = getattr(importlib.import_module(module), name)
    return exc


# What a missing bucket / container raises: (read, write, list). Azure writes do not
# go through adlfs's translation and surface the SDK's own error.
MISSING_BUCKET = {
    "s3": ("builtins.FileNotFoundError",) * 3,
    "gcs": ("builtins.FileNotFoundError",) * 3,
    "azure": (
        "builtins.FileNotFoundError",
        "azure.core.exceptions.ResourceNotFoundError",
        "builtins.FileNotFoundError",
    ),
}

BAD_CREDENTIALS = {
    "s3": "builtins.PermissionError",
    "azure": "azure.core.exceptions.HttpResponseError",
    # fake-gcs-server checks no credentials (real GCS: 401 gcsfs.retry.HttpError).
    "gcs": "builtins.PermissionError",
}

NETWORK_DOWN = {
    "s3": "botocore.exceptions.EndpointConnectionError",
    "gcs": "aiohttp.client_exceptions.ClientConnectorError",
    "azure": "azure.core.exceptions.ServiceRequestError",
}


@pytest.fixture
def bucket(cloud_server: Server) -> str:
    return cloud_server.new_bucket()


def test_pipe_cat_round_trip(cloud_server: Server, bucket: str) -> None:
    fs = cloud_server.filesystem()
    blobs = {"empty": b"", "small": b"hello", "binary": os.urandom(3 * 2**20 + 17)}
    for name, data in blobs.items():
        fs.pipe_file(f"{bucket}/rt/{name}", data)
    # A new filesystem object, as another process would have: no instance or listing cache.
    other = cloud_server.filesystem()
    assert other is not fs
    for name, data in blobs.items():
        assert other.cat_file(f"{bucket}/rt/{name}") == data
        assert other.info(f"{bucket}/rt/{name}")["size"] == len(data)
    fs.pipe_file(f"{bucket}/rt/small", b"changed")
    assert other.cat_file(f"{bucket}/rt/small") == b"changed"


def test_list_and_remove_more_than_a_page(cloud_server: Server, bucket: str) -> None:
    fs = cloud_server.filesystem()
    keys = [f"{bucket}/many/{i // 100:02d}/{i:05d}" for i in range(N_MANY)]
    fs.pipe({key: b"x" for key in keys})
    fs.pipe_file(f"{bucket}/manyx", b"a sibling that shares the prefix's letters")

    listed = fs.find(f"{bucket}/many/")
    assert sorted(listed) == sorted(keys)
    assert len(fs.ls(f"{bucket}/many/")) == (N_MANY + 99) // 100  # the "folders"
    assert len(cloud_server.filesystem().find(f"{bucket}/many/")) == N_MANY

    fs.rm(keys)
    assert cloud_server.filesystem().find(f"{bucket}/many/") == []
    assert fs.cat_file(f"{bucket}/manyx").startswith(b"a sibling")


def test_missing_key_is_file_not_found(cloud_server: Server, bucket: str) -> None:
    fs = cloud_server.filesystem()
    path = f"{bucket}/no/such/key"
    with pytest.raises(FileNotFoundError):
        fs.cat_file(path)
    with pytest.raises(FileNotFoundError):
        fs.info(path)
    with pytest.raises(FileNotFoundError), fs.open(path, "rb"):
        pass
    assert fs.exists(path) is False


def test_missing_bucket(cloud_server: Server) -> None:
    read, write, listing = (_exception(name) for name in MISSING_BUCKET[cloud_server.kind])
    fs = cloud_server.filesystem()
    missing = "cas-missing-0123456789abcdef"
    with pytest.raises(read):
        fs.cat_file(f"{missing}/k")
    with pytest.raises(write):
        fs.pipe_file(f"{missing}/k", b"v")
    with pytest.raises(listing):
        fs.ls(missing)
    assert fs.exists(f"{missing}/k") is False
    if cloud_server.kind == "azure":
        # adlfs lists a missing container as empty: a sweep must not trust that.
        assert fs.find(f"{missing}/") == []
    else:
        with pytest.raises(FileNotFoundError):
            fs.find(f"{missing}/")


def _bad_credentials_case(kind: str) -> Any:
    if kind == "gcs":
        gap = "server gap: fake-gcs-server accepts any credentials (real GCS: 401/403)"
        return pytest.param(
            kind, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=gap)
        )
    return kind


@pytest.mark.parametrize("kind", [_bad_credentials_case(k) for k in ("s3", "gcs", "azure")])
def test_bad_credentials(kind: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{kind}_server")
    bucket = server.new_bucket()
    server.filesystem().pipe_file(f"{bucket}/k", b"v")
    expected = _exception(BAD_CREDENTIALS[kind])
    with server.credentials_checked():
        bad = server.bad_filesystem()
        try:
            bad.cat_file(f"{bucket}/k")
        except expected as exc:
            assert not isinstance(exc, FileNotFoundError)
            if kind == "azure":
                assert getattr(exc, "status_code", None) == 403
        else:
            raise AssertionError(f"{kind}: bad credentials were accepted")
    assert server.filesystem().cat_file(f"{bucket}/k") == b"v"  # good ones work again


def test_network_down(cloud_server: Server) -> None:
    expected = _exception(NETWORK_DOWN[cloud_server.kind])
    fs = cloud_server.unreachable_filesystem()
    calls: list[Callable[[], object]] = [
        lambda: fs.cat_file("cas-anything/k"),
        lambda: fs.info("cas-anything/k"),
        lambda: fs.exists("cas-anything/k"),  # raises: never "absent"
        lambda: fs.ls("cas-anything"),
    ]
    for call in calls:
        with pytest.raises(expected) as caught:
            call()
        assert not isinstance(caught.value, FileNotFoundError)
