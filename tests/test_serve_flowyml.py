"""FlowyML's own catalog client, and a real FlowyML pipeline, against ``cas serve``.

FlowyML's executor swallows every exception of its catalog registration, so nothing
here trusts "the run passed": every check reads what landed in the cas store.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flowyml.storage.catalog.backend import CatalogEntry
from flowyml.storage.catalog.remote_backend import RemoteCatalogBackend

import cas
from cas.serve.testing import Running, running

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[Running, pathlib.Path]]:
    root = tmp_path / "store"
    store = cas.open_store(str(root), fsync=False)
    with running(store, "flowyml-token") as srv:
        yield srv, root
    store.close()


def backend(srv: Running, key: str | None = "flowyml-token") -> RemoteCatalogBackend:
    return RemoteCatalogBackend(endpoint=srv.url + "/flowyml/v1", api_key=key, timeout=30)


def entry(**fields: Any) -> CatalogEntry:
    return CatalogEntry(**fields)


def test_remote_backend_register_get_tag_search_lineage_by_hash(
    served: tuple[Running, pathlib.Path],
) -> None:
    srv, root = served
    client = backend(srv)
    raw_id = str(uuid.uuid4())  # FlowyML's local backend makes uuids: they must survive
    sha = hashlib.sha256(b"rows").hexdigest()
    raw = entry(artifact_id=raw_id, name="datasets/raw", artifact_type="Dataset",
                content_hash=sha, source_step="load", source_run_id="run-1",
                source_pipeline="fraud_pipe", tags={"team": "fraud"},
                metadata={"rows": 10, "cols": ["a", "b"]}, uri="s3://bucket/raw.parquet",
                version="1.0")  # fmt: skip
    assert client.register(raw) == raw_id
    child = entry(name="models/clf", artifact_type="Model", parent_ids=[raw_id],
                  source_step="train", source_run_id="run-1", source_pipeline="fraud_pipe")  # fmt: skip
    child_id = client.register(child)
    assert HEX64.match(child_id)  # no id sent: cas's record id is the answer

    got = client.get(raw_id)
    assert got is not None
    for field in ("artifact_id", "name", "artifact_type", "content_hash", "source_step",
                  "source_run_id", "source_pipeline", "tags", "metadata", "uri", "version"):  # fmt: skip
        assert getattr(got, field) == getattr(raw, field), field
    assert got.created_at.startswith("20")
    assert client.get(child_id).parent_ids == [raw_id]  # type: ignore[union-attr]
    assert client.get("no-such-id") is None

    client.tag(child_id, {"stage": "production"})
    client.tag(raw_id, {"team": "risk"})
    assert client.get(child_id).tags == {"stage": "production"}  # type: ignore[union-attr]
    assert client.get(raw_id).tags == {"team": "risk"}  # type: ignore[union-attr]

    assert [e.artifact_id for e in client.search("stage:production")] == [child_id]
    assert [e.artifact_id for e in client.search("clf")] == [child_id]
    assert {e.artifact_id for e in client.search("")} == {raw_id, child_id}
    with pytest.raises(RuntimeError, match="400"):
        client.search('stage:"unbalanced')

    down = client.get_lineage(raw_id)
    assert down["artifact"]["artifact_id"] == raw_id
    assert [c["artifact_id"] for c in down["children"]] == [child_id] and down["parents"] == []
    up = client.get_lineage(child_id)
    assert [p["artifact_id"] for p in up["parents"]] == [raw_id]

    found = client.find_by_content_hash(sha)
    assert found is not None and found.artifact_id == raw_id
    assert client.find_by_content_hash("0" * 64) is None

    assert [e.artifact_id for e in client.list_artifacts(artifact_type="Model")] == [child_id]
    assert [e.artifact_id for e in client.list_artifacts(source_step="load")] == [raw_id]
    assert {e.artifact_id for e in client.list_artifacts(source_pipeline="fraud_pipe")} == {
        raw_id,
        child_id,
    }
    assert [e.artifact_id for e in client.list_artifacts(tags={"team": "risk"})] == [raw_id]
    assert client.list_artifacts(tags={"team": "nobody"}) == []

    # What landed in cas: real records, a real lineage edge, FlowyML's ids as tags.
    store = cas.open_store(str(root))
    meta = store.get_metadata("datasets/raw")
    assert meta["content_id"] is None and meta["type"] == "Dataset"
    assert meta["tags"] == {
        "team": "risk",
        "flowyml.artifact_id": raw_id,
        "flowyml.content_hash": sha,
    }
    assert meta["metadata"]["rows"] == 10
    assert meta["metadata"]["_flowyml"] == {"uri": "s3://bucket/raw.parquet", "version": "1.0"}
    assert meta["source_pipeline"] == "fraud_pipe" and meta["source_run_id"] == "run-1"
    clf = store.get_metadata("models/clf")
    assert clf["id"] == child_id and clf["parent_ids"] == [meta["id"]]
    lineage = store.catalog.get_lineage(child_id)
    assert [a.id for a in lineage["parents"]] == [meta["id"]]
    assert [a.id for a in store.catalog.search("stage:production")] == [child_id]
    store.close()


def test_re_registering_an_id_answers_the_newest(served: tuple[Running, pathlib.Path]) -> None:
    srv, _ = served
    client = backend(srv)
    fid = "plain-id-7"
    client.register(entry(artifact_id=fid, name="n", artifact_type="Model", metadata={"v": 1}))
    client.register(entry(artifact_id=fid, name="n", artifact_type="Model", metadata={"v": 2}))
    assert client.get(fid).metadata == {"v": 2}  # type: ignore[union-attr]


def test_writes_need_the_token(served: tuple[Running, pathlib.Path]) -> None:
    srv, root = served
    e = entry(name="sneaky", artifact_type="Model")
    with pytest.raises(RuntimeError, match="401"):
        backend(srv, None).register(e)
    with pytest.raises(RuntimeError, match="403"):
        backend(srv, "not-the-token").register(e)
    ok_id = backend(srv).register(entry(name="fine", artifact_type="Model"))
    with pytest.raises(RuntimeError, match="403"):
        backend(srv, "not-the-token").tag(ok_id, {"stage": "x"})
    assert backend(srv, None).get(ok_id) is not None  # reads are open on loopback
    store = cas.open_store(str(root))
    assert store.list_artifacts() == ["fine"]
    assert store.get_metadata("fine")["tags"] == {}
    store.close()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"artifact_type": "Model"}, "name"),
        ({"name": "bad..name", "artifact_type": "Model"}, "name"),
        ({"name": "x", "parent_ids": ["never-registered"]}, "parent"),
        ({"name": "x", "tags": {"flowyml.artifact_id": "forged"}}, "kept"),
        ({"name": "x", "tags": ["not", "a", "dict"]}, "tags"),
        ({"name": "x", "metadata": "nope"}, "metadata"),
        ({"name": "y" * 500}, "480"),
        ([1, 2], "object"),
    ],
)
def test_bad_registrations_are_400(
    served: tuple[Running, pathlib.Path], body: Any, needle: str
) -> None:
    srv, root = served
    r = httpx.post(srv.url + "/flowyml/v1/artifacts", json=body,
                   headers={"Authorization": "Bearer flowyml-token"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]
    assert cas.open_store(str(root)).list_artifacts() == []


def test_flowyml_pipeline_registers_in_cas(
    served: tuple[Running, pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, root = served
    monkeypatch.chdir(tmp_path)  # FlowyML writes .flowyml/ in the working directory
    monkeypatch.setenv("FLOWYML_CATALOG_ENDPOINT", srv.url + "/flowyml/v1")
    monkeypatch.setenv("FLOWYML_CATALOG_API_KEY", srv.token)
    from flowyml import Pipeline, step

    @step(outputs=["data"], cache=False)
    def load_rows() -> dict[str, Any]:
        return {"rows": [1, 2, 3]}

    @step(inputs=["data"], outputs=["model"], cache=False)
    def fit_model(data: dict[str, Any]) -> dict[str, Any]:
        return {"weight": sum(data["rows"])}

    pipeline = Pipeline("cas_serve_demo")
    pipeline.add_step(load_rows)
    pipeline.add_step(fit_model)
    pipeline.run()

    store = cas.open_store(str(root))
    assert store.list_artifacts() == ["fit_model_output", "load_rows_output"]
    fit = store.get_metadata("fit_model_output")
    load = store.get_metadata("load_rows_output")
    assert (fit["source_step"], load["source_step"]) == ("fit_model", "load_rows")
    assert fit["source_pipeline"] == load["source_pipeline"] and fit["source_pipeline"]
    assert fit["source_run_id"] == load["source_run_id"] and fit["source_run_id"]
    assert fit["type"] == "dict" and fit["content_id"] is None
    # FlowyML hashes json.dumps(value, sort_keys=True, default=str) with SHA-256
    want = hashlib.sha256(
        json.dumps({"weight": 6}, sort_keys=True, default=str).encode()
    ).hexdigest()
    assert fit["tags"]["flowyml.content_hash"] == want
    # FlowyML's client finds them again through the server
    again = backend(srv).find_by_content_hash(want)
    assert again is not None and again.artifact_id == fit["id"] and again.name == "fit_model_output"
    assert [a.id for a in store.catalog.search(f"flowyml.content_hash:{want}")] == [fit["id"]]
    store.close()
