"""Compare-and-swap on S3, GCS and Azure Blob, by the services' own conditional requests.

The requests themselves live in one adapter per service (:mod:`cas.refs.services`, shared
with cas's object storage); each adapter *is* the :class:`~refs.Conditional` of its
service. This module keeps the names refs has always offered for them. The protocol,
the answers each request can give and what the local test servers enforce are in
:mod:`cas.refs.services.base`.
"""

from __future__ import annotations

from typing import Any

from .conditional import Conditional
from .errors import RefError
from .services import ObjectService, service_for
from .services.azure import AzureService as AzureConditional
from .services.gcs import GCSService as GCSConditional
from .services.s3 import S3Service as S3Conditional

__all__ = ["AzureConditional", "GCSConditional", "S3Conditional", "conditional_for"]


def conditional_for(fs: Any) -> Conditional:
    """The conditional-request :class:`Conditional` for an S3, GCS or Azure filesystem.

    Raises :class:`~refs.RefError` for any other filesystem. Only the client
    library of ``fs`` is looked at: none is imported that is not already loaded.
    """
    service = service_for(fs)
    if isinstance(service, ObjectService):
        return service
    raise RefError(
        f"cas.refs.cloud has no compare-and-swap for {type(fs).__name__}"
        f" (protocol {fs.protocol!r}): S3 (s3fs), GCS (gcsfs) and Azure Blob (adlfs) only"
    )
