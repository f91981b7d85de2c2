"""The cloud store classes: each builds a root URL and hands it to ArtifactStore.

    S3ArtifactStore("bucket", prefix="ml")          -> s3://bucket/ml
    GCSArtifactStore("bucket", project_id="p")      -> gs://bucket
    AzureArtifactStore("container", prefix="ml")    -> az://container/ml

``**storage_options`` go to s3fs, gcsfs or adlfs unchanged (endpoint_url, key, token,
connection_string, ...). They are never written into the store or returned by to_dict().
"""

from __future__ import annotations

from typing import Any

from cas.artifacts import ArtifactStore
from cas.errors import CasError


def _url(scheme: str, bucket: str | None, prefix: str, argument: str) -> str:
    if not bucket:
        raise CasError(f"{argument} is required (the {scheme}:// bucket or container to use)")
    prefix = prefix.strip("/")
    return f"{scheme}://{bucket}/{prefix}" if prefix else f"{scheme}://{bucket}"


class S3ArtifactStore(ArtifactStore):
    def __init__(self, bucket: str | None = None, prefix: str = "", **options: Any) -> None:
        self.bucket, self.prefix = bucket, prefix
        super().__init__(_url("s3", bucket, prefix, "bucket"), **options)


class GCSArtifactStore(ArtifactStore):
    def __init__(
        self, bucket_name: str | None = None, project_id: str | None = None, prefix: str = "", **options: Any
    ) -> None:
        self.bucket_name, self.project_id, self.prefix = bucket_name, project_id, prefix
        if project_id is not None:
            options.setdefault("project", project_id)
        super().__init__(_url("gs", bucket_name, prefix, "bucket_name"), **options)


class AzureArtifactStore(ArtifactStore):
    def __init__(self, container: str | None = None, prefix: str = "", **options: Any) -> None:
        self.container, self.prefix = container, prefix
        super().__init__(_url("az", container, prefix, "container"), **options)
