"""An MLflow artifact repository that keeps every logged file as a cas artifact.

Point an experiment at it with ``artifact_location="cas://<prefix>"``; MLflow then gives
each run the artifact URI ``cas://<prefix>/<run_id>/artifacts`` and each file logged
there becomes the artifact ``<prefix>/<run_id>/artifacts/<path>``, saved from the file
itself: a blob whose content id is the file's ``b3sum``, so logging the same bytes twice
stores them once. ``delete_artifacts`` really deletes the names (``mlflow gc`` calls it),
so ``cas gc`` then frees what nothing else holds.

URI grammar::

    cas://<name>[/<more/name>][?root=<root URL, percent-encoded>]

- The name part is a cas name prefix (git's ref-name rules); the path of a file inside
  the run is appended to it. ``cas://<prefix>/<run>/artifacts/model/MLmodel`` is the same
  artifact that cas's fsspec URL ``cas://<prefix>/<run>/artifacts/model/MLmodel`` opens.
- ``root`` names the store (a folder, ``s3://bucket/prefix``, ``gs://``, ``az://``, ...);
  without it the root is ``$CAS_ROOT``, then ``./.cas``, read by the process that logs or
  loads. Percent-encode a root that holds ``?``, ``&``, ``#`` or ``%``
  (``urllib.parse.quote(root, safe="")``).
- Credentials and endpoints come from the environment (``AWS_*``, ``AZURE_STORAGE_*``,
  ``GOOGLE_APPLICATION_CREDENTIALS`` ...), as for the ``cas`` command.
- A file name that git's rules refuse in a name (a space, ``~``, ``:``, a leading ``.``
  ...) is stored with those characters percent-encoded, and listed decoded.
- An empty folder (``log_artifacts`` of a tree that holds one) is the empty artifact
  ``<folder>/%empty-folder``, never listed: MLflow lists and downloads the folder.

Importing this module imports MLflow; ``import cas`` does not.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.store.artifact.artifact_repo import ArtifactRepository

import cas
from cas.integrations._common import IntegrationError, encode_component, resolve_root, shared_store

__all__ = [
    "ArtifactNotFound",
    "CasArtifactRepository",
    "CasUri",
    "InvalidArtifactPath",
    "parse_cas_uri",
]

SCHEME = "cas"
_RUN_ARTIFACTS = re.compile(r"(?:^|/)([0-9a-f]{32})/artifacts(?:/|$)")
_COPY_BUFFER = 1 << 20
#: The last part of the name that keeps an empty folder (MLflow lists and downloads
#: those): a '%' that no encoded file name holds ('%' itself is encoded as %25).
EMPTY_FOLDER = "%empty-folder"


class InvalidArtifactPath(IntegrationError, MlflowException):
    """A path outside the run's artifacts (a leading '/', '..'), refused as MLflow's
    local repository refuses it (``INVALID_PARAMETER_VALUE``)."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


class ArtifactNotFound(cas.ObjectNotFound, MlflowException):
    """No artifact at the path (``RESOURCE_DOES_NOT_EXIST``, as MLflow's local one)."""

    def __init__(self, path: str, message: str) -> None:
        cas.ObjectNotFound.__init__(self, path, message)
        MlflowException.__init__(self, message, error_code=RESOURCE_DOES_NOT_EXIST)


class CasUri:
    """A parsed ``cas://`` URI: the store ``root`` and the name ``prefix`` under it."""

    __slots__ = ("prefix", "root")

    def __init__(self, root: str, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"CasUri(root={self.root!r}, prefix={self.prefix!r})"


def parse_cas_uri(uri: str) -> CasUri:
    """Split ``cas://<name>[?root=<url>]`` into the root and the name prefix."""
    parts = urlsplit(uri)
    if parts.scheme != SCHEME:
        raise IntegrationError(f"{uri!r} is not a cas URI: write cas://<name>[?root=<url>]")
    if parts.fragment:
        raise IntegrationError(
            f"{uri!r} has a '#' part; percent-encode a root that holds '#' (%23)"
        )
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - {"root"})
    if unknown:
        raise IntegrationError(
            f"{uri!r}: unknown parameter {unknown[0]!r}; the only one is root=<url>"
        )
    roots = query.get("root", [])
    if len(roots) > 1:
        raise IntegrationError(f"{uri!r} names the root twice; give root=<url> once")
    prefix = (parts.netloc + parts.path).strip("/")
    if not prefix:
        raise IntegrationError(
            f"{uri!r} has no name: write cas://<prefix>, e.g. cas://mlflow/fraud"
        )
    return CasUri(resolve_root(roots[0] if roots else None), prefix)


def encode_path(path: str) -> str:
    """A run-relative artifact path as the tail of a valid cas name (see module doc)."""
    return "/".join(encode_component(c) for c in _clean_path(path).split("/"))


def decode_component(component: str) -> str:
    return unquote(component)


def _clean_path(path: str) -> str:
    norm = posixpath.normpath(path).strip("/")
    if path.startswith("/"):
        raise InvalidArtifactPath(
            f"artifact path {path!r} is absolute: give it relative to the run's artifacts"
        )
    if norm in ("", "."):
        return ""
    if norm == ".." or norm.startswith("../"):
        raise InvalidArtifactPath(f"artifact path {path!r} leaves the run's artifacts: drop '..'")
    return norm


class CasArtifactRepository(ArtifactRepository):
    """MLflow's artifact repository for ``cas://`` URIs (entry point ``cas`` in
    ``mlflow.artifact_repository``): each file is one cas artifact named
    ``<uri name>/<path>``; folders are the ``/`` in names, listed as MLflow's local
    repository lists them."""

    def __init__(
        self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None
    ) -> None:
        self._uri = parse_cas_uri(artifact_uri)
        super().__init__(artifact_uri, tracking_uri, registry_uri)
        self.store = shared_store(self._uri.root)
        found = _RUN_ARTIFACTS.search(self._uri.prefix)
        self._run_id = found.group(1) if found else None

    # -- names ----------------------------------------------------------------------------

    def name_of(self, path: str | None) -> str:
        """The cas name of the artifact at ``path`` (relative to this URI)."""
        tail = encode_path(path or "")
        return f"{self._uri.prefix}/{tail}" if tail else self._uri.prefix

    def _names_under(self, path: str | None) -> list[str]:
        return self.store.list_artifacts(self.name_of(path) + "/")

    # -- MLflow's contract ----------------------------------------------------------------

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        # docstring inherited
        local = Path(local_file)
        target = posixpath.join(artifact_path or "", local.name)
        if local.is_dir():
            self.log_artifacts(str(local), target)
            return
        self._save(local, target)

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        # docstring inherited
        base = Path(local_dir)
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            rel = Path(folder).relative_to(base).as_posix()
            for filename in sorted(files):
                inner = filename if rel == "." else f"{rel}/{filename}"
                self._save(Path(folder) / filename, posixpath.join(artifact_path or "", inner))
            where = _clean_path(posixpath.join(artifact_path or "", rel))
            if not (files or dirs) and where:  # kept as local MLflow keeps it
                self._save(b"", where, self.name_of(where) + "/" + EMPTY_FOLDER)

    def _save(self, value: Path | bytes, path: str, name: str | None = None) -> None:
        self.store.save(
            value,
            name or self.name_of(path),
            metadata={"mlflow_path": _clean_path(path)},
            source_pipeline="mlflow",
            source_run_id=self._run_id,
        )

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        # docstring inherited
        rel = _clean_path(path or "")
        prefix = self.name_of(rel) + "/"
        entries: dict[str, FileInfo] = {}
        for name in self.store.list_artifacts(prefix):
            first, _, rest = name[len(prefix) :].partition("/")
            if first == EMPTY_FOLDER and not rest:
                continue
            shown = decode_component(first)
            child = f"{rel}/{shown}" if rel else shown
            if child in entries:
                continue
            if rest:
                entries[child] = FileInfo(child, True, None)
            else:
                entries[child] = FileInfo(child, False, self.store.size(name))
        return sorted(entries.values(), key=lambda f: f.path)

    def _is_directory(self, artifact_path: str | None) -> bool:
        return bool(self._names_under(artifact_path))

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        # docstring inherited; the stream is verified against the content id as it is read
        try:
            src = self.store.open(self.name_of(remote_file_path))
        except cas.ObjectNotFound as exc:
            raise ArtifactNotFound(
                remote_file_path, f"No such artifact: {remote_file_path!r} ({exc})"
            ) from exc
        with src, open(local_path, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BUFFER)

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        """Delete the artifact at ``artifact_path`` and every one under it (the whole URI
        without a path). The names go now; ``cas gc`` frees content nothing else holds."""
        name = self.name_of(artifact_path)
        doomed = self._names_under(artifact_path)
        if self.store.exists(name):
            doomed.append(name)
        for each in doomed:
            try:
                self.store.delete(each)
            except cas.ObjectNotFound:
                continue  # deleted meanwhile by another process: the goal is reached

    def get_local_path(self, artifact_path: str) -> str | None:
        return None
