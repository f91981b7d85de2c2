"""cas: a content-addressed artifact store for ML pipelines, modeled on git.

>>> import cas
>>> store = cas.open_store(".cas")
>>> aid = store.save({"auc": 0.91}, "metrics/fraud")
>>> store.load("metrics/fraud") == store.load(aid)
True
"""

import importlib
from typing import TYPE_CHECKING, Any

from cas.errors import (
    BackendError,
    CasError,
    FormatError,
    IntegrityError,
    InvalidId,
    InvalidInput,
    InvalidRefName,
    IsAFolder,
    MaterializerError,
    ObjectNotFound,
    QueryError,
    ReadOnlyStore,
    RefConflict,
    RefLocked,
)

if TYPE_CHECKING:
    from cas.api.artifact_catalog import Artifact, ArtifactCatalog
    from cas.api.artifact_store import ArtifactStore, LocalArtifactStore, open_store
    from cas.api.cloud_stores import (
        AzureArtifactStore,
        GCSArtifactStore,
        S3ArtifactStore,
        store_from_dict,
    )
    from cas.api.materializers import Materializer, Stored, register_materializer

#: The public names loaded on first use, so that ``import cas.refs`` (or ``cas.catalog``)
#: costs only that package, as when they were top-level packages of their own.
_LAZY = {
    "Artifact": "cas.api.artifact_catalog",
    "ArtifactCatalog": "cas.api.artifact_catalog",
    "ArtifactStore": "cas.api.artifact_store",
    "LocalArtifactStore": "cas.api.artifact_store",
    "open_store": "cas.api.artifact_store",
    "AzureArtifactStore": "cas.api.cloud_stores",
    "GCSArtifactStore": "cas.api.cloud_stores",
    "S3ArtifactStore": "cas.api.cloud_stores",
    "store_from_dict": "cas.api.cloud_stores",
    "Materializer": "cas.api.materializers",
    "Stored": "cas.api.materializers",
    "register_materializer": "cas.api.materializers",
}

_SUBPACKAGES = frozenset(
    {"admin", "api", "catalog", "cli", "integrations", "objects", "refs", "repo", "serve",
     "storage", "testing"}
)  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"cas.{name}")
    else:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactCatalog",
    "ArtifactStore",
    "AzureArtifactStore",
    "BackendError",
    "CasError",
    "FormatError",
    "GCSArtifactStore",
    "IntegrityError",
    "InvalidId",
    "InvalidInput",
    "IsAFolder",
    "InvalidRefName",
    "LocalArtifactStore",
    "Materializer",
    "MaterializerError",
    "ObjectNotFound",
    "QueryError",
    "ReadOnlyStore",
    "RefConflict",
    "RefLocked",
    "S3ArtifactStore",
    "Stored",
    "__version__",
    "open_store",
    "register_materializer",
    "store_from_dict",
]
