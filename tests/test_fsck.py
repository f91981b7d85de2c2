"""fsck finds every injected fault and names the artifacts it affects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cas
from cas.admin import fsck
from cas.objects.ids import parse_id
from cas.objects.kinds import ChunkList
from cas.objects.space import object_path


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> cas.ArtifactStore:
    # Loose objects, as a store written before packs holds them (and as single small
    # saves still write them); faults inside packs: tests/test_packs.py.
    monkeypatch.setattr("cas.objects.batch.PACK_BYTES_FROM", 1 << 40)
    s = cas.open_store(str(tmp_path / "s"), fsync=False)
    s.save(b"small model", "models/small")
    s.save(os.urandom(9 << 20), "datasets/big")
    yield s
    s.close()


def _file(store: cas.ArtifactStore, oid: str) -> Path:
    path = Path(store.storage.root, object_path(parse_id(oid)))
    path.chmod(0o644)
    return path


def test_healthy_store_is_clean(store: cas.ArtifactStore) -> None:
    report = fsck.check(store)
    assert report.ok and report.objects > 5 and report.records == 2


def test_flipped_byte_is_named_with_its_artifact(store: cas.ArtifactStore) -> None:
    content = store.get_metadata("models/small")["content_id"]
    path = _file(store, content)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x40
    path.write_bytes(bytes(data))
    report = fsck.check(store)
    [problem] = report.problems
    assert problem.kind == "corrupt" and problem.object_id == content
    assert any("models/small" in a for a in problem.artifacts)


def test_truncated_and_missing_chunks(store: cas.ArtifactStore) -> None:
    content = store.get_metadata("datasets/big")["content_id"]
    chunks = ChunkList.parse(content, store.space.read_object(content)[1]).chunks
    _file(store, chunks[0][0]).write_bytes(b"CASO")  # truncated
    _file(store, chunks[1][0]).unlink()  # missing
    report = fsck.check(store)
    kinds = {(p.kind, p.object_id) for p in report.problems}
    assert ("corrupt", chunks[0][0]) in kinds and ("missing", chunks[1][0]) in kinds
    for p in report.problems:
        if p.object_id in (chunks[0][0], chunks[1][0]):
            assert any("datasets/big" in a for a in p.artifacts), p


def test_dangling_ref(store: cas.ArtifactStore) -> None:
    rid = store.get_metadata("models/small")["id"]
    _file(store, rid).unlink()
    report = fsck.check(store)
    assert {p.kind for p in report.problems} >= {"dangling-ref", "missing"}
    assert any("models/small" in p.detail for p in report.problems if p.kind == "dangling-ref")


def test_repair_quarantines_and_never_deletes(store: cas.ArtifactStore) -> None:
    content = store.get_metadata("models/small")["content_id"]
    path = _file(store, content)
    bad = bytearray(path.read_bytes())
    bad[-1] ^= 1
    path.write_bytes(bytes(bad))
    report = fsck.check(store, repair=True)
    assert report.quarantined == [content]
    assert Path(store.storage.root, "quarantine", content).read_bytes() == bytes(bad)
    assert not path.exists()
    # Re-saving the artifact's bytes heals the store.
    store.save(b"small model", "models/small-again")
    assert fsck.check(store).ok
    assert store.load("models/small") == b"small model"


def test_deleted_ref_file_is_put_back_from_its_history(
    store: cas.ArtifactStore,
) -> None:
    """A ref file deleted behind cas's back disagrees with the name's history, whose
    newest entry says what the name holds, and that entry's writer is gone: fsck settles
    it by rolling it forward (docs/reliability.md, "Settling what a dead writer left"),
    with no command to type; the name loads and moves again."""
    before = store.get_metadata("models/small")["id"]
    Path(store.storage.root, "refs", "models", "small").unlink()
    assert fsck.check(store, settle=0).ok
    assert store.get_metadata("models/small")["id"] == before
    assert store.load("models/small") == b"small model"
    store.save(b"small model v2", "models/small")
    assert store.load("models/small") == b"small model v2"


def test_damaged_ref_stops_gc_and_repair_puts_it_back_from_history(
    store: cas.ArtifactStore,
) -> None:
    """A ref file truncated behind cas's back: gc deletes nothing (it cannot know what
    the name held); ``fsck --repair`` keeps the damaged bytes in quarantine/ and puts the
    ref back from the name's history; the name loads and moves again."""
    from cas.admin import gc

    ref = Path(store.storage.root, "refs", "models", "small")
    ref.write_bytes(ref.read_bytes()[:20])
    with pytest.raises(gc.GcRefused, match="models/small"):
        gc.plan(store, grace=0)
    report = fsck.check(store, repair=True, settle=0)
    assert [p.kind for p in report.problems] == ["damaged-ref"]
    assert "refs/models/small" in report.quarantined
    assert Path(store.storage.root, "quarantine", "refs", "models", "small").exists()
    assert store.load("models/small") == b"small model"
    assert fsck.check(store, settle=0).ok
    gc.execute(store, gc.plan(store, grace=0))
    store.save(b"small model v2", "models/small")
    assert store.load("models/small") == b"small model v2"
    assert store.load("datasets/big")[:0] == b""
