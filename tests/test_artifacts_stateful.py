"""The state machine of cas/testing/stateful.py (the whole API against a plain-Python
model) on every root: a local folder and memory:// under the loaded hypothesis profile,
and the local S3, GCS and Azure servers with a share of its examples."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import cas
from cas.testing.servers import Server
from cas.testing.stateful import FreshStore, machine_settings, run_store_machine

pytestmark = pytest.mark.usefixtures("fresh_cache")


def test_local(tmp_path: Path) -> None:
    @contextlib.contextmanager
    def fresh() -> Iterator[cas.ArtifactStore]:
        with contextlib.closing(cas.open_store(str(tmp_path / uuid.uuid4().hex), fsync=False)) as s:
            yield s

    run_store_machine(fresh, machine_settings())


def test_memory() -> None:
    fs = fsspec.filesystem("memory")

    @contextlib.contextmanager
    def fresh() -> Iterator[cas.ArtifactStore]:
        top = f"/cas-state-{uuid.uuid4().hex}"
        try:
            with contextlib.closing(cas.open_store(f"memory://{top}", fsync=False)) as s:
                yield s
        finally:
            if fs.exists(top):
                fs.rm(top, recursive=True)

    run_store_machine(fresh, machine_settings())


def _on_server(server: Server) -> FreshStore:
    bucket = server.new_bucket("cas-state")  # one bucket a test, a fresh prefix an example

    @contextlib.contextmanager
    def fresh() -> Iterator[cas.ArtifactStore]:
        url = server.url(bucket, uuid.uuid4().hex)
        with contextlib.closing(
            cas.open_store(url, fsync=False, **server.storage_options)
        ) as store:
            yield store

    return fresh


def test_s3(s3_server: Server) -> None:
    run_store_machine(_on_server(s3_server), machine_settings(remote=True))


def test_gcs(gcs_server: Server) -> None:
    run_store_machine(_on_server(gcs_server), machine_settings(remote=True))


def test_azure(azure_server: Server) -> None:
    run_store_machine(_on_server(azure_server), machine_settings(remote=True))
