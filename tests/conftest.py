"""Shared fixtures: the local cloud servers.

``s3_server``, ``gcs_server``, ``azure_server`` (session scope) each start their
server once, on a free port of 127.0.0.1, the first time a test asks for it, and
stop it when the session ends. Each is a :class:`cas.testing.servers.Server`:
``endpoint``, ``storage_options``, ``env``, ``filesystem()``, ``new_bucket()``,
``url()``. A server that cannot start fails every test that needs it, with its
log; nothing is skipped. ``cloud_server`` runs a test once per server.
"""

from __future__ import annotations

import os

# Before anything imports gcsfs (see cas/testing/servers.py).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cas.testing import servers  # noqa: E402
from cas.testing.strategies import load_profile  # noqa: E402

load_profile()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remote roots keep their catalog in a cache folder: keep the suite's out of ~."""
    old = os.environ.get("CAS_CACHE_DIR")
    os.environ["CAS_CACHE_DIR"] = str(tmp_path_factory.mktemp("cas-cache"))
    yield
    if old is None:
        os.environ.pop("CAS_CACHE_DIR", None)
    else:
        os.environ["CAS_CACHE_DIR"] = old

@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache folder of the test's own: remote and memory:// roots keep their catalog
    there, so no test sees a catalog an earlier one left."""
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))


CLOUD_KINDS = ("s3", "gcs", "azure")


def _serve(kind: str) -> Iterator[servers.Server]:
    with servers.start(kind) as srv:
        yield srv


@pytest.fixture(scope="session")
def s3_server() -> Iterator[servers.Server]:
    """moto's S3 server."""
    yield from _serve("s3")


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[servers.Server]:
    """fake-gcs-server."""
    yield from _serve("gcs")


@pytest.fixture(scope="session")
def azure_server() -> Iterator[servers.Server]:
    """Azurite's blob service."""
    yield from _serve("azure")


@pytest.fixture(params=CLOUD_KINDS)
def cloud_server(request: pytest.FixtureRequest) -> servers.Server:
    """Each of the three servers in turn."""
    server: servers.Server = request.getfixturevalue(f"{request.param}_server")
    return server
