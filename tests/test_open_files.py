"""store.open (one file of a folder artifact, verified), list_files, history,
catalog.find_by_content: what scripts, cas:// and cas serve read through."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

import cas


@pytest.fixture
def store(tmp_path: Path) -> cas.ArtifactStore:
    return cas.open_store(tmp_path / "store", fsync=False)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    return root


def test_open_one_file_of_a_folder(store: cas.ArtifactStore, tmp_path: Path) -> None:
    store.save(_folder(tmp_path), "data/images")
    with store.open("data/images", path="sub/b.bin") as f:
        assert f.read() == bytes(range(256)) * 64
    with store.open("data/images", path="/a.txt") as f:
        assert f.read() == b"alpha"
    with pytest.raises(cas.ObjectNotFound, match="no file 'sub/zz'"):
        store.open("data/images", path="sub/zz")
    with pytest.raises(cas.IsAFolder):
        store.open("data/images", path="sub")
    with pytest.raises(cas.IsAFolder):
        store.open("data/images")


def test_open_bytes_artifact_by_name_and_id(store: cas.ArtifactStore) -> None:
    aid = store.save(b"x" * 10_000, "raw")
    for ref in ("raw", aid):
        with store.open(ref) as f:
            assert f.read() == b"x" * 10_000
    with pytest.raises(cas.ObjectNotFound):
        store.open("raw", path="inside")


def test_open_detects_a_corrupt_file(store: cas.ArtifactStore, tmp_path: Path) -> None:
    store.save(_folder(tmp_path), "data/images")
    entry = next(e for e in store.list_files("data/images") if e["name"] == "a.txt")
    obj = Path(store.url) / "objects" / entry["id"][:2] / entry["id"][2:]
    raw = bytearray(obj.read_bytes())
    raw[-1] ^= 1
    obj.chmod(0o644)
    obj.write_bytes(bytes(raw))
    with pytest.raises(cas.IntegrityError):
        store.open("data/images", path="a.txt").read()


def test_list_files(store: cas.ArtifactStore, tmp_path: Path) -> None:
    store.save(_folder(tmp_path), "data/images")
    top = {e["name"]: e for e in store.list_files("data/images")}
    assert top["a.txt"]["type"] == "file" and top["a.txt"]["size"] == 5
    assert top["a.txt"]["id"] == blake3.blake3(b"alpha").hexdigest()
    assert top["sub"]["type"] == "directory" and top["sub"]["size"] is None
    sub = store.list_files("data/images", "sub")
    assert [(e["path"], e["size"]) for e in sub] == [("sub/b.bin", 256 * 64)]
    store.save(b"abc", "one")
    assert [e["size"] for e in store.list_files("one")] == [3]


def test_history_newest_first(store: cas.ArtifactStore) -> None:
    a = store.save(b"1", "m")
    b = store.save(b"2", "m")
    store.delete("m")
    got = [(h["old"], h["new"]) for h in store.history("m")]
    assert got == [(b, None), (a, b), (None, a)]


def test_find_by_content(store: cas.ArtifactStore) -> None:
    a = store.save(b"same", "x")
    b = store.save(b"same", "y")
    store.save(b"other", "z")
    cid = blake3.blake3(b"same").hexdigest()
    assert [x.id for x in store.catalog.find_by_content(cid)] == [b, a]
    assert store.catalog.find_by_content("0" * 64) == []
