"""Multi-pack indexes on S3: a new machine finds a packed object after one listing and
one read, not one read per pack; and what keeps them honest (a damaged one, a pack gc
removed, a pack removed behind their back).

Each "process" is a store opened anew; ``CAS_CACHE_DIR`` says which machine it runs on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cas
from cas.admin import fsck, gc
from cas.errors import IntegrityError, ObjectNotFound
from cas.objects import multipack, packs
from cas.objects.ids import ObjectId
from cas.testing.servers import Server, s3_calls

pytestmark = pytest.mark.slow

FOLDERS = 20  # one pack each: more than multipack.WRITE_FROM
FILES = 20  # small files: a folder of more than 16 new objects is packed


def _folder(path: Path, seed: int) -> Path:
    path.mkdir(parents=True)
    rng = random.Random(seed)
    for i in range(FILES):
        (path / f"f{i:02d}.bin").write_bytes(rng.randbytes(512))
    return path


def _machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    cache = tmp_path / f"machine-{name}"
    monkeypatch.setenv("CAS_CACHE_DIR", str(cache))
    return cache


class _Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, op: str, params: dict[str, Any]) -> str:
        self.calls.append((op, str(params.get("Key") or params.get("Prefix"))))
        return op

    def listings(self) -> list[str]:
        return [key for op, key in self.calls if op == "ListObjectsV2"]

    def index_reads(self) -> list[str]:
        return [
            key
            for op, key in self.calls
            if op == "GetObject" and key.endswith((".idx", multipack.SUFFIX))
        ]


@pytest.fixture
def url(s3_server: Server) -> str:
    return s3_server.url(s3_server.new_bucket(), "store")


@pytest.fixture
def saved(
    url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Path]]:
    """``FOLDERS`` folders saved from machine "a", each its own pack, and a listing
    made on machine "w" (which writes the multi-pack index)."""
    _machine(monkeypatch, tmp_path, "a")
    folders = {f"set/{i:02d}": _folder(tmp_path / f"src{i:02d}", seed=i) for i in range(FOLDERS)}
    with cas.open_store(url, **s3_server.storage_options) as writer:
        for name, src in folders.items():
            writer.save(src, name)
    _machine(monkeypatch, tmp_path, "w")
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        store.space.packs.refresh()
        assert len(store.space.packs.ids()) >= FOLDERS
        assert _midx_names(store), "a listing of many uncovered packs writes one"
    yield folders


def test_a_writer_leaves_few_packs_outside_a_multi_pack_index(
    url: str, s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root filled by batches alone (no reader listed its packs): the writer writes a
    multi-pack index once WRITE_FROM packs are outside one, so a new machine's first
    small save reads it and the few packs after it, not every pack's index."""
    _machine(monkeypatch, tmp_path, "writer")
    with cas.open_store(url, **s3_server.storage_options) as writer:
        for i in range(FOLDERS):
            writer.save(_folder(tmp_path / f"src{i:02d}", seed=i), f"set/{i:02d}")
        assert len(writer.space.packs.ids()) >= FOLDERS
        assert len(_midx_names(writer)) == 1
    _machine(monkeypatch, tmp_path, "fresh")
    seen = _Seen()
    with cas.open_store(url, create=False, **s3_server.storage_options) as store, s3_calls(seen):
        store.save(b"a small new value", "ci/job")
    reads = seen.index_reads()
    assert reads[0].endswith(multipack.SUFFIX), seen.calls
    assert len(reads) == 1 + FOLDERS - multipack.WRITE_FROM, seen.calls  # was FOLDERS


def _midx_names(store: Any) -> list[str]:
    return multipack.names_in(store.storage.listdir(packs.PACKS))


def _read_one(url: str, s3_server: Server, name: str, src: Path) -> _Seen:
    seen = _Seen()
    with (
        cas.open_store(url, create=False, **s3_server.storage_options) as store,
        s3_calls(seen),
        store.open(name, path="f07.bin") as f,
    ):
        assert f.read() == (src / "f07.bin").read_bytes()
    return seen


def test_a_new_machine_reads_one_index_not_one_per_pack(
    saved: dict[str, Path],
    url: str,
    s3_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "set/13"
    _machine(monkeypatch, tmp_path, "fresh")
    seen = _read_one(url, s3_server, name, saved[name])
    assert seen.listings() == ["store/packs/"], seen.calls
    midx, *others = seen.index_reads()  # the writer's, and the packs after it
    assert midx.endswith(multipack.SUFFIX), seen.calls
    assert len(others) == FOLDERS - multipack.WRITE_FROM, seen.calls
    # The same machine again: the multi-pack index is kept here, no index is read.
    again = _read_one(url, s3_server, "set/02", saved["set/02"])
    assert not again.index_reads(), again.calls
    # Without multi-pack indexes (as before them): one read per pack.
    monkeypatch.setattr(multipack, "WRITE_FROM", 10**9)
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        for old in _midx_names(store):
            store.storage.delete(multipack.midx_path(old))
    _machine(monkeypatch, tmp_path, "fresh-without")
    without = _read_one(url, s3_server, name, saved[name])
    assert len(without.index_reads()) >= FOLDERS, without.calls
    print(
        f"fresh machine, {FOLDERS} packs: {len(without.calls)} requests "
        f"({len(without.index_reads())} index reads) without a multi-pack index, "
        f"{len(seen.calls)} ({len(seen.index_reads())}) with one"
    )


def test_a_damaged_midx_is_ignored_named_by_fsck_and_removed_by_repair(
    saved: dict[str, Path],
    url: str,
    s3_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        (name,) = _midx_names(store)
        raw = bytearray(store.storage.read(multipack.midx_path(name)))
        raw[len(raw) // 2] ^= 0xFF
        store.storage.write_atomic(multipack.midx_path(name), bytes(raw))
        with pytest.raises(IntegrityError, match=name):
            multipack.read(store.storage, name)
    monkeypatch.setattr(multipack, "WRITE_FROM", 10**9)  # readers do not write it again
    _machine(monkeypatch, tmp_path, "fresh")
    for artifact in ("set/00", "set/19"):
        _read_one(url, s3_server, artifact, saved[artifact])
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        report = fsck.check(store)
        assert [(p.kind, p.object_id) for p in report.problems] == [("damaged-midx", name)]
        repaired = fsck.check(store, repair=True)
        assert any(name in line for line in repaired.repaired), repaired.repaired
        assert name not in _midx_names(store)
        assert fsck.check(store).ok
    monkeypatch.undo()
    # A reader that finds the packs uncovered writes one again, covering every pack.
    _machine(monkeypatch, tmp_path, "another")
    _read_one(url, s3_server, "set/03", saved["set/03"])
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        (again,) = _midx_names(store)
        assert multipack.read(store.storage, again).packs == tuple(store.space.packs.ids())


def test_gc_removes_the_packs_and_the_midx_that_names_them(
    saved: dict[str, Path],
    url: str,
    s3_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with cas.open_store(url, create=False, **s3_server.storage_options) as admin:
        (old,) = _midx_names(admin)
        named = set(multipack.read(admin.storage, old).packs)
        before = set(admin.space.packs.ids())
        for i in range(0, FOLDERS, 2):
            admin.delete(f"set/{i:02d}")
        gc.execute(admin, gc.plan(admin, grace=0, retention=0))
        after = set(admin.space.packs.ids())
        assert named <= before and len(before - after) >= FOLDERS // 2
        midx_now = _midx_names(admin)
        assert old not in midx_now
        (new,) = midx_now  # gc wrote one covering the packs that are left
        assert set(multipack.read(admin.storage, new).packs) == after
        assert fsck.check(admin).ok
    _machine(monkeypatch, tmp_path, "fresh")
    seen = _read_one(url, s3_server, "set/07", saved["set/07"])
    assert len(seen.index_reads()) <= 1, seen.calls


def test_a_pack_removed_behind_the_midx_does_not_break_reads(
    saved: dict[str, Path],
    url: str,
    s3_server: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _machine(monkeypatch, tmp_path, "cached")
    _read_one(url, s3_server, "set/01", saved["set/01"])  # this machine keeps the midx
    with cas.open_store(url, create=False, **s3_server.storage_options) as store:
        # the pack of set/10's record (each folder is saved, and packed, on its own; pack
        # ids are hashes, so "the sixth pack" would be any artifact's)
        where = store.space.packs.find(store.resolve("set/10")[0])
        assert where is not None
        gone = where.pack
        lost = _objects_of(store, gone)
        store.storage.delete(packs.index_path(gone))
        store.storage.delete(packs.pack_path(gone))
    for machine in ("cached", "fresh"):
        _machine(monkeypatch, tmp_path, machine)
        for artifact in ("set/04", "set/06", "set/18"):
            _read_one(url, s3_server, artifact, saved[artifact])
        with cas.open_store(url, create=False, **s3_server.storage_options) as store:
            assert gone not in store.space.packs.ids()
            for oid in lost:  # only in the removed pack: not found, whatever the midx says
                with pytest.raises(ObjectNotFound):
                    store.space.read_stored(oid)


def _objects_of(store: Any, pack_id: str) -> list[ObjectId]:
    """A few objects of a pack that no other pack holds."""
    elsewhere = {
        o
        for p in store.space.packs.ids()
        if p != pack_id
        for o, _ in store.space.packs.index(p).entries()
    }
    return [o for o, _ in store.space.packs.index(pack_id).entries() if o not in elsewhere][:3]
