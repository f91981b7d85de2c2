"""Packs (format 2): many objects in one write-once file found through its index.

What users rely on: a folder put, a large file's chunks, push/pull and batched saves
write a few packs instead of one file per object; every packed object reads back
verified against its id exactly as a loose one; ids do not change; a store of format
1 keeps its loose objects and gains packs; a pack without its index is invisible and
gc removes it; gc rewrites packs that hold garbage and what lives survives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import msgpack
import pytest

import cas
from cas.admin import fsck, gc, transfer
from cas.api.artifact_store import ArtifactStore
from cas.errors import IntegrityError, ObjectNotFound
from cas.objects import codec, packs
from cas.objects.ids import ObjectId
from cas.objects.kinds import pack as canonical
from cas.objects.space import MARKER, object_path

pytestmark = pytest.mark.usefixtures("fresh_cache")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ArtifactStore]:
    with cas.open_store(tmp_path / "store") as s:
        yield s


def _folder(root: Path, n: int = 300, size: int = 4096, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i:04d}.bin").write_bytes(os.urandom(size // 2) + bytes([seed]) * (size // 2))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "readme.txt").write_text(f"seed {seed}\n")
    return root


def _loose(store: ArtifactStore) -> set[str]:
    return {oid for oid, _ in store.space.iter_loose()}


def _pack_files(store: ArtifactStore) -> list[str]:
    return store.storage.listdir(packs.PACKS)


def test_folder_put_writes_one_pack_and_reads_back(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src")
    aid = store.save(src, "data/images")
    names = _pack_files(store)
    assert len([n for n in names if n.endswith(".pack")]) == 1
    assert len([n for n in names if n.endswith(".idx")]) == 1
    assert not _loose(store)  # 302 objects: none loose
    out = tmp_path / "out"
    store.load(aid, dest=out)
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes()
    # ids are unchanged: a file's content id is the b3sum of its bytes
    entry = next(e for e in store.list_files("data/images") if e["path"] == "f0007.bin")
    assert entry["id"] == blake3.blake3((src / "f0007.bin").read_bytes()).hexdigest()
    with store.open("data/images", path="f0007.bin") as f:
        assert f.read() == (src / "f0007.bin").read_bytes()


def test_the_pack_id_names_its_bytes_and_the_index_checks_itself(
    store: ArtifactStore, tmp_path: Path
) -> None:
    store.save(_folder(tmp_path / "src", 40), "d")
    (pack_name,) = [n for n in _pack_files(store) if n.endswith(".pack")]
    pack_id = pack_name[:-5]
    raw = store.storage.read(packs.pack_path(pack_id))
    assert raw.startswith(packs.PACK_MAGIC)
    assert blake3.blake3(raw).hexdigest() == pack_id
    index = store.storage.read(packs.index_path(pack_id))
    parsed = packs.PackIndex(pack_id, index)
    assert parsed.count == 44  # 40 files and sub/readme.txt, 2 trees, 1 record
    broken = bytearray(index)
    broken[100] ^= 1
    with pytest.raises(IntegrityError, match="corrupt"):
        packs.PackIndex(pack_id, bytes(broken))


def test_a_corrupt_packed_object_is_named_on_read_and_by_fsck(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = _folder(tmp_path / "src", 40)
    store.save(src, "d")
    victim = next(e for e in store.list_files("d") if e["path"] == "f0003.bin")["id"]
    where = store.space.packs.find(victim)
    assert where is not None
    path = Path(store.storage.local_dir or "") / packs.pack_path(where.pack)
    data = bytearray(path.read_bytes())
    data[where.offset + where.length - 5] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as info:
        store.space.get(victim)
    assert victim in str(info.value)
    report = fsck.check(store)
    assert not report.ok
    text = "\n".join(p.describe() for p in report.problems)
    assert victim in text and "d (" in text


def test_dedup_across_loose_and_packed(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 60)
    store.save(src, "a")
    before = sorted(_pack_files(store)), _loose(store)
    store.save(src, "b")  # same content: only a new record
    after = sorted(_pack_files(store)), _loose(store)
    assert after[0] == before[0]
    assert len(after[1] - before[1]) == 1  # the record of "b", loose
    one = src / "f0001.bin"
    store.save(one, "single")  # a packed blob is not written again loose
    new = _loose(store) - after[1]
    assert blake3.blake3(one.read_bytes()).hexdigest() not in new


def test_large_file_chunks_go_in_packs_and_stream_back(
    store: ArtifactStore, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 << 20))
    aid = store.save(big, "models/big")
    chunk_ids = [c for c, _ in store.space.packs.entries()]
    assert len(chunk_ids) > 20  # ~1 MiB chunks, packed
    pack_count = len([n for n in _pack_files(store) if n.endswith(".pack")])
    assert 1 <= pack_count <= 3  # 32 MiB packs
    with store.open(aid) as f:
        assert blake3.blake3(f.read()).hexdigest() == store.get_metadata(aid)["content_id"]
    with store.open(aid) as f:
        f.read(17 << 20)
        assert f.read(1000) == big.read_bytes()[17 << 20 : (17 << 20) + 1000]


def test_objects_read_together_are_each_their_own_bytes(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """A pack's objects read together (small ones in one range, large ones alone in a
    local file: :data:`cas.objects.pack_set.OWN_READ`) are each what a read of it
    alone returns, in the pack's order, whichever mix of sizes."""
    from cas.objects.pack_set import OWN_READ

    small = _folder(tmp_path / "small", n=6, size=2048)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 << 20))  # chunked
    with store.batch():
        store.save(small, "small")
        store.save(big, "big")
    space = store.space
    space.packs.refresh()
    wheres = sorted((w for _, w in space.packs.entries()), key=lambda w: (w.pack, w.offset))
    pack = wheres[0].pack
    mine = [w for w in wheres if w.pack == pack]
    assert {w.length >= OWN_READ for w in mine} == {True, False}
    for ask in (mine, mine[1::2], mine[::3], [w for w in mine if w.length < OWN_READ]):
        assert space.packs.read_many(ask) == [space.packs.read(w) for w in ask]


def test_a_pack_without_its_index_is_invisible_and_gc_removes_it(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = [os.urandom(100) for _ in range(20)]
    oids = [blake3.blake3(d).hexdigest() for d in data]
    stored = [(ObjectId(o), codec.encode("blob", d)) for o, d in zip(oids, data, strict=True)]
    pack_id, parts, _index = packs.build(stored)
    store.storage.write_atomic(packs.pack_path(pack_id), b"".join(parts))  # killed before the index
    store.space.packs.refresh()
    for oid in oids:
        assert not store.space.has(oid)
        with pytest.raises(ObjectNotFound):
            store.space.get(oid)
    # A writer may be about to write its index: even --grace 0 leaves a young one.
    assert packs.pack_path(pack_id) not in gc.plan(store, grace=0).temp_files
    then = time.time() - gc.TEMP_AGE - 60
    os.utime(Path(store.storage.root, packs.pack_path(pack_id)), (then, then))
    plan = gc.plan(store, grace=0)
    assert packs.pack_path(pack_id) in plan.temp_files
    gc.execute(store, plan)
    assert not store.storage.exists(packs.pack_path(pack_id))


def test_format_1_store_keeps_its_loose_objects_and_gains_packs(tmp_path: Path) -> None:
    root = tmp_path / "old"
    with cas.open_store(root) as s:
        old = s.save(b"written by format 1", "old")
    marker = msgpack.unpackb((root / MARKER).read_bytes(), raw=False)
    (root / MARKER).chmod(0o644)
    (root / MARKER).write_bytes(canonical({**marker, "format": 1}))
    with cas.open_store(root) as s:
        assert s.space.format == 1
        assert s.load("old") == b"written by format 1"
        s.save(_folder(tmp_path / "src", 30), "new")
        assert s.space.format == 2
    assert msgpack.unpackb((root / MARKER).read_bytes(), raw=False)["format"] == 2
    with cas.open_store(root) as s:
        assert s.load(old) == b"written by format 1"
        assert (
            Path(s.storage.local_dir or "") / object_path(s.get_metadata(old)["content_id"])
        ).exists()
        assert fsck.check(s).ok


def test_batch_publishes_names_after_its_one_sync_point(store: ArtifactStore) -> None:
    with store.batch():
        ids = [store.save(f"row {i}".encode(), f"rows/{i:03d}") for i in range(50)]
        assert not store.exists("rows/000")  # names move when the batch ends
        assert store.load(ids[3]) == b"row 3"  # by id, readable at once
    assert [store.load(f"rows/{i:03d}") for i in range(50)] == [
        f"row {i}".encode() for i in range(50)
    ]
    assert len([n for n in _pack_files(store) if n.endswith(".pack")]) == 1
    assert not _loose(store)  # 50 contents and 50 records in one pack
    assert fsck.check(store).ok


def test_a_batch_that_raises_publishes_nothing(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError), store.batch():
        store.save(b"never", "ghost")
        raise RuntimeError("the pipeline failed")
    assert not store.exists("ghost")
    assert store.list_artifacts() == []


def test_save_many_returns_ids_in_order_and_keeps_history(store: ArtifactStore) -> None:
    ids = store.save_many([(b"v1", "x"), ({"a": 1}, "y"), (b"v2", "x")])
    assert len(ids) == 3 and len(set(ids)) == 3
    assert store.load("x") == b"v2" and store.load("y") == {"a": 1}
    assert [h["new"] for h in store.history("x")][:2] == [ids[2], ids[0]]
    assert store.load(ids[0]) == b"v1"


def test_gc_rewrites_packs_that_hold_garbage(store: ArtifactStore, tmp_path: Path) -> None:
    keep_src = _folder(tmp_path / "keep", 50, seed=1)
    drop_src = _folder(tmp_path / "drop", 50, seed=2)
    with store.batch():  # both folders in one pack
        store.save(keep_src, "keep")
        store.save(drop_src, "drop")
    (old_pack,) = [n[:-5] for n in _pack_files(store) if n.endswith(".pack")]
    store.delete("drop")
    plan = gc.plan(store, grace=0, retention=0)
    assert plan.repack == (old_pack,)
    assert len(plan.pack_garbage) >= 51
    result = gc.execute(store, plan)
    assert result.deleted >= 51 and result.bytes_freed > 50 * 2048
    assert not store.storage.exists(packs.pack_path(old_pack))
    out = tmp_path / "out"
    store.load("keep", dest=out)
    assert (out / "f0010.bin").read_bytes() == (keep_src / "f0010.bin").read_bytes()
    assert fsck.check(store).ok
    assert gc.plan(store, grace=0, retention=0).summary()["to_delete"] == 0


def test_gc_keeps_a_pack_a_writer_relied_on(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 30)
    store.save(src, "a")
    store.delete("a")
    plan = gc.plan(store, grace=0, retention=0)
    assert plan.repack
    store.save(src, "again")  # a dedup hit refreshes the pack, and a new root reaches it
    gc.execute(store, plan)
    out = tmp_path / "out"
    store.load("again", dest=out)
    assert (out / "f0001.bin").read_bytes() == (src / "f0001.bin").read_bytes()
    assert fsck.check(store).ok


def test_push_and_pull_write_packs(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 200)
    for i in range(3):
        store.save(f"small {i}".encode(), f"s/{i}")  # loose at the source
    store.save(src, "data")
    with cas.open_store(tmp_path / "dst") as dst:
        transfer.transfer(store, dst)
        assert len([n for n in _pack_files(dst) if n.endswith(".pack")]) == 1
        assert not _loose(dst)
        out = tmp_path / "out"
        dst.load("data", dest=out)
        assert (out / "f0100.bin").read_bytes() == (src / "f0100.bin").read_bytes()
        assert dst.load("s/2") == b"small 2"
        assert fsck.check(dst).ok


def _pack_of(store: ArtifactStore) -> str:
    (name,) = [n for n in _pack_files(store) if n.endswith(".pack")]
    return name[:-5]


def test_fsck_repair_salvages_a_pack_keeping_what_verifies(
    store: ArtifactStore, tmp_path: Path
) -> None:
    src = _folder(tmp_path / "src", 40)
    store.save(src, "d")
    store.save(b"loose and fine", "other")
    victim = next(e for e in store.list_files("d") if e["path"] == "f0003.bin")["id"]
    where = store.space.packs.find(victim)
    assert where is not None
    path = Path(store.storage.local_dir or "") / packs.pack_path(where.pack)
    data = bytearray(path.read_bytes())
    data[where.offset + where.length - 5] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    report = fsck.check(store)
    kinds = {p.kind for p in report.problems}
    assert {"corrupt", "damaged-pack"} <= kinds  # the object, and the pack's own hash
    repaired = fsck.check(store, repair=True)
    assert victim in repaired.quarantined
    assert any("rewritten to a new pack" in line for line in repaired.repaired)
    assert (Path(store.storage.local_dir or "") / "quarantine" / victim).exists()
    # every other file of the folder still reads; only the damaged one is missing
    with store.open("d", path="f0004.bin") as f:
        assert f.read() == (src / "f0004.bin").read_bytes()
    with pytest.raises(ObjectNotFound):
        store.space.get(victim)
    after = fsck.check(store)
    assert {p.kind for p in after.problems} == {"missing"}
    assert any("d (" in a for p in after.problems for a in p.artifacts)
    assert store.load("other") == b"loose and fine"


def test_fsck_rebuilds_a_damaged_index_from_its_pack(store: ArtifactStore, tmp_path: Path) -> None:
    src = _folder(tmp_path / "src", 40)
    store.save(src, "d")
    pack_id = _pack_of(store)
    idx = Path(store.storage.local_dir or "") / packs.index_path(pack_id)
    idx.chmod(0o644)
    idx.write_bytes(idx.read_bytes()[:-7])  # truncated
    with cas.open_store(store.url) as fresh:
        report = fsck.check(fresh)
        damaged = [p for p in report.problems if p.kind == "damaged-pack"]
        assert damaged and damaged[0].object_id == pack_id
        assert any("d (" in a for a in damaged[0].artifacts)
        fsck.check(fresh, repair=True)
        assert fsck.check(fresh).ok
        out = tmp_path / "out"
        fresh.load("d", dest=out)
        assert (out / "f0010.bin").read_bytes() == (src / "f0010.bin").read_bytes()


def test_gc_pack_moves_loose_objects_that_live_into_packs(
    store: ArtifactStore, tmp_path: Path
) -> None:
    ids = [store.save(f"small {i}".encode(), f"s/{i}") for i in range(30)]  # loose
    store.save(b"gone soon", "gone")
    store.delete("gone")
    loose_before = _loose(store)
    assert len(loose_before) >= 60
    plan = gc.plan(store, grace=0, retention=0, pack_loose_from=10)
    assert len(plan.to_pack) == 60  # 30 contents and 30 records; not the garbage
    assert len(gc.plan(store, grace=0, retention=0).to_pack) == 0  # only when asked
    result = gc.execute(store, plan)
    assert result.packed == 60
    assert len(_loose(store)) == 0  # packed, or deleted as garbage
    with cas.open_store(store.url) as fresh:  # another process finds them in the pack
        assert [fresh.load(i) for i in ids] == [f"small {i}".encode() for i in range(30)]
        assert fsck.check(fresh).ok
    # below the threshold, loose objects stay loose
    store.save(b"one more", "more")
    assert len(gc.plan(store, grace=0, pack_loose_from=10).to_pack) == 0
