"""The public API as users call it: `import cas` only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.testing.strategies import load_profile

load_profile()


@pytest.fixture
def store(tmp_path: Path) -> cas.ArtifactStore:
    s = cas.open_store(str(tmp_path / "store"), fsync=False)
    yield s
    s.close()


def test_all_is_the_contract() -> None:
    expected = {
        "ArtifactStore", "LocalArtifactStore", "S3ArtifactStore", "GCSArtifactStore",
        "AzureArtifactStore", "ArtifactCatalog", "Artifact", "open_store", "CasError",
        "ObjectNotFound", "IntegrityError", "InvalidRefName",
    }  # fmt: skip
    assert expected <= set(cas.__all__)
    for name in cas.__all__:
        assert hasattr(cas, name), name
    assert issubclass(cas.ObjectNotFound, cas.CasError) and issubclass(cas.ObjectNotFound, KeyError)
    assert issubclass(cas.IntegrityError, cas.CasError)
    assert issubclass(cas.InvalidRefName, cas.CasError) and issubclass(cas.InvalidRefName, ValueError)


def test_save_load_by_name_and_id(store: cas.ArtifactStore) -> None:
    aid = store.save(b"weights", "models/fraud", metadata={"auc": 0.91})
    assert len(aid) == 64
    assert store.load("models/fraud") == store.load(aid) == b"weights"
    assert store.exists("models/fraud") and store.exists(aid)
    assert store.size("models/fraud") == store.size(aid) == 7
    meta = store.get_metadata("models/fraud")
    assert meta["id"] == aid and meta["name"] == "models/fraud"
    assert meta["content_id"] == blake3.blake3(b"weights").hexdigest()
    assert meta["metadata"] == {"auc": 0.91} and meta["type"] == "bytes"
    assert store.list_artifacts() == ["models/fraud"]
    assert store.list_artifacts("models/") == ["models/fraud"]
    assert store.list_artifacts("data") == []


def test_same_bytes_under_two_names_are_stored_once(store: cas.ArtifactStore) -> None:
    data = os.urandom(50_000)
    store.save(data, "a")
    before = set(store.space)
    store.save(data, "b")
    new = set(store.space) - before
    assert len(new) == 1  # the record, not the content
    assert store.space.kind(new.pop()) == "record"
    assert store.get_metadata("a")["content_id"] == store.get_metadata("b")["content_id"]


def test_saving_the_same_thing_twice_is_idempotent(store: cas.ArtifactStore) -> None:
    first = store.save({"x": 1}, "cfg", metadata={"v": 1})
    assert store.save({"x": 1}, "cfg", metadata={"v": 1}) == first
    second = store.save({"x": 2}, "cfg", metadata={"v": 1})
    assert second != first
    assert [a.id for a in store.catalog.versions("cfg")] == [second, first]
    assert store.load("cfg") == {"x": 2} and store.load(first) == {"x": 1}


def test_delete_removes_name_and_record_but_not_content(store: cas.ArtifactStore) -> None:
    aid = store.save(b"data", "tmp/x")
    store.delete("tmp/x")
    assert not store.exists("tmp/x")
    assert store.catalog.get(aid) is None
    assert store.space.has(blake3.blake3(b"data").hexdigest())  # until gc
    with pytest.raises(cas.ObjectNotFound) as info:
        store.load("tmp/x")
    assert "tmp/x" in str(info.value)


def test_materialize_returns_a_loadable_run_name(store: cas.ArtifactStore) -> None:
    name = store.materialize([1, 2, 3], "metrics", run_id="r42", step_name="eval", project_name="fraud")
    assert name == "runs/fraud/r42/eval/metrics"
    assert store.load(name) == [1, 2, 3]
    meta = store.get_metadata(name)
    assert (meta["source_project"], meta["source_run_id"], meta["source_step"]) == ("fraud", "r42", "eval")
    assert store.materialize([1], "m", "r1", "s") == "runs/default/r1/s/m"


@pytest.mark.parametrize("bad", ["", "a..b", "/abs", "a//b", "a b", "x.lock", ".hidden", "a\\b", "a:b", "../up"])
def test_invalid_name_is_refused_before_anything_is_written(store: cas.ArtifactStore, bad: str) -> None:
    before = set(store.space)
    with pytest.raises(cas.InvalidRefName):
        store.save(b"never written", bad)
    assert set(store.space) == before


def test_missing_name_and_id(store: cas.ArtifactStore) -> None:
    with pytest.raises(cas.ObjectNotFound, match="nope"):
        store.load("nope")
    with pytest.raises(KeyError):
        store.get_metadata("0" * 64)
    assert not store.exists("0" * 64)


def test_corrupt_content_names_object_and_artifact(store: cas.ArtifactStore) -> None:
    aid = store.save(b"precious model weights" * 100, "models/m")
    content = store.get_metadata(aid)["content_id"]
    path = Path(store.storage.root, "objects", content[:2], content[2:])
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(cas.IntegrityError) as info:
        store.load("models/m")
    assert content in str(info.value) and "models/m" in str(info.value)


def test_pickle_only_when_allowed(tmp_path: Path) -> None:
    class Thing:
        pass

    safe = cas.open_store(str(tmp_path / "s"))
    with pytest.raises(cas.MaterializerError, match="allow_pickle"):
        safe.save(Thing(), "thing")
    with pytest.raises(cas.MaterializerError):
        safe.save((1, 2), "tuple")  # a tuple would come back as a list from JSON
    trusting = cas.open_store(str(tmp_path / "s"), allow_pickle=True)
    trusting.save((1, 2), "tuple")
    assert trusting.load("tuple") == (1, 2)
    with pytest.raises(cas.MaterializerError, match="allow_pickle"):
        cas.open_store(str(tmp_path / "s")).load("tuple")


@given(data=st.binary(max_size=10_000))
def test_content_id_is_b3sum_of_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    store = cas.open_store(str(tmp_path_factory.mktemp("s") / "s"), fsync=False)
    store.save(data, "blob")
    assert store.get_metadata("blob")["content_id"] == blake3.blake3(data).hexdigest()
    assert store.load("blob") == data
    store.close()


def test_catalog_register_search_tag_lineage(store: cas.ArtifactStore) -> None:
    cat = store.catalog
    assert isinstance(cat, cas.ArtifactCatalog)
    raw = cat.register("data/raw", "dataset", data=b"rows", source_pipeline="etl", tags={"team": "fraud"})
    feat = cat.register("data/features", "dataset", parent_ids=[raw], source_run_id="r1", source_step="fe")
    model = store.save(b"m", "models/fraud_detector", parent_ids=[feat], tags={"team": "fraud"})
    cat.tag(model, stage="production")
    a = cat.get(model)
    assert a is not None and a.name == a["name"] == "models/fraud_detector"
    assert a.tags == {"team": "fraud", "stage": "production"} and a.to_dict()["id"] == model
    assert [x.id for x in cat.search("stage:production team:fraud fraud")] == [model]
    assert [x.id for x in cat.search("detector")] == [model]
    assert cat.search("stage:staging") == []
    assert [x.id for x in cat.list(artifact_type="dataset")] == [feat, raw]
    assert store.load(raw) == b"rows"
    lineage = cat.get_lineage(feat)
    assert [p.id for p in lineage["parents"]] == [raw] and [c.id for c in lineage["children"]] == [model]
    deep = cat.get_lineage(model, depth=None)
    assert {p.id for p in deep["parents"]} == {raw, feat}
    graph = cat.lineage_graph(model, format="mermaid")
    assert "data/raw" in graph and "models/fraud_detector" in graph
    assert "digraph" in cat.lineage_graph(model, format="dot")
    with pytest.raises(cas.QueryError):
        cat.search('team:"unbalanced')
    assert cat.delete(feat) is True
    assert cat.get(feat) is None and not store.exists("data/features")


def test_reindex_reproduces_answers(store: cas.ArtifactStore) -> None:
    cat = store.catalog
    ids = [store.save(f"value {i}", f"items/{i}", tags={"k": str(i % 3)}) for i in range(12)]
    child = cat.register("items/child", "derived", parent_ids=ids[:3])
    cat.tag(ids[4], k="2", stage="prod")
    store.delete("items/5")
    queries = ["k:2", "stage:prod", "items", "k:0 value"]
    before = ([[a.id for a in cat.search(q)] for q in queries], [a.id for a in cat.list()],
              cat.get_lineage(child, depth=None), cat.get(ids[4]))  # fmt: skip
    index = Path(store.storage.root, "index")
    store.close()
    shutil.rmtree(index)
    again = cas.open_store(str(Path(store.storage.root)))
    c2 = again.catalog
    after = ([[a.id for a in c2.search(q)] for q in queries], [a.id for a in c2.list()],
             c2.get_lineage(child, depth=None), c2.get(ids[4]))  # fmt: skip
    assert after == before
    report = again.reindex()
    assert report["changed"] == {}
    again.close()
