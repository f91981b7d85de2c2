"""Catalog checkpoints: a new machine reads the newest checkpoint and the journal entries
after it, and gets exactly the catalog a replay of the whole journal gives; one that
does not read is skipped and named; a sync that finds nothing new lists once.

"A machine" here is a local catalog in a folder of its own over the same root (what a
new laptop's cache folder is), or on S3 a store opened with its own ``CAS_CACHE_DIR``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cas
from cas.admin import fsck
from cas.catalog import Catalog
from cas.catalog.catalog import item_event
from cas.catalog.engine import Engine
from cas.repo import checkpoints, local_catalog, segments
from cas.repo.journal import Journal, new_stamp, seal
from cas.repo.local_catalog import LocalCatalog
from cas.repo.repository import Repository
from cas.testing.servers import Server, s3_calls


def _machine(repo: Repository, folder: Path) -> LocalCatalog:
    return LocalCatalog(repo.space, repo.journal, folder)


def _replayed(repo: Repository, folder: Path) -> dict[str, Any]:
    """The catalog a replay of every journal entry gives."""
    full = _machine(repo, folder)
    try:
        full.sync(full=True)
        return full.catalog.dump()
    finally:
        full.close()


def _a_new_machine_gets_a_replay(repo: Repository, tmp_path: Path) -> None:
    expected = _replayed(repo, tmp_path / "full")
    fresh = _machine(repo, tmp_path / "fresh")
    fresh.sync()
    assert fresh.catalog.dump() == expected
    fresh.close()


class _Reads:
    """Counts the journal entries a machine reads (tag entries) and the records it
    reads (puts), so a test can say a checkpoint spared them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entries = 0
        self.records = 0
        real_read, real_record = Journal.read, LocalCatalog.read_record

        def read(journal: Journal, stamps: list[str], **kw: Any) -> Iterator[dict[str, Any]]:
            self.entries += len(stamps)
            return real_read(journal, stamps, **kw)

        def read_record(catalog: LocalCatalog, rid: str) -> dict[str, Any] | None:
            self.records += 1
            return real_record(catalog, rid)

        monkeypatch.setattr(Journal, "read", read)
        monkeypatch.setattr(LocalCatalog, "read_record", read_record)


def _late(repo: Repository, event: dict[str, Any], minutes: int) -> str:
    """A journal entry named ``minutes`` in the past, as a writer whose clock is behind
    (or that stalled between naming and writing its entry) leaves it."""
    moment = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=minutes)
    stamp = new_stamp(event["op"], event["id"], moment)
    repo.storage.write_atomic(repo.journal.path(stamp), seal(event))
    return stamp


def test_a_new_machine_starts_from_the_checkpoint_and_gets_what_a_replay_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        ids = [
            store.save(f"v{i}".encode(), f"models/m{i}", tags={"stage": "dev"}) for i in range(40)
        ]
        store.catalog.tag(ids[0], stage="production")
        store.catalog.delete(ids[1])
        repo = store.repo
        repo.sync()
        made = repo.index.checkpoint()
        assert made is not None and checkpoints.listed(repo.storage)[-1] == made
        # After the checkpoint: new saves, a tag over one it holds, a delete of one it
        # holds, and entries named before it that arrived late.
        store.save(b"after", "models/after")
        store.catalog.tag(ids[2], stage="staging")
        store.catalog.delete(ids[3])
        _late(repo, {"op": "tag", "id": ids[4], "tags": {"owner": "late"}}, minutes=1)
        _late(repo, {"op": "delete", "id": ids[5]}, minutes=1)
        expected = _replayed(repo, tmp_path / "full")

        reads = _Reads(monkeypatch)
        fresh = _machine(repo, tmp_path / "new-machine")
        fresh.sync()
        assert fresh.catalog.dump() == expected
        # What the checkpoint held was not read again: one record (the save after it)
        # and the tag entries named after the checkpoint's window start.
        assert reads.records == 1
        assert reads.entries <= 3
        hits = fresh.catalog.search("stage:production")
        assert [a["id"] for a in hits] == [ids[0]]
        assert fresh.catalog.get(ids[4])["tags"] == {"stage": "dev", "owner": "late"}
        assert fresh.catalog.get(ids[5]) is None
        # An entry named long before it landed (a writer's clock an hour behind) is
        # found by the listing of the whole resync window each machine makes hourly.
        _late(repo, {"op": "tag", "id": ids[6], "tags": {"stage": "prod"}}, minutes=60)
        monkeypatch.setattr(local_catalog, "DEEP_EVERY", 0.0)
        fresh.sync()
        assert fresh.catalog.dump() == _replayed(repo, tmp_path / "full-2")
        fresh.close()


@st.composite
def _histories(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Saves, tags, deletes and late entries (named up to a minute before they land, or
    up to five hours: ``very_late``), with one to three checkpoints among them."""
    steps: list[tuple[Any, ...]] = []
    n = draw(st.integers(1, 25))
    for i in range(n):
        kind = draw(
            st.sampled_from(
                ["save", "save", "tag", "delete", "late_tag", "late_delete", "very_late"]
            )
        )
        target = draw(st.integers(0, 300))
        value = draw(st.sampled_from(["a", "b", None]))
        steps.append((kind, i, target, value))
    for _ in range(draw(st.integers(1, 3))):  # the second and third: incremental ones
        at = draw(st.integers(0, len(steps)))
        steps.insert(at, ("checkpoint",))
    return steps


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(history=_histories())
@pytest.mark.parametrize("where", ["local", "memory"])
def test_checkpoint_and_tail_equal_a_full_replay(
    tmp_path_factory: pytest.TempPathFactory, history: list[tuple[Any, ...]], where: str
) -> None:
    """On a local root, and on memory:// (a root that is not a local folder: its
    writers also write journal segments, which the new machine reads)."""
    base = tmp_path_factory.mktemp("history")
    root = str(base / "store") if where == "local" else f"memory://{base.name}/store"
    every, segments.EVERY = segments.EVERY, 3  # segments of a few events: many of them
    try:
        _replay_history(root, base, history)
    finally:
        segments.EVERY = every


def _replay_history(root: str, base: Path, history: list[tuple[Any, ...]]) -> None:
    with cas.open_store(root, fsync=False) as store:
        repo = store.repo
        ids: list[str] = []
        very_late: list[dict[str, Any]] = []
        very_late_minutes: list[int] = []
        for step in history:
            if step[0] == "checkpoint":
                repo.sync()
                repo.index.checkpoint()
                continue
            kind, i, target, value = step
            if kind == "save":
                ids.append(store.save(f"{i}".encode(), f"n/{i % 7}", tags={"k": f"s{i}"}))
                continue
            if not ids:
                continue
            rid = ids[target % len(ids)]
            if kind == "tag":
                repo.tag(rid, {"k": value})
            elif kind == "delete":
                repo.delete(rid, None)
            elif kind == "late_tag":
                _late(repo, {"op": "tag", "id": rid, "tags": {"k": value}}, minutes=target % 2)
            elif kind == "late_delete":
                _late(repo, {"op": "delete", "id": rid}, minutes=target % 2)
            else:
                very_late.append({"op": "tag", "id": rid, "tags": {"v": value}})
                very_late_minutes.append(target)
        expected = _replayed(repo, base / "full")
        fresh = _machine(repo, base / "fresh")
        fresh.sync()
        assert fresh.catalog.dump() == expected
        for event, minutes in zip(very_late, very_late_minutes, strict=True):
            _late(repo, event, minutes)
        deep, local_catalog.DEEP_EVERY = local_catalog.DEEP_EVERY, 0.0
        try:
            fresh.sync()  # the hourly listing of the whole window
        finally:
            local_catalog.DEEP_EVERY = deep
        assert fresh.catalog.dump() == _replayed(repo, base / "full-2")
        fresh.close()


def test_a_damaged_checkpoint_is_skipped_and_named(tmp_path: Path) -> None:
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        repo = store.repo
        first = store.save(b"one", "a/one")
        repo.sync()
        older = repo.index.checkpoint()
        store.save(b"two", "a/two")
        store.catalog.tag(first, stage="production")
        repo.sync()
        newer = repo.index.checkpoint()
        assert older is not None and newer is not None and older != newer
        path = tmp_path / "store" / newer.path
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0x40
        path.chmod(0o644)
        path.write_bytes(bytes(raw))
        expected = _replayed(repo, tmp_path / "full")
        fresh = _machine(repo, tmp_path / "fresh")
        fresh.sync()  # the older checkpoint, then every entry after it
        assert fresh.catalog.dump() == expected
        fresh.close()
        report = fsck.check(store)
        named = [p.describe() for p in report.problems]
        assert [p.kind for p in report.problems] == ["damaged-checkpoint"], named
        assert newer.name in named[0]
        repaired = fsck.check(store, repair=True)
        assert any(newer.name in line for line in repaired.repaired)
        assert fsck.check(store).ok
        assert checkpoints.listed(repo.storage) == [older]


def test_writers_checkpoint_every_so_many_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "EVERY", 10)
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        for i in range(35):
            store.save(f"{i}".encode(), f"w/{i}")
        made = checkpoints.listed(store.repo.storage)
        # one every 10 entries; the oldest beyond KEEP + 1 removed, but for the whole
        # one the kept ones add to
        assert 1 <= len(made) <= checkpoints.KEEP + 2
        _a_new_machine_gets_a_replay(store.repo, tmp_path)


def test_a_new_machine_takes_a_checkpoint_in_few_transactions_and_a_compact_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is read in batches but applied in one transaction (up to
    ``STREAM_BATCH`` events): each commit copies every page it touches, so a new
    catalog that committed each batch grew to about twice what it holds, and a new
    machine's first command had all of it in memory (RSS)."""
    monkeypatch.setattr(checkpoints, "BATCH", 100)  # 15 batches, as 100,000 records are 20
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store, store.batch():
        for i in range(1500):
            store.save(f"v{i}".encode(), f"d/{i % 7}/a{i}", metadata={"i": i})
    repo = cas.open_store(str(tmp_path / "store")).repo
    repo.sync()
    assert repo.index.checkpoint() is not None
    expected = _replayed(repo, tmp_path / "full")
    commits = []
    real_write = Engine.write

    def write(engine: Any, fn: Any, need: int = 0) -> Any:
        commits.append(need)
        return real_write(engine, fn, need)

    monkeypatch.setattr(Engine, "write", write)
    fresh = _machine(repo, tmp_path / "new-machine")
    fresh.sync()
    monkeypatch.undo()
    assert fresh.catalog.dump() == expected
    assert len(commits) <= 3  # the checkpoint's one, the journal's tail, the sync state
    # As compact as the same records indexed in one go by a rebuild.
    events: list[dict[str, Any]] = []
    fresh.catalog.export(lambda item: events.append(item_event(item)))
    compact = Catalog(tmp_path / "rebuilt", durable=False)
    compact.rebuild(events)
    assert fresh.catalog.stats()["used_bytes"] <= 1.1 * compact.stats()["used_bytes"]
    compact.close()
    fresh.close()


def _events(repo: Repository, made: checkpoints.Checkpoint) -> list[dict[str, Any]]:
    _, _, batches = checkpoints.read(repo.storage, made)
    return [event for batch in batches for event in batch]


def _kinds(storage: Any) -> list[str]:
    return ["whole" if c.base is None else "incremental" for c in checkpoints.listed(storage)]


def test_writers_add_incremental_checkpoints_to_a_whole_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole checkpoint holds the catalog (about 97 bytes a record: 97 MB at 1,000,000
    records), written every EVERY entries; after the first, a writer writes what changed
    since it, until that is more than ``incremental_limit``. A new machine reads the
    newest and its whole one: what a replay gives."""
    monkeypatch.setattr(checkpoints, "EVERY", 10)
    monkeypatch.setattr(checkpoints, "KEEP", 1)
    monkeypatch.setattr(checkpoints, "incremental_limit", lambda records: 1000)
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        repo = store.repo
        ids = [store.save(f"{i}".encode(), f"w/{i}", metadata={"i": i}) for i in range(60)]
        # one every 10 entries: the first whole, then incremental ones (the newest and
        # KEEP before it stay, and the whole one they add to)
        assert _kinds(repo.storage) == ["whole", "incremental", "incremental"]
        ids += [store.save(f"{i}".encode(), f"w/{i}") for i in range(60, 85)]
        store.catalog.tag(ids[0], stage="production")  # a record the whole one holds
        store.catalog.delete(ids[1])
        ids += [store.save(f"{i}".encode(), f"w/{i}") for i in range(85, 95)]
        every = checkpoints.listed(repo.storage)
        newest = every[-1]
        assert _kinds(repo.storage) == ["whole", "incremental", "incremental"]
        assert checkpoints.base_of(newest, every) == every[0]
        held = {c.name: _events(repo, c) for c in every}
        whole_puts = {e["record"]["id"] for e in held[every[0].name] if e["op"] == "put"}
        new_puts = {e["record"]["id"] for e in held[newest.name] if e["op"] == "put"}
        assert ids[0] in whole_puts and not whole_puts & new_puts  # each record once
        assert set(ids[:90]) <= whole_puts | new_puts <= set(ids)  # the newest at 90
        assert {"op": "delete", "id": ids[1]} in [
            {"op": e["op"], "id": e.get("id")} for e in held[newest.name]
        ]
        assert any(
            e["op"] == "tag" and e["id"] == ids[0] and e["tags"] == {"stage": "production"}
            for e in held[newest.name]
        )
        read = []
        real_read = checkpoints.read

        def counted(storage: Any, made: checkpoints.Checkpoint) -> Any:
            read.append(made.name)
            return real_read(storage, made)

        monkeypatch.setattr(checkpoints, "read", counted)
        fresh = _machine(repo, tmp_path / "new-machine")
        fresh.sync()
        assert sorted(read) == sorted([newest.name, every[0].name])
        monkeypatch.setattr(checkpoints, "read", real_read)
        assert fresh.catalog.dump() == _replayed(repo, tmp_path / "full")
        assert fresh.catalog.get(ids[0])["tags"] == {"stage": "production"}
        assert fresh.catalog.get(ids[1]) is None
        # The new machine took the whole one as its own: its checkpoints add to it too.
        assert fresh.catalog.marked() == every[0].name
        mine = fresh.checkpoint()
        assert mine is not None and mine.base == every[0].digest
        fresh.close()


def test_a_whole_checkpoint_comes_again_when_the_changes_outgrow_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "EVERY", 10)
    monkeypatch.setattr(checkpoints, "incremental_limit", lambda records: 15)
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        for i in range(45):
            store.save(f"{i}".encode(), f"w/{i}")
        # 10: whole; 20: 10 changes, incremental; 30: 20 changes, whole again; 40: one
        # on that (the first whole one stays while the one at 20, which adds to it, does)
        assert _kinds(store.repo.storage) == ["whole", "incremental", "whole", "incremental"]
        for i in range(45, 65):
            store.save(f"{i}".encode(), f"w/{i}")
        # 50: whole (20 changes), 60: incremental; the first two went
        assert _kinds(store.repo.storage) == ["whole", "incremental", "whole", "incremental"]
        _a_new_machine_gets_a_replay(store.repo, tmp_path)


def test_an_incremental_checkpoint_whose_whole_one_is_gone_is_passed_over_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoints, "EVERY", 10)
    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        for i in range(25):
            store.save(f"{i}".encode(), f"w/{i}")
        repo = store.repo
        whole, newest = checkpoints.listed(repo.storage)
        assert newest.base == whole.digest
        (tmp_path / "store" / whole.path).unlink()
        _a_new_machine_gets_a_replay(repo, tmp_path)  # from no checkpoint: it can use none
        report = fsck.check(store)
        assert [p.kind for p in report.problems] == ["damaged-checkpoint"]
        assert newest.name in report.problems[0].describe()
        assert "gone" in report.problems[0].describe()
        fsck.check(store, repair=True)
        assert fsck.check(store).ok  # set aside: readers passed over it anyway


def test_gc_writes_a_checkpoint(tmp_path: Path) -> None:
    from cas.admin import gc

    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        store.save(b"x", "g/x")
        assert checkpoints.listed(store.repo.storage) == []
        gc.execute(store, gc.plan(store, grace=0, retention=0))
        assert len(checkpoints.listed(store.repo.storage)) == 1


# -- on S3: what a new machine pays --------------------------------------------------------


def _bucket(s3_server: Server) -> tuple[str, dict[str, Any]]:
    """A store's URL in a new bucket, and the options that reach it."""
    return s3_server.url(s3_server.new_bucket(), "store"), dict(s3_server.storage_options)


def _as_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    """From now on this process is machine ``name``: its own cache folder."""
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / name))


@pytest.mark.slow
def test_a_new_machine_on_s3_reads_a_checkpoint_not_the_history(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "writer")
    with cas.open_store(url, **options) as store:
        with store.batch():
            ids = [store.save(f"v{i}".encode(), f"data/d{i}") for i in range(150)]
        store.catalog.tag(ids[7], stage="production")
        store.repo.sync()
        assert store.repo.index.checkpoint() is not None

    _as_machine(monkeypatch, tmp_path, "new-machine")
    with s3_calls() as first, cas.open_store(url, **options) as store:
        hits = store.catalog.search("stage:production")
        assert [a["id"] for a in hits] == [ids[7]]
    # the marker, one listing of checkpoints and its GET, one listing of the journal
    # from there; not 150 records and their entries
    print("first search", dict(first))
    assert sum(first.values()) <= 8, first

    with s3_calls() as again, cas.open_store(url, **options) as store:
        assert store.repo.sync() == 0
    print("sync nothing new", dict(again))
    assert sum(again.values()) <= 5, again


@pytest.mark.slow
def test_a_new_machine_on_s3_reads_an_incremental_checkpoint_and_its_whole_one(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "writer")
    with cas.open_store(url, **options) as store:
        with store.batch():
            ids = [store.save(f"v{i}".encode(), f"data/d{i}") for i in range(100)]
        store.repo.sync()
        whole = store.repo.index.checkpoint()
        with store.batch():
            ids += [store.save(f"w{i}".encode(), f"data/e{i}") for i in range(50)]
        store.catalog.tag(ids[7], stage="production")  # held by the whole one
        store.catalog.tag(ids[120], stage="production")  # saved after it
        store.repo.sync()
        made = store.repo.index.checkpoint()
        assert whole is not None and made is not None and made.base == whole.digest

    _as_machine(monkeypatch, tmp_path, "new-machine")
    with s3_calls() as first, cas.open_store(url, **options) as store:
        hits = store.catalog.search("stage:production")
        assert sorted(a["id"] for a in hits) == sorted([ids[7], ids[120]])
        assert len(store.catalog.list(limit=1000)) == 150
    print("first search", dict(first))
    assert sum(first.values()) <= 9, first  # one GET more than from a whole one


@pytest.mark.slow
def test_a_sync_on_s3_reads_only_what_another_machine_added(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "reader")
    with cas.open_store(url, **options) as reader:
        reader.save(b"seed", "seed")
        assert len(reader.catalog.list()) == 1
        _as_machine(monkeypatch, tmp_path, "writer")
        with cas.open_store(url, **options) as writer:
            rid = writer.save(b"new", "from/elsewhere")
            writer.catalog.tag(rid, stage="production")
        with s3_calls() as counts:
            assert reader.repo.sync() == 2
        assert [a["id"] for a in reader.catalog.search("stage:production")] == [rid]
        # one listing from where the last began, the record, the tag entry
        assert sum(counts.values()) <= 4, counts
        with s3_calls() as counts:
            assert reader.repo.sync() == 0  # the tag entry is not read again
        assert sum(counts.values()) <= 2, counts


@pytest.mark.slow
def test_a_new_machine_saves_tags_and_deletes_without_catching_up(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CI job that saves one artifact into a busy bucket pays for that save, not for
    the bucket's history; what it wrote shows in its own search afterwards."""
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "writer")
    with cas.open_store(url, **options) as store, store.batch():
        for i in range(120):
            store.save(f"v{i}".encode(), f"hist/h{i}")
    _as_machine(monkeypatch, tmp_path, "ci-job")
    with cas.open_store(url, **options) as store:
        with s3_calls() as counts:
            rid = store.save(b"model", "models/fraud", tags={"stage": "candidate"})
            again = store.save(b"model", "models/fraud", tags={"stage": "candidate"})
            store.catalog.tag(rid, stage="production")
            other = store.save(b"old", "models/old")
            store.catalog.delete(other)
        assert again == rid  # the same version: nothing written
        print("ci job", sum(counts.values()), dict(counts))
        assert sum(counts.values()) <= 45, counts  # not the 120 entries and records
        assert [a["id"] for a in store.catalog.search("stage:production")] == [rid]
        assert store.catalog.get(other) is None
        assert len(store.catalog.list(limit=1000)) == 121


# -- journal segments: what another machine wrote, in a few GETs --------------------------


def _other_machine_writes(
    url: str, options: dict[str, Any], monkeypatch: pytest.MonkeyPatch, cache: Path, n: int
) -> list[str]:
    monkeypatch.setenv("CAS_CACHE_DIR", str(cache))
    with cas.open_store(url, **options) as writer:
        ids = [writer.save(f"new {i}".encode(), f"new/n{i}") for i in range(n)]
        for rid in ids[: n // 2]:
            writer.catalog.tag(rid, stage="production")
        writer.catalog.delete(ids[-1])
    return ids


@pytest.mark.slow
def test_a_sync_reads_another_machines_saves_and_tags_in_a_few_requests(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "reader")
    with cas.open_store(url, **options) as reader:
        reader.save(b"seed", "seed")
        reader.repo.sync()
        ids = _other_machine_writes(url, options, monkeypatch, tmp_path / "writer", 100)
        with s3_calls() as counts:
            applied = reader.repo.sync()
        assert applied == 100 + 50 + 1
        print("sync after 100 saves, 50 tags, a delete:", dict(counts))
        # a listing and a segment per 16 events, not an entry and a record per event
        assert sum(counts.values()) <= 20, counts
        hits = {a["id"] for a in reader.catalog.search("stage:production", limit=1000)}
        assert hits == set(ids[:50])
        assert reader.catalog.get(ids[-1]) is None
        expected = _replayed(reader.repo, tmp_path / "full")
        assert reader.repo.index.catalog.dump() == expected


@pytest.mark.slow
def test_a_damaged_segment_is_read_as_its_entries(
    s3_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = _bucket(s3_server)
    _as_machine(monkeypatch, tmp_path, "reader")
    with cas.open_store(url, **options) as reader:
        reader.save(b"seed", "seed")
        reader.repo.sync()
        ids = _other_machine_writes(url, options, monkeypatch, tmp_path / "writer", 20)
        storage = reader.repo.storage
        names = [s for s in reader.repo.journal.stamps(segments=True) if "-seg-" in s]
        assert names
        path = reader.repo.journal.path(names[0])
        raw = bytearray(storage.read(path))
        raw[len(raw) // 2] ^= 0x01
        storage.write_atomic(path, bytes(raw))
        reader.repo.sync()
        assert {a["id"] for a in reader.catalog.search("stage:production")} == set(ids[:10])
        assert reader.repo.index.catalog.dump() == _replayed(reader.repo, tmp_path / "full")
        report = fsck.check(reader)
        assert [(p.kind, p.object_id) for p in report.problems] == [("damaged-segment", names[0])]
        fsck.check(reader, repair=True)
        assert fsck.check(reader).ok


def test_a_record_the_catalog_refuses_inside_a_checkpoint_is_named_and_the_rest_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint that verifies but holds a record this catalog refuses (a buggy
    writer): that record is skipped and the others applied, not its whole batch; fsck
    names the checkpoint."""
    import msgpack

    with cas.open_store(str(tmp_path / "store"), fsync=False) as store:
        ids = [store.save(f"{i}".encode(), f"r/{i}") for i in range(5)]
        repo = store.repo
        repo.sync()
        good = repo.index.catalog
        bad = {**good.get(ids[0]), "id": "ab" * 32, "name": ""}  # an empty name

        def export(sink: Any) -> dict[str, int]:
            counts = good.export(sink)
            sink(["p", msgpack.packb(bad, use_bin_type=True)])
            return counts

        newest = checkpoints.listed(repo.storage)
        upto = "29990101T000000.000000Z-0"  # newer than any, so it is the one read
        checkpoints.write(repo.storage, export, upto)
        assert len(checkpoints.listed(repo.storage)) == len(newest) + 1
        fresh = _machine(repo, tmp_path / "fresh")
        with caplog.at_level("WARNING", logger="cas"):
            fresh.sync()
        assert sorted(fresh.catalog.ids()) == sorted(ids)  # its batch applied but for it
        assert f"skipped {'ab' * 32}" in caplog.text and "run 'cas fsck'" in caplog.text
        fresh.close()
        report = fsck.check(store)
        assert [p.kind for p in report.problems] == ["damaged-checkpoint"]
        assert "holds 1 records the journal never put" in report.problems[0].describe()
