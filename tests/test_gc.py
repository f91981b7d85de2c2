"""gc: plan then execute; never deletes what a root reaches; grace and retention hold."""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cas
from cas.admin import gc, marking
from cas.objects.digests import Condemned, Digests
from cas.objects.ids import parse_id
from cas.objects.space import object_path

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


def test_grace_spares_young_unreachable_objects_and_what_they_reach(
    store: cas.ArtifactStore,
) -> None:
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
    path = Path(store.storage.root, object_path(parse_id(aid)))
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


# -- the compact structures and the streaming plan ---------------------------------------


def test_digests_find_every_member_and_nothing_else() -> None:
    import random

    rnd = random.Random(8)
    members = sorted({rnd.randbytes(32) for _ in range(3000)})
    # Digests sharing their first two bytes, and one whose bytes straddle two members.
    members += [b"\xff\xff" + bytes(30), b"\xff\xff" + b"\x01" * 30]
    members.sort()
    digests = Digests(b"".join(members))
    assert len(digests) == len(members)
    for i, d in enumerate(members):
        assert digests.find(d) == i and digests.digest(i) == d and digests.oid(i) == d.hex()
    straddling = members[-1][16:] + members[-1][:16]  # inside the buffer, not aligned
    for absent in [rnd.randbytes(32) for _ in range(500)] + [straddling, bytes(32)]:
        assert digests.find(absent) == -1 and absent not in digests
    assert Digests().find(bytes(32)) == -1 and len(Digests()) == 0
    assert list(digests.fan(0xFF)) == [i for i, d in enumerate(members) if d[0] == 0xFF]
    with pytest.raises(ValueError):
        Digests(b"x" * 33)


def test_condemned_reads_as_a_sequence_of_pairs() -> None:
    from array import array

    ids = sorted(os.urandom(32) for _ in range(5))
    doomed = Condemned(Digests(b"".join(ids)), array("q", [1, 2, 3, 4, 5]))
    pairs = [(d.hex(), n) for d, n in zip(ids, range(1, 6), strict=True)]
    assert list(doomed) == pairs and doomed == tuple(pairs) and doomed != ()
    assert len(doomed) == 5 and doomed == pairs and repr(doomed) == "Condemned(5 objects, 15 bytes)"
    assert doomed.total == 15 and {o for o, _ in doomed} == {o for o, _ in pairs}
    empty = Condemned(Digests(), array("q"))
    assert empty == () and not empty


def test_marking_follows_the_same_ids_as_references(
    store: cas.ArtifactStore, tmp_path: Path
) -> None:
    from cas.objects.kinds import references

    folder = tmp_path / "f"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a").write_bytes(b"a")
    (folder / "b").write_bytes(os.urandom(5 << 20))  # a chunk list behind a file entry
    base = store.save(b"base", "base")
    store.save(folder, "tree", parent_ids=[base])
    seen = set()
    for oid in store.space:
        kind, payload = store.space.read_object(oid)
        chunks, pending = marking.references_of(kind, oid, payload)
        assert {c.hex() for c in chunks} | {d.hex() for d, _ in pending} == {
            ref for ref, _ in references(kind, oid, payload)
        }
        seen.add(kind)
    assert seen == {"blob", "chunks", "tree", "record"}


def test_plan_memory_grows_by_few_bytes_per_object(store: cas.ArtifactStore) -> None:
    """The plan holds 32-byte digests and a mark byte per object (40 more per object it
    condemns), not Python objects: each further object costs well under 128 bytes."""
    import tracemalloc

    from cas.objects import codec
    from cas.objects.ids import blob_id

    def add(n: int, seed: int) -> None:
        for i in range(n):
            data = b"%d-%d" % (seed, i)
            store.storage.write_atomic(object_path(blob_id(data)), codec.encode("blob", data))

    def peak() -> int:
        tracemalloc.start()
        try:
            plan = gc.plan(store, grace=3600)  # everything young: condemns nothing
            assert plan.delete == () and plan.young == plan.objects - plan.reachable
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    store.save(b"keep", "keep")
    add(5_000, 1)
    small = peak()
    add(20_000, 2)
    large = peak()
    assert (large - small) / 20_000 < 128


def test_gc_on_an_object_store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """memory:// goes the object-store way: ages and sizes from per-folder listings, and
    before deleting a fresh listing (or a check each, when fewer requests)."""
    import datetime as dt
    import uuid

    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("cas.objects.batch.PACK_BYTES_FROM", 1 << 40)  # loose chunks here
    store = cas.open_store(f"memory://gc-{uuid.uuid4().hex}")
    fs, root = store.storage.fs, store.storage.root
    keep = store.save(b"keep", "keep")
    store.save(os.urandom(5 << 20) + b"big", "big")  # a chunk list and its chunks
    store.delete("big")
    garbage = [store.space.put(b"garbage %d" % i) for i in range(600)]
    live = {keep, store.get_metadata("keep")["content_id"]}
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    for path, f in fs.store.items():
        if path.startswith(root + "/"):
            f.created = old
    plan = gc.plan(store, grace=600, retention=0)
    assert plan.objects == len(set(store.space)) and plan.reachable == len(live)
    assert {o for o, _ in plan.delete} == set(store.space) - live
    assert plan.bytes_freed == sum(fs.size(f"{root}/{object_path(o)}") for o, _ in plan.delete)
    assert store.space.put(b"garbage 7") == garbage[7]  # a writer reuses it: refreshed
    result = gc.execute(store, plan)
    assert result.spared == 1 and result.deleted == len(plan.delete) - 1
    assert set(store.space) == live | {garbage[7]}
    assert store.load("keep") == b"keep"
    store.close()


def _s3_requests(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Requests this process sends to S3 from now on, by operation."""
    from aiobotocore.client import AioBaseClient

    counts: collections.Counter[str] = collections.Counter()
    real = AioBaseClient._make_api_call

    async def counting(self: object, operation: str, params: object) -> object:
        counts[operation] += 1
        return await real(self, operation, params)  # type: ignore[arg-type]

    monkeypatch.setattr(AioBaseClient, "_make_api_call", counting)
    return counts


@pytest.mark.slow
def test_gc_on_s3_decides_from_listings(
    s3_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3, gc's plan lists each fan-out folder (one request per 1,000 keys) and its
    sweep re-lists or checks a folder, whichever is fewer requests, then deletes in
    batches: never one request per condemned object to decide."""
    from cas.testing.servers import Server

    assert isinstance(s3_server, Server)
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    store = cas.open_store(s3_server.url(s3_server.new_bucket(), "gc"), **s3_server.storage_options)
    keep = store.save(b"keep", "keep")
    store.save(b"gone", "gone")
    store.delete("gone")
    garbage = {store.space.put(b"garbage %d" % i) for i in range(600)}
    occupied = len({o[:2] for o in store.space})  # fan-out folders holding objects
    counts = _s3_requests(monkeypatch)
    plan = gc.plan(store, grace=0, retention=0, now=time.time() + 5)
    assert {o for o, _ in plan.delete} >= garbage and len(plan.delete) == len(garbage) + 2
    planned = collections.Counter(counts)
    counts.clear()
    result = gc.execute(store, plan)
    monkeypatch.undo()
    assert result.deleted == len(plan.delete) and result.spared == 0
    assert set(store.space) == {keep, store.get_metadata("keep")["content_id"]}
    # The plan: a listing per fan-out folder, the refs and their history, and reads of
    # the records and what they point at; never a request per object listed.
    # (s3fs checks an empty folder's name with a HEAD after its empty listing.)
    listings = planned["ListObjectsV2"] + planned["HeadObject"]
    assert listings <= occupied + 2 * (256 - occupied) + 40, planned
    assert sum(planned.values()) < listings + 20, planned
    # The sweep: per folder holding condemned objects, one listing or (when it holds
    # one) one check, then one batched delete; the rest is the refs' history pruning.
    folders = len({o[:2] for o, _ in plan.delete})
    decide = counts["ListObjectsV2"] + counts["HeadObject"]
    assert decide <= folders + 40 and decide < len(plan.delete) / 2, counts
    assert counts["DeleteObjects"] <= folders and counts["DeleteObject"] <= 5, counts
    store.close()


@pytest.mark.slow
def test_gc_from_a_fresh_machine_reads_listings_not_artifacts(
    s3_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gc that planned once leaves what it read for the next (a ref snapshot, the
    leaves it learned): the next one, on a fresh machine, reads the listings, the
    catalog checkpoint and those two files, not a request per artifact; a name moved
    since and an object changed since are read again, and nothing live is planned
    for deletion."""
    from cas.testing.servers import Server

    assert isinstance(s3_server, Server)
    url = s3_server.url(s3_server.new_bucket(), "gc")
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "writer"))
    count = 400
    with cas.open_store(url, **s3_server.storage_options) as store:
        with store.batch():
            ids = [store.save(b"artifact %d" % i, f"runs/{i}") for i in range(count)]
        store.save(b"garbage", "gone")
        store.delete("gone")
        store.repo.index.checkpoint()
    counts = _s3_requests(monkeypatch)

    def fresh_plan(machine: str) -> gc.GcPlan:
        monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / machine))
        counts.clear()
        with cas.open_store(url, **s3_server.storage_options) as store:
            return gc.plan(store, grace=0, retention=0, now=time.time() + 5)

    first = fresh_plan("first")
    assert counts["GetObject"] >= 2 * count  # every ref, entry and file content, once
    second = fresh_plan("second")
    assert counts["GetObject"] <= 10, counts  # checkpoint, snapshot, leaves: no artifact
    # A few listings: a store this small is listed whole (one request per 1,000 keys),
    # not one fan-out folder at a time.
    assert counts["HeadObject"] <= 2 and counts["ListObjectsV2"] <= 20, counts
    assert first.delete == second.delete and len(second.delete) == 2  # "gone": record, content
    # A name moved and a new artifact since: their files are read, the rest is not.
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "writer"))
    with cas.open_store(url, **s3_server.storage_options) as store:
        store.save(b"artifact 0, again", "runs/0")
    third = fresh_plan("third")
    assert counts["GetObject"] <= 10 + 3, counts  # the ref, its new entry, its content
    with cas.open_store(url, **s3_server.storage_options) as store:
        live = {store.get_metadata(i)["content_id"] for i in ids} | set(ids)
    assert not live & {str(o) for o, _ in third.delete}
    # Executing it re-reads the names and prunes history by listings too.
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "third"))
    with cas.open_store(url, **s3_server.storage_options) as store:
        counts.clear()
        result = gc.execute(store, third)
        assert (
            result.deleted == len(third.delete) and result.log_entries_pruned == 2
        )  # the first of runs/0, of gone
        assert counts["GetObject"] + counts["HeadObject"] <= 20, counts
        assert [store.load(f"runs/{i}") for i in (1, count - 1)] == [
            b"artifact 1",
            b"artifact %d" % (count - 1),
        ]


@pytest.mark.slow
def test_what_a_gc_leaves_for_the_next_holds_on_every_object_store(
    cloud_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3, GCS and Azure alike the second fresh machine's plan takes the names and
    the leaves from what the first left (their listings give version tokens), plans
    the same, and reads again an object rewritten since."""
    from cas.admin import leaves
    from cas.testing.servers import Server

    assert isinstance(cloud_server, Server)
    url = cloud_server.url(cloud_server.new_bucket(), "gc")
    opts = cloud_server.storage_options
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "writer"))
    with cas.open_store(url, **opts) as store:
        ids = [store.save(b"artifact %d" % i, f"runs/{i}") for i in range(120)]
        store.save(b"garbage", "gone")
        store.delete("gone")
    learned: list[int] = []
    real_save = leaves.save

    def save(storage: object, listing: object, marker: object) -> bool:
        learned.append(marker.learned)  # type: ignore[attr-defined]
        return real_save(storage, listing, marker)  # type: ignore[arg-type]

    monkeypatch.setattr(leaves, "save", save)

    def fresh_plan(machine: str) -> tuple[gc.GcPlan, int]:
        monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / machine))
        with cas.open_store(url, **opts) as store:
            state = store.repo.names.state()
            assert state is not None
            return gc.plan(store, grace=0, retention=0, now=time.time() + 5), state.read

    first, _ = fresh_plan("first")
    second, names_read = fresh_plan("second")
    assert learned[0] >= 120 and learned[1] == 0 and names_read == 0
    assert first.delete == second.delete and len(second.delete) == 2
    # An object rewritten since (same id, new version token) is read again.
    with cas.open_store(url, **opts) as store:
        content = store.get_metadata(ids[0])["content_id"]
        path = f"objects/{content[:2]}/{content[2:]}"
        store.storage.write_atomic(path, store.storage.read(path))
    fresh_plan("third")
    # An S3 ETag is the MD5 of the bytes (unchanged); a GCS generation and an Azure ETag
    # are new with each write.
    assert learned[2] == (0 if cloud_server.kind == "s3" else 1)
