"""One adapter per object service, shared by refs (compare-and-swap, listings) and
cas (objects): see :mod:`cas.refs.services.base`.

:func:`service_for` picks the adapter of a filesystem by its class; no client library
is imported here that the caller has not loaded already.
"""

from __future__ import annotations

import sys

import fsspec

from .base import (
    ObjectService,
    Service,
    backend_failures,
    diagnose,
    mtime_of,
    split,
    version_of,
)

__all__ = [
    "ObjectService",
    "Service",
    "backend_failures",
    "diagnose",
    "mtime_of",
    "version_of",
    "service_for",
    "split",
]


def service_for(fs: fsspec.AbstractFileSystem) -> Service:
    """The :class:`Service` of a filesystem: S3, GCS and Azure Blob by their own
    requests; any other fsspec filesystem through fsspec's calls."""
    kinds = [("s3fs", "S3FileSystem", ".s3", "S3Service"),
             ("gcsfs.core", "GCSFileSystem", ".gcs", "GCSService"),
             ("adlfs", "AzureBlobFileSystem", ".azure", "AzureService")]  # fmt: skip
    for module, name, adapter, cls in kinds:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(fs, getattr(loaded, name)):
            import importlib

            service: Service = getattr(importlib.import_module(adapter, __name__), cls)(fs)
            return service
    return Service(fs)
