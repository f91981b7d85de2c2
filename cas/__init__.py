"""cas: a content-addressed artifact store for ML pipelines, modeled on git.

>>> import cas
>>> store = cas.open_store(".cas")
>>> aid = store.save({"auc": 0.91}, "metrics/fraud")
>>> store.load("metrics/fraud") == store.load(aid)
True
"""

from cas.api.artifact_catalog import Artifact, ArtifactCatalog
from cas.api.artifact_store import ArtifactStore, LocalArtifactStore, open_store
from cas.api.cloud_stores import (
    AzureArtifactStore,
    GCSArtifactStore,
    S3ArtifactStore,
    store_from_dict,
)
from cas.api.materializers import Materializer, Stored, register_materializer
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
