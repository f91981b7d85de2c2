"""gc: plan then execute; never deletes what a root reaches; grace and retention hold."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas import gc
from cas.objectspace import object_path

ops = st.lists(
    st.one_of(
        st.tuples(st.just("save"), st.sampled_from("abcd"), st.binary(max_size=64)),
        st.tuples(st.just("big"), st.sampled_from("ab"), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from("abcd")),
        st.tuples(st.just("tag"), st.sampled_from("abcd"), st.sampled_from(["x", "y"])),
        st.tuples(st.just("child"), st.sampled_from("abcd"), st.sampled_from("abcd")),
        st.tuples(st.just("dir"), st.sampled_from("ab"), st.binary(max_size=32)),
    ),
    max_size=14,
)


def _age_everything(store: cas.ArtifactStore, seconds: float) -> None:
    root = Path(store.storage.root)
    then = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (then, then), follow_symlinks=False)


@given(script=ops)
def test_gc_keeps_everything_reachable_and_frees_the_rest(script: list[tuple]) -> None:  # type: ignore[type-arg]
    tmp = tempfile.mkdtemp(prefix="cas-gc-")
    try:
        store = cas.open_store(os.path.join(tmp, "s"), fsync=False)
        live: dict[str, object] = {}
        for op in script:
            name = f"n/{op[1]}"
            if op[0] == "save":
                store.save(op[2], name)
                live[name] = op[2]
            elif op[0] == "big":
                data = bytes([op[2]]) * (5 << 20) + os.urandom(1 << 20)
                store.save(data, name)
                live[name] = data
            elif op[0] == "dir":
                folder = Path(tmp, f"d{len(live)}")
                (folder / "sub").mkdir(parents=True, exist_ok=True)
                (folder / "sub" / "f.bin").write_bytes(op[2])
                store.save(folder, name)
                live[name] = ("dir", op[2])
            elif op[0] == "delete" and name in live:
                store.delete(name)
                del live[name]
            elif op[0] == "tag" and name in live:
                store.catalog.tag(store.get_metadata(name)["id"], k=op[2])
            elif op[0] == "child" and name in live and f"n/{op[2]}" in live:
                parent = store.get_metadata(f"n/{op[2]}")["id"]
                store.save(b"derived", name, parent_ids=[parent])
                live[name] = b"derived"
        _age_everything(store, 3600)
        plan = gc.plan(store, grace=0, retention=0)
        gc.execute(store, plan)
        for name, value in live.items():
            got = store.load(name)
            if isinstance(value, tuple):
                assert (Path(got) / "sub" / "f.bin").read_bytes() == value[1]
            else:
                assert got == value
            # parents of live records are roots too: they still load
            for pid in store.get_metadata(name)["parent_ids"]:
                store.load(pid)
        again = gc.plan(store, grace=0, retention=0)
        assert again.delete == (), "a second gc found more garbage: the first left some"
        assert again.missing == ()
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def store(tmp_path: Path) -> cas.ArtifactStore:
    s = cas.open_store(str(tmp_path / "s"), fsync=False)
    yield s
    s.close()


def test_dry_run_plan_deletes_nothing_and_counts_bytes(store: cas.ArtifactStore) -> None:
    store.save(b"keep me", "keep")
    store.save(b"x" * 1000, "drop")
    store.delete("drop")
    _age_everything(store, 3600)
    before = sorted(store.space)
    plan = gc.plan(store, grace=0, retention=0)
    assert sorted(store.space) == before
    assert len(plan.delete) == 2  # the content and the deleted record
    assert plan.bytes_freed == sum(size for _, size in plan.delete) > 0
    result = gc.execute(store, plan)
    assert result.deleted == 2 and store.load("keep") == b"keep me"


def test_grace_spares_young_unreachable_objects_and_what_they_reach(store: cas.ArtifactStore) -> None:
    big = os.urandom(6 << 20)
    oid = store.space.put(big)  # a writer mid-save: content written, no record yet
    plan = gc.plan(store, grace=3600, retention=0)
    assert plan.delete == ()
    assert store.space.get(oid) == big
    _age_everything(store, 7200)
    plan = gc.plan(store, grace=3600, retention=0)
    assert {o for o, _ in plan.delete} >= {oid}


def test_retention_keeps_deleted_artifacts_restorable(store: cas.ArtifactStore) -> None:
    aid = store.save(b"oops", "important")
    store.delete("important")
    _age_everything(store, 3600)
    gc.execute(store, gc.plan(store, grace=0))  # default retention: 30 days
    assert store.load(aid) == b"oops"  # still there to restore from `cas log`
    gc.execute(store, gc.plan(store, grace=0, retention=0))
    with pytest.raises(cas.ObjectNotFound):
        store.load(aid)


def test_old_history_entries_are_roots_within_retention(store: cas.ArtifactStore) -> None:
    first = store.save(b"v1", "model")
    store.save(b"v2", "model")
    _age_everything(store, 3600)
    gc.execute(store, gc.plan(store, grace=0))
    assert store.load(first) == b"v1"


def test_ref_moved_during_gc_spares_its_target(store: cas.ArtifactStore) -> None:
    old = store.save(b"old content", "x")
    store.delete("x")
    _age_everything(store, 3600)
    plan = gc.plan(store, grace=0, retention=0)
    assert old in {o for o, _ in plan.delete}
    # Between plan and execute, someone points a name at the doomed record again.
    store.refs.set("restored", old)
    result = gc.execute(store, plan)
    assert result.spared >= 2
    assert store.load("restored") == b"old content"


def test_writer_refreshing_a_doomed_object_keeps_it(store: cas.ArtifactStore) -> None:
    store.save(b"shared bytes", "a")
    store.delete("a")
    _age_everything(store, 3600)
    plan = gc.plan(store, grace=600, retention=0)
    content = store.get_metadata  # noqa: F841 (names the idea: content is in the plan)
    doomed = {o for o, _ in plan.delete}
    # A writer saves the same bytes now: the dedup hit refreshes the old object.
    aid = store.save(b"shared bytes", "b")
    result = gc.execute(store, plan)
    assert result.spared >= 1
    assert store.load("b") == b"shared bytes" and store.load(aid) == b"shared bytes"
    assert doomed  # the plan did name it


def test_unreadable_root_stops_gc(store: cas.ArtifactStore) -> None:
    aid = store.save({"a": 1}, "cfg")
    store.save(b"garbage", "g")
    store.delete("g")
    _age_everything(store, 3600)
    path = Path(store.storage.root, object_path(cas.ids.parse_id(aid)))  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    before = sorted(store.space)
    with pytest.raises(gc.GcRefused, match="fsck"):
        gc.plan(store, grace=0, retention=0)
    assert sorted(store.space) == before


def test_temp_files_of_dead_writers_are_removed(store: cas.ArtifactStore) -> None:
    store.save(b"x", "x")
    leftover = Path(store.storage.root, "objects", "ab", ".tmp-abcdef-1234")
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    _age_everything(store, 7200)
    plan = gc.plan(store, grace=3600)
    assert plan.temp_files == ("objects/ab/.tmp-abcdef-1234",)
    gc.execute(store, plan)
    assert not leftover.exists() and store.load("x") == b"x"
