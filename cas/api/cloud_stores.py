"""The cloud store classes: FlowyML's configuration knobs on one :class:`ArtifactStore`.

::

    S3ArtifactStore("my-bucket")                          # s3://my-bucket/cas
    S3ArtifactStore(name="s3", bucket="my-bucket", prefix="ml")
    GCSArtifactStore(bucket_name="b", project_id="p", prefix="ml/{date}")
    AzureArtifactStore("s", "container", "")              # FlowyML's order: name, container, prefix

Arguments. ``name`` comes first, as in FlowyML, and the bucket (``bucket``,
``bucket_name``, ``container``) may be given by keyword. One rule settles the
positional forms: **a single positional argument is the bucket** (cas's and its
README's ``S3ArtifactStore("my-bucket")``) unless the bucket is also given by keyword;
**several positional arguments follow FlowyML's order** (``name, bucket, prefix``;
GCS: ``name, bucket_name, project_id, prefix``). A store without a bucket is an error
at construction naming the argument.

Prefix templates. ``{date}`` (YYYY-MM-DD, UTC, when the store is built; ``date=``
sets it) and ``{pipeline_name}`` (the ``pipeline_name=`` argument) organise *names*,
not objects: the object space is the prefix up to the folder holding the first
template, and the rest becomes a name prefix. With ``prefix="ml/{date}"`` the root is
``s3://bucket/ml``, and ``save(obj, "model")`` saves the name ``2026-11-23/model``
there; ``load``, ``exists``, ``list_artifacts``, ``delete`` and ``materialize`` work
within that day, while ``open_store("s3://bucket/ml")`` sees every day, and content
saved on two days is stored once. Any other ``{...}`` is an error.

Connecting. Building a store touches no network: the store opens (reads, or in an
empty root writes, its CAS marker) on first use. ``validate()`` checks without
writing anything, before or after that. ``to_dict()`` holds no secrets; give them
again to :func:`store_from_dict` (or let the client find them in the environment).
"""

from __future__ import annotations

import datetime as _dt
import re
import string
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from cas.api.artifact_store import ArtifactStore, LocalArtifactStore, open_store, validate_root
from cas.errors import CasError
from cas.storage import Storage, open_storage

TEMPLATES = ("date", "pipeline_name")

#: storage_options that to_dict() keeps: addresses and behaviour, never credentials.
PUBLIC_OPTIONS = frozenset(
    {"endpoint_url", "region_name", "config_kwargs", "client_kwargs", "project", "location",
     "requester_pays", "anon", "use_ssl", "version_aware", "consistency", "requests_timeout",
     "account_name", "account_host", "skip_instance_cache", "use_listings_cache",
     "default_block_size", "max_concurrency", "timeout"}
)  # fmt: skip
_SECRET_WORDS = re.compile(
    r"key|secret|token|passw|credential|sas|signature|connection_string|auth", re.IGNORECASE
)


def today() -> str:
    """Today's date in UTC, as ``{date}`` fills it (tests replace this function)."""
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


def split_prefix(prefix: str, values: Mapping[str, str]) -> tuple[str, str]:
    """``(object space path, name prefix)`` of a prefix template.

    The object space is every whole folder before the first template; the rest,
    filled in, is the name prefix (ending in ``/``)::

        split_prefix("ml/{date}", {"date": "2026-11-23"}) == ("ml", "2026-11-23/")
    """
    fields = [f for _, f, _, _ in string.Formatter().parse(prefix) if f is not None]
    unknown = sorted({f for f in fields if f not in TEMPLATES})
    if unknown:
        raise CasError(
            f"prefix {prefix!r}: unknown template {', '.join('{' + u + '}' for u in unknown)};"
            f" a prefix may use {{date}} and {{pipeline_name}}"
        )
    prefix = prefix.strip("/")
    first = prefix.find("{")
    if first < 0:
        return prefix, ""
    static = prefix[:first].rpartition("/")[0]
    templated = prefix[len(static) :].strip("/")
    missing = sorted(f for f in set(fields) if not values.get(f))
    if missing:
        raise CasError(f"prefix {prefix!r} uses {{{missing[0]}}}: pass {missing[0]}= to the store")
    return static, templated.format(**values).strip("/") + "/"


def public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The storage_options that are safe to write down: no key, secret, token, password,
    account key, SAS or connection string, at any depth."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in PUBLIC_OPTIONS or _SECRET_WORDS.search(key):
            continue
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if not _SECRET_WORDS.search(str(k))}
        if isinstance(value, (str, int, float, bool, type(None), dict)):
            out[key] = value
    return out


class _Lazy:
    """What a cloud store needs to open on first use."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.opening = False


class CloudArtifactStore(ArtifactStore):
    """The shared machinery of the three cloud classes (subclasses set the class fields)."""

    scheme: ClassVar[str]
    default_name: ClassVar[str]
    bucket_argument: ClassVar[str]  # "bucket", "bucket_name" or "container"
    flowyml_order: ClassVar[tuple[str, ...]]

    def _configure(
        self,
        args: tuple[Any, ...],
        given: dict[str, Any],
        *,
        pipeline_name: str | None,
        date: str | _dt.date | None,
        allow_pickle: bool,
        fsync: bool,
        storage_options: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        """Check and set the configuration; no I/O. Returns the arguments as placed."""
        config = self._arguments(args, given)
        bucket = config[self.bucket_argument]
        if not bucket:
            raise CasError(
                f"{type(self).__name__} needs {self.bucket_argument}= (the {self.scheme}://"
                f" {'container' if self.scheme == 'az' else 'bucket'} to use)"
            )
        self.name: str = config["name"] or self.default_name
        self.bucket: str = str(bucket).strip("/")
        self.prefix: str = "cas" if config["prefix"] is None else str(config["prefix"])
        self.pipeline_name = pipeline_name
        self.date = date.isoformat() if isinstance(date, _dt.date) else (date or today())
        static, name_prefix = split_prefix(
            self.prefix, {"date": self.date, "pipeline_name": pipeline_name or ""}
        )
        self._root_url = f"{self.scheme}://{self.bucket}/{static}".rstrip("/")
        self._options = {**(storage_options or {}), **options}
        self._settings: dict[str, Any] = {"allow_pickle": allow_pickle, "fsync": fsync}
        self.allow_pickle = allow_pickle
        self.name_prefix = name_prefix
        self._lazy: _Lazy | None = _Lazy()
        return config

    def _arguments(self, args: tuple[Any, ...], given: dict[str, Any]) -> dict[str, Any]:
        """Apply the positional rule of the module docstring."""
        order = self.flowyml_order
        if len(args) > len(order):
            raise TypeError(
                f"{type(self).__name__} takes at most {len(order)} positional arguments"
            )
        config = dict(given)
        if len(args) == 1 and config.get(self.bucket_argument) is None:
            placed = {self.bucket_argument: args[0]}  # S3ArtifactStore("my-bucket")
        else:
            placed = dict(zip(order, args, strict=False))  # FlowyML's order
        for key, value in placed.items():
            if config.get(key) is not None:
                raise TypeError(f"{type(self).__name__} got {key} twice (by position and keyword)")
            config[key] = value
        return config

    # -- opening on first use ---------------------------------------------------------

    def open(self, name_or_id: str | None = None, path: str | None = None) -> Any:
        """With no argument: connect now and return the store (reading the CAS marker,
        or writing it in an empty root). With a name or id: the artifact's content as
        a verified stream, as :meth:`ArtifactStore.open`."""
        self.connect()
        if name_or_id is None:
            return self
        return super().open(name_or_id, path)

    def connect(self) -> CloudArtifactStore:
        """Connect now (reading the CAS marker, or writing it in an empty root)."""
        lazy = self.__dict__.get("_lazy")
        if lazy is None:
            return self
        with lazy.lock:
            if self.__dict__.get("_lazy") is None:
                return self
            lazy.opening = True
            try:
                ArtifactStore.__init__(
                    self, self._root_url, name_prefix=self.name_prefix, **self._settings,
                    **self._options,
                )  # fmt: skip
            finally:
                lazy.opening = False
            self._lazy = None
        return self

    def __getattr__(self, attr: str) -> Any:
        # Reached only for what is not set yet: the store's parts (storage, space, refs,
        # catalog, ...) before first use. Opening sets them.
        lazy = self.__dict__.get("_lazy")
        if attr.startswith("__") or lazy is None or lazy.opening:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")
        self.connect()
        return object.__getattribute__(self, attr)

    @property
    def is_open(self) -> bool:
        return self.__dict__.get("_lazy") is None

    def close(self) -> None:
        if self.is_open:
            super().close()

    # -- configuration ----------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._root_url

    @property
    def base_path(self) -> str:
        """The root URL of the object space (``gs://bucket/prefix``, templates excluded)."""
        return self._root_url

    def to_dict(self) -> dict[str, Any]:
        """The configuration that rebuilds this store, without secrets (see
        :func:`store_from_dict`). ``date`` is kept: drop it to rebuild today's store."""
        return {
            "type": type(self).__name__,
            "name": self.name,
            self.bucket_argument: self.bucket,
            **self._extra_config(),
            "prefix": self.prefix,
            "pipeline_name": self.pipeline_name,
            "date": self.date if "{date}" in self.prefix else None,
            "allow_pickle": self.allow_pickle,
            "url": self.base_path,
            "storage_options": public_options(self._options),
        }

    def _extra_config(self) -> dict[str, Any]:
        return {}

    def validate(self, raise_errors: bool = False) -> bool:
        """Check, writing nothing, that the bucket exists, the credentials work and the
        root is a cas store or empty: True, else False with the reason logged (``cas``
        logger). Works before the store is first used: it never opens the store."""
        storage: Storage = (
            self.storage if self.is_open else open_storage(self._root_url, **self._options)
        )
        return validate_root(storage, raise_errors=raise_errors)


class S3ArtifactStore(CloudArtifactStore):
    """A store in an S3 bucket: ``S3ArtifactStore(name="s3", bucket=None, prefix="cas",
    **storage_options)`` (s3fs options: key, secret, endpoint_url, ...)."""

    scheme, default_name, bucket_argument = "s3", "s3", "bucket"
    flowyml_order = ("name", "bucket", "prefix")

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        bucket: str | None = None,
        prefix: str | None = None,
        pipeline_name: str | None = None,
        date: str | _dt.date | None = None,
        allow_pickle: bool = False,
        fsync: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._configure(
            args, {"name": name, "bucket": bucket, "prefix": prefix},
            pipeline_name=pipeline_name, date=date, allow_pickle=allow_pickle, fsync=fsync,
            storage_options=storage_options, options=options,
        )  # fmt: skip


class GCSArtifactStore(CloudArtifactStore):
    """A store in a GCS bucket: ``GCSArtifactStore(name="gcs", bucket_name=None,
    project_id=None, prefix="cas", **storage_options)`` (gcsfs options: token, ...)."""

    scheme, default_name, bucket_argument = "gs", "gcs", "bucket_name"
    flowyml_order = ("name", "bucket_name", "project_id", "prefix")

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        bucket_name: str | None = None,
        project_id: str | None = None,
        prefix: str | None = None,
        pipeline_name: str | None = None,
        date: str | _dt.date | None = None,
        allow_pickle: bool = False,
        fsync: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        config = self._configure(
            args, {"name": name, "bucket_name": bucket_name, "project_id": project_id, "prefix": prefix},
            pipeline_name=pipeline_name, date=date, allow_pickle=allow_pickle, fsync=fsync,
            storage_options=storage_options, options=options,
        )  # fmt: skip
        self.bucket_name = self.bucket
        self.project_id: str | None = config["project_id"]
        if self.project_id is not None:
            self._options.setdefault("project", self.project_id)

    def _extra_config(self) -> dict[str, Any]:
        return {"project_id": self.project_id}


class AzureArtifactStore(CloudArtifactStore):
    """A store in an Azure Blob container: ``AzureArtifactStore(name="azure",
    container=None, prefix="cas", **storage_options)`` (adlfs options:
    connection_string, account_name, account_key, sas_token, credential, ...)."""

    scheme, default_name, bucket_argument = "az", "azure", "container"
    flowyml_order = ("name", "container", "prefix")

    def __init__(
        self,
        *args: Any,
        name: str | None = None,
        container: str | None = None,
        prefix: str | None = None,
        pipeline_name: str | None = None,
        date: str | _dt.date | None = None,
        allow_pickle: bool = False,
        fsync: bool = True,
        storage_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._configure(
            args, {"name": name, "container": container, "prefix": prefix},
            pipeline_name=pipeline_name, date=date, allow_pickle=allow_pickle, fsync=fsync,
            storage_options=storage_options, options=options,
        )  # fmt: skip
        self.container = self.bucket


_CLOUD: dict[str, Callable[..., CloudArtifactStore]] = {
    cls.__name__: cls for cls in (S3ArtifactStore, GCSArtifactStore, AzureArtifactStore)
}


def store_from_dict(config: Mapping[str, Any], **storage_options: Any) -> ArtifactStore:
    """Rebuild a store from its ``to_dict()``. Secrets are not in it: pass them here as
    ``storage_options`` (key=, secret=, token=, connection_string=, ...) or let the
    client find them in its environment."""
    kind = config.get("type")
    if kind in _CLOUD:
        fields = {k: v for k, v in config.items() if k not in ("type", "url", "storage_options")}
        options = {**(config.get("storage_options") or {}), **storage_options}
        return _CLOUD[kind](**fields, storage_options=options)
    if kind == "LocalArtifactStore":
        return LocalArtifactStore(config["url"], allow_pickle=bool(config.get("allow_pickle")))
    if kind == "ArtifactStore" or (kind is None and "url" in config):
        allow = bool(config.get("allow_pickle"))
        return open_store(config["url"], allow_pickle=allow, **storage_options)
    raise CasError(
        f"not a store configuration (type {kind!r}); expected the to_dict() of a cas store"
    )
