"""The cloud store classes (cas/cloud.py): FlowyML's arguments, prefix templates,
base_path, to_dict and validate, against the local S3, GCS and Azure servers."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

import cas
from cas.api import cloud_stores as cloud
from cas.api.artifact_store import validate_root
from cas.api.cloud_stores import AzureArtifactStore, GCSArtifactStore, S3ArtifactStore, split_prefix
from cas.storage import open_storage
from cas.testing.servers import AZURITE_KEY, Server

# -- arguments (no server: building a store touches no network) ---------------------------

NOWHERE = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}


def test_one_positional_argument_is_the_bucket() -> None:
    store = S3ArtifactStore("my-bucket", **NOWHERE)
    assert (store.name, store.bucket, store.prefix) == ("s3", "my-bucket", "cas")
    assert store.base_path == "s3://my-bucket/cas" and not store.is_open


def test_keywords_and_flowyml_order() -> None:
    by_keyword = S3ArtifactStore(name="s3", bucket="my-bucket", prefix="", **NOWHERE)
    assert by_keyword.base_path == "s3://my-bucket"
    named = S3ArtifactStore("models", bucket="b", **NOWHERE)  # the bucket by keyword: name
    assert (named.name, named.bucket) == ("models", "b")
    flowyml = S3ArtifactStore("models", "b", "ml", **NOWHERE)
    assert (flowyml.name, flowyml.bucket, flowyml.prefix) == ("models", "b", "ml")
    gcs = GCSArtifactStore("g", "b", "proj", "x", token="anon")
    assert (gcs.name, gcs.bucket_name, gcs.project_id, gcs.base_path) == ("g", "b", "proj", "gs://b/x")
    azure = AzureArtifactStore(container="c", prefix="a/b", account_name="acct")
    assert (azure.name, azure.container, azure.base_path) == ("azure", "c", "az://c/a/b")
    with pytest.raises(TypeError, match="twice"):
        S3ArtifactStore("n", "b", bucket="b2", **NOWHERE)


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: S3ArtifactStore(**NOWHERE), "bucket="),
        (lambda: S3ArtifactStore(name="s3", **NOWHERE), "bucket="),
        (lambda: GCSArtifactStore(name="gcs", project_id="p"), "bucket_name="),
        (lambda: AzureArtifactStore(name="azure"), "container="),
    ],
)
def test_missing_bucket_argument_is_named(make: Any, argument: str) -> None:
    with pytest.raises(cas.CasError, match=argument):
        make()


def test_prefix_templates_split_into_object_space_and_names() -> None:
    day = {"date": "2026-11-23", "pipeline_name": "fraud"}
    assert split_prefix("ml/{date}", day) == ("ml", "2026-11-23/")
    assert split_prefix("/ml/{pipeline_name}/{date}/", day) == ("ml", "fraud/2026-11-23/")
    assert split_prefix("{date}", day) == ("", "2026-11-23/")
    assert split_prefix("ml/v{date}", day) == ("ml", "v2026-11-23/")
    assert split_prefix("ml/models", day) == ("ml/models", "")
    with pytest.raises(cas.CasError, match=r"unknown template \{user\}"):
        split_prefix("ml/{user}", day)
    with pytest.raises(cas.CasError, match="pipeline_name="):
        split_prefix("ml/{pipeline_name}", {"date": "2026-11-23"})
    with pytest.raises(cas.CasError, match=r"\{run\}"):
        S3ArtifactStore("b", prefix="ml/{run}", **NOWHERE)


def test_date_is_utc_today_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud, "today", lambda: "2031-01-02")
    store = S3ArtifactStore("b", prefix="ml/{date}", **NOWHERE)
    assert (store.date, store.name_prefix, store.base_path) == ("2031-01-02", "2031-01-02/", "s3://b/ml")


# -- against the servers ------------------------------------------------------------------


def make_store(server: Server, bucket: str, **kwargs: Any) -> cloud.CloudArtifactStore:
    """The class for ``server``, built from its own arguments."""
    options = {**server.storage_options, **kwargs}
    if server.kind == "s3":
        return S3ArtifactStore(name="s3", bucket=bucket, **options)
    if server.kind == "gcs":
        return GCSArtifactStore(name="gcs", bucket_name=bucket, project_id="test-project", **options)
    return AzureArtifactStore(name="azure", container=bucket, **options)


def test_each_class_round_trips(cloud_server: Server) -> None:
    bucket = cloud_server.new_bucket()
    store = make_store(cloud_server, bucket)
    assert not store.is_open  # nothing happened yet
    assert cloud_server.filesystem().find(bucket) == []
    aid = store.save({"auc": 0.91}, "models/fraud")
    assert store.is_open and store.load("models/fraud") == store.load(aid) == {"auc": 0.91}
    assert store.base_path == cloud_server.url(bucket, "cas")
    assert cas.open_store(store.base_path, **cloud_server.storage_options).list_artifacts() == [
        "models/fraud"
    ]


def test_dated_stores_share_content_and_keep_their_names(cloud_server: Server) -> None:
    bucket = cloud_server.new_bucket()
    monday = make_store(cloud_server, bucket, prefix="ml/{date}", date="2026-11-23")
    tuesday = make_store(cloud_server, bucket, prefix="ml/{date}", date="2026-11-24")
    assert monday.base_path == tuesday.base_path == cloud_server.url(bucket, "ml")
    weights = b"the same weights " * 1000
    first = monday.save(weights, "model")
    second = tuesday.save(weights, "model")
    tuesday.save(b"only tuesday", "extra")
    step = tuesday.materialize(b"out", "x", run_id="r1", step_name="train")

    assert monday.list_artifacts() == ["model"]
    assert tuesday.list_artifacts() == ["extra", "model", "runs/default/r1/train/x"]
    assert monday.load("model") == tuesday.load("model") == weights
    assert tuesday.load(step) == b"out" and not monday.exists("extra")
    everything = cas.open_store(cloud_server.url(bucket, "ml"), **cloud_server.storage_options)
    assert everything.list_artifacts() == [
        "2026-11-23/model", "2026-11-24/extra", "2026-11-24/model",
        "2026-11-24/runs/default/r1/train/x",
    ]  # fmt: skip
    content = everything.get_metadata(first)["content_id"]
    assert everything.get_metadata(second)["content_id"] == content
    blobs = [oid for oid in everything.space if everything.space.kind(oid) == "blob"]
    assert blobs.count(content) == 1 and len(blobs) == 3  # weights once, "only tuesday", "out"

    tuesday.delete("model")
    assert tuesday.list_artifacts() == ["extra", "runs/default/r1/train/x"]
    assert monday.load("model") == weights


def _secrets(server: Server) -> list[str]:
    values = [AZURITE_KEY, server.storage_options.get("connection_string", "")]
    values += [str(server.storage_options.get(k, "")) for k in ("key", "secret", "token")]
    return [v for v in values if v]


def test_to_dict_round_trips_without_secrets(cloud_server: Server) -> None:
    bucket = cloud_server.new_bucket()
    store = make_store(cloud_server, bucket, prefix="ml/{pipeline_name}", pipeline_name="fraud")
    aid = store.save(b"weights", "model")
    config = store.to_dict()
    text = json.dumps(config)
    for secret in _secrets(cloud_server):
        assert secret not in text
    for key in ("key", "secret", "token", "account_key", "connection_string", "sas_token"):
        assert key not in config["storage_options"]
    assert config["url"] == store.base_path == cloud_server.url(bucket, "ml")

    given_again = {k: v for k, v in cloud_server.storage_options.items() if k not in config["storage_options"]}  # fmt: skip
    rebuilt = cas.store_from_dict(config, **given_again)
    assert type(rebuilt) is type(store) and rebuilt.to_dict() == config
    assert rebuilt.list_artifacts() == ["model"] and rebuilt.load("model") == b"weights"
    fields = {k: v for k, v in config.items() if k not in ("type", "url")}
    by_class = type(store)(**fields, **given_again)
    assert by_class.load(aid) == b"weights"


def test_validate_good_missing_and_not_a_store(
    cloud_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = cloud_server.new_bucket()
    fs = cloud_server.filesystem()
    good = make_store(cloud_server, bucket)
    assert good.validate() is True and not good.is_open
    assert fs.find(bucket) == []  # validate wrote nothing
    good.save(b"v", "k")
    assert good.validate() is True and make_store(cloud_server, bucket).validate() is True

    missing = make_store(cloud_server, "cas-missing-0123456789abcdef")
    with caplog.at_level(logging.WARNING, logger="cas"):
        assert missing.validate() is False
    assert "cas-missing-0123456789abcdef" in caplog.text and "does not exist" in caplog.text
    with pytest.raises(cas.BackendError, match="does not exist"):
        missing.validate(raise_errors=True)
    assert not fs.exists("cas-missing-0123456789abcdef")

    fs.pipe_file(f"{bucket}/other/file.txt", b"not a store")
    foreign = make_store(cloud_server, bucket, prefix="other")
    assert foreign.validate() is False
    with pytest.raises(cas.FormatError, match="not a cas store"):
        foreign.validate(raise_errors=True)


def _bad_credentials_case(kind: str) -> Any:
    if kind == "gcs":
        gap = "server gap: fake-gcs-server accepts any credentials (real GCS: 401/403)"
        return pytest.param(
            kind, marks=pytest.mark.xfail(strict=True, raises=pytest.fail.Exception, reason=gap)
        )
    return kind


@pytest.mark.parametrize("kind", [_bad_credentials_case(k) for k in ("s3", "gcs", "azure")])
def test_validate_refuses_bad_credentials(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: Server = request.getfixturevalue(f"{kind}_server")
    bucket = server.new_bucket()
    with server.credentials_checked(), caplog.at_level(logging.WARNING, logger="cas"):
        store = make_store(server, bucket, **server.bad_storage_options)
        valid = store.validate()
    if valid:
        pytest.fail(f"{kind}: validate() accepted bad credentials")
    assert "refused the credentials" in caplog.text
    assert server.filesystem().find(bucket) == []  # nothing written


def test_local_store_base_path_to_dict_validate(tmp_path: Path) -> None:
    store = cas.LocalArtifactStore(base_path=str(tmp_path / "store"))
    store.save(b"v", "k")
    assert store.base_path == str(tmp_path / "store")
    config = store.to_dict()
    assert config["type"] == "LocalArtifactStore"
    assert cas.store_from_dict(config).load("k") == b"v"
    assert store.validate() is True
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    assert validate_root(open_storage(str(tmp_path / "other"))) is False
    assert validate_root(open_storage(str(tmp_path / "empty-yet"))) is True
    assert not (tmp_path / "empty-yet").exists()
