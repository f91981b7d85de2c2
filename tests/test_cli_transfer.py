"""push/pull (``cas.admin.transfer``) in process: between two local roots and a local root and
``memory://``, with chunked content, folders, lineage, tags, resumption, corruption and
ref conflicts. The command line around it is tested in test_cli.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas
from cas.admin import transfer
from cas.api.artifact_store import ArtifactStore
from cas.objects.space import object_path

pytestmark = pytest.mark.usefixtures("fresh_cache")


@pytest.fixture
def src(tmp_path: Path) -> Iterator[ArtifactStore]:
    with cas.open_store(tmp_path / "src", fsync=False) as store:
        yield store


@pytest.fixture(params=["local", "memory"])
def dst(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    url = str(tmp_path / "dst") if request.param == "local" else f"memory://t-{uuid.uuid4().hex}"
    with cas.open_store(url, fsync=False) as store:
        yield store


def _fill(store: ArtifactStore, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "model"
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "w.bin").write_bytes(os.urandom(3000))
    (folder / "deep" / "er" / "c.json").write_text("{}")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 << 20) + b"tail")  # above the 4 MiB threshold: chunked
    ids = {"raw": store.save(b"raw rows", "data/raw")}
    ids["big"] = store.save(big, "data/big", parent_ids=[ids["raw"]])
    ids["model"] = store.save(folder, "models/fraud", parent_ids=[ids["big"]], tags={"t": "1"})
    store.catalog.tag(ids["model"], stage="production")
    ids["json"] = store.save({"auc": 0.9}, "metrics/fraud", parent_ids=[ids["model"]])
    return ids


def _objects(store: ArtifactStore) -> set[str]:
    return set(store.space)


def test_round_trip(src: ArtifactStore, dst: ArtifactStore, tmp_path: Path) -> None:
    ids = _fill(src, tmp_path)
    result = transfer.transfer(src, dst, message="push")
    assert {u.name: u.status for u in result.refs} == {
        "data/big": "new", "data/raw": "new", "metrics/fraud": "new", "models/fraud": "new"
    }  # fmt: skip
    assert result.records == 4 and not result.conflicts
    # Exactly the source's objects (chunk lists and chunks included), all verified.
    assert _objects(dst) == _objects(src)
    assert dst.list_artifacts() == src.list_artifacts()
    for name in src.list_artifacts():
        assert dst.get_metadata(name) == src.get_metadata(name)
    assert (
        dst.load("data/big", dest=tmp_path / "out").read_bytes()
        == (tmp_path / "big.bin").read_bytes()
    )
    assert (
        dst.load("models/fraud", dest=tmp_path / "m") / "deep" / "er" / "c.json"
    ).read_text() == "{}"
    assert [a.id for a in dst.catalog.search("stage:production")] == [ids["model"]]
    assert [a.id for a in dst.catalog.get_lineage(ids["json"], depth=None)["parents"]] == [
        ids["model"], ids["big"], ids["raw"]
    ]  # fmt: skip
    assert dst.refs.log("models/fraud")[0].message == "push"
    # The destination's catalog is durable: a rebuild from its object space agrees.
    assert dst.reindex()["changed"] == {}

    # Nothing left to send; a later tag travels on its own.
    src.catalog.tag(ids["raw"], stage="gold")
    again = transfer.transfer(src, dst)
    assert again.objects == 0 and {u.status for u in again.refs} == {"up-to-date"}
    assert dst.get_metadata("data/raw")["tags"] == {"stage": "gold"}

    # Pull back into a fresh store: same objects.
    with cas.open_store(tmp_path / "third", fsync=False) as third:
        transfer.transfer(dst, third, ["models"])  # a folder of names
        assert third.list_artifacts() == ["models/fraud"]
        assert third.catalog.get(ids["raw"]) is not None  # parents' records came too
        assert third.load(ids["raw"]) == b"raw rows"


def test_selected_names_and_missing_name(
    src: ArtifactStore, dst: ArtifactStore, tmp_path: Path
) -> None:
    _fill(src, tmp_path)
    result = transfer.transfer(src, dst, ["data/raw"])
    assert [u.name for u in result.refs] == ["data/raw"] and dst.list_artifacts() == ["data/raw"]
    assert result.objects == 2  # the record and its blob
    with pytest.raises(cas.ObjectNotFound, match="no artifact named 'nope'"):
        transfer.transfer(src, dst, ["nope"])
    with pytest.raises(cas.InvalidRefName):
        transfer.transfer(src, dst, ["a..b"])


def test_interrupted_transfer_resumes(
    src: ArtifactStore, dst: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(src, tmp_path)
    real = transfer._Copier._put

    def fail_on_records(self: transfer._Copier, kind: str, oid: str, payload: bytes) -> int:
        if kind == "record":
            raise OSError("connection reset")
        return real(self, kind, oid, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(transfer._Copier, "_put", fail_on_records)
    with pytest.raises(OSError, match="connection reset"):
        transfer.transfer(src, dst)
    assert dst.list_artifacts() == []  # no ref moved, nothing indexed
    arrived = _objects(dst)
    assert arrived and arrived < _objects(src)
    monkeypatch.setattr(transfer._Copier, "_put", real)
    copied: list[str] = []
    monkeypatch.setattr(transfer._Copier, "_check", lambda self, oid, got: copied.append(oid))
    resumed = transfer.transfer(src, dst)
    assert set(copied) == {rid for _, rid in src.refs.items()}  # only the records were left
    assert resumed.objects == 4 and _objects(dst) == _objects(src)


def test_corrupt_source_stops_before_refs_move(
    src: ArtifactStore, dst: ArtifactStore, tmp_path: Path
) -> None:
    ids = _fill(src, tmp_path)
    content = src.get_metadata(ids["raw"])["content_id"]
    path = Path(src.storage.root) / object_path(content)
    body = bytearray(path.read_bytes())
    body[-1] ^= 0x01
    os.chmod(path, 0o644)
    path.write_bytes(bytes(body))
    with pytest.raises(cas.IntegrityError, match=content):
        transfer.transfer(src, dst)
    assert dst.list_artifacts() == [] and content not in _objects(dst)


def test_conflicts_fast_forward_and_force(src: ArtifactStore, dst: ArtifactStore) -> None:
    v1 = src.save(b"v1", "m")
    transfer.transfer(src, dst)
    v2 = src.save(b"v2", "m")
    assert transfer.transfer(src, dst).refs[0].status == "updated"  # dst's v1 is in src's history
    mine = dst.save(b"dst's own", "m")
    v3 = src.save(b"v3", "m")
    result = transfer.transfer(src, dst)
    assert [u.status for u in result.refs] == ["rejected"] and result.conflicts
    assert mine[:12] in result.refs[0].reason and dst.refs.read("m") == mine
    # A rejected name's new version is not copied, nor listed there as a version of "m".
    assert result.objects == 0 and not dst.space.has(v3) and dst.catalog.get(v3) is None
    forced = transfer.transfer(src, dst, force=True)
    assert forced.refs[0].status == "forced" and dst.refs.read("m") == v3
    assert [e.new for e in dst.refs.log("m")][:2] == [v3, mine]
    assert {v1, v2} <= {e.new for e in dst.refs.log("m")}
    # The other way, src never held dst's "mine", but dst has moved on from it: forward.
    assert transfer.transfer(dst, src).refs[0].status == "up-to-date"
