"""LMDB behaviour: the map grows instead of failing, and several processes share one
catalog (two writers and a reader at once, the reader following the map's growth)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cas.catalog.catalog
import cas.catalog.engine
from cas.catalog import Catalog, InvalidInput
from cas.catalog.testing import make_record, rid

TINY = 1 << 18  # 256 KiB: a few hundred records at most
REPO = Path(__file__).resolve().parents[1]
PAD = {"note": "padding " * 60}


def test_map_grows_past_a_tiny_initial_size(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c", map_size=TINY) as cat:
        assert cat.stats()["map_size"] == TINY
        for i in range(600):
            assert cat.put(make_record(i, f"m/{i % 13}", metadata=PAD))
        cat.put_many(make_record(i, metadata=PAD) for i in range(600, 3000))
        s = cat.stats()
        assert s["records"] == 3000 and s["map_size"] > 8 * TINY and s["map_growths"] >= 3
        assert len(cat.list(limit=5000)) == 3000
    with Catalog(tmp_path / "c") as again:  # reopening keeps the grown size, not the default
        assert again.stats()["map_size"] == s["map_size"]
        assert again.get(rid(2999)) is not None


def test_map_full_error_is_retried_after_growth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the ahead-of-time growth disabled, the write must hit MapFullError, grow
    the map and run the whole transaction again."""
    monkeypatch.setattr(cas.catalog.engine, "_make_room", lambda shared, need: None)
    with Catalog(tmp_path / "c", map_size=TINY) as cat:
        assert cat.put_many(make_record(i, metadata=PAD) for i in range(2000)) == 2000
        for i in range(2000, 2300):
            cat.put(make_record(i, metadata=PAD))
        cat.apply(
            [
                {"op": "tag", "id": rid(i), "tags": {"k": "v" * 100}, "stamp": "s"}
                for i in range(2300)
            ]
        )
        s = cat.stats()
        assert s["records"] == 2300 and s["map_growths"] >= 3
        assert len(cat.search("k:" + "v" * 100, limit=3000)) == 2300


def test_rebuild_in_several_transactions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cas.catalog.catalog, "REBUILD_BATCH", 7)
    records = [make_record(i, parents=[i - 1] if i else []) for i in range(50)]
    events = [{"op": "put", "record": r} for r in records]
    with Catalog(tmp_path / "a", map_size=TINY) as a, Catalog(tmp_path / "b") as b:
        a.put_many(records)
        b.put(make_record(999))
        b.rebuild(events[::-1])
        assert a.dump() == b.dump()


WRITER = textwrap.dedent(
    """
    import sys
    from cas.catalog import Catalog
    from cas.catalog.testing import make_record
    path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pad = {"note": "padding " * 60}
    with Catalog(path, map_size=1 << 18) as cat:
        i = base
        while i < base + n:
            if i % 50 == 0:
                cat.put_many(make_record(j, f"w{base}/{j % 7}", metadata=pad) for j in range(i, i + 25))
                i += 25
            else:
                assert cat.put(make_record(i, f"w{base}/{i % 7}", metadata=pad))
                i += 1
    """
)

READER = textwrap.dedent(
    """
    import os, sys, time
    from cas.catalog import Catalog
    path, stop, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reads, last = 0, 0
    with Catalog(path, readonly=True) as cat:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            n = cat.stats()["records"]
            assert n >= last, (n, last)
            last = n
            for r in cat.list(limit=20):
                assert cat.get(r["id"]) == r
            cat.search("padding", limit=50)
            cat.names()
            reads += 1
            if os.path.exists(stop) and n == total:
                break
    print(reads, last)
    """
)


def _spawn(code: str, *args: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_writers_and_a_reader_in_separate_processes(tmp_path: Path) -> None:
    path = tmp_path / "c"
    n = 400
    with Catalog(path, map_size=1 << 18) as cat:  # created small; the writers grow it
        cat.put(make_record(10**6))
    stop = tmp_path / "stop"
    reader = _spawn(READER, path, stop, 2 * n + 1)
    writers = [_spawn(WRITER, path, base, n) for base in (0, 100_000)]
    outs = [w.communicate(timeout=120) for w in writers]
    stop.touch()
    r_out, r_err = reader.communicate(timeout=150)
    for w, (_out, err) in zip(writers, outs, strict=True):
        assert w.returncode == 0, err
    assert reader.returncode == 0, r_err
    reads, seen = map(int, r_out.split())
    assert reads > 0 and seen == 2 * n + 1
    with Catalog(path) as cat:
        s = cat.stats()
        assert s["records"] == 2 * n + 1
        assert s["map_size"] > 1 << 20
        for base in (0, 100_000):
            assert all(cat.get(rid(i)) is not None for i in range(base, base + n))
            assert len(cat.list(prefix=f"w{base}/", limit=1000)) == n


def test_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    """A writer holding LMDB's write lock makes another process's write wait, not fail."""
    path = tmp_path / "c"
    with Catalog(path) as cat:
        cat.put(make_record(1))
    holder = _spawn(
        textwrap.dedent(
            """
            import sys, time
            from cas.catalog import Catalog
            from cas.catalog.testing import make_record
            with Catalog(sys.argv[1]) as cat:
                def slow(w):
                    w.put(__import__("cas.catalog.record").catalog.record.normalize(make_record(2)))
                    print("locked", flush=True)
                    time.sleep(1.5)
                cat._write(slow, 1)
            """
        ),
        path,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    with Catalog(path) as cat:
        assert cat.put(make_record(3))
        waited = time.monotonic() - t0
        holder.communicate(timeout=30)
        assert holder.returncode == 0
        assert cat.get(rid(2)) is not None and cat.get(rid(3)) is not None
    assert waited > 0.5


def test_a_stream_of_batches_is_applied_as_the_same_events_and_stops_at_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a new machine takes a checkpoint: batches in few big transactions, giving what
    applying them one by one gives; a batch that does not validate raises, and what the
    transactions before it committed stays (real events: the state is a join)."""
    monkeypatch.setattr(cas.catalog.catalog, "STREAM_BATCH", 4)
    batches = [[{"op": "put", "record": make_record(n, f"s/{n}")} for n in range(k, k + 3)]
               for k in range(0, 12, 3)]  # fmt: skip
    batches[2].append({"op": "tag", "id": rid(1), "tags": {"stage": "prod"}, "stamp": "s1"})
    one_by_one = Catalog(tmp_path / "one", durable=False)
    for batch in batches:
        one_by_one.apply(batch)
    streamed = Catalog(tmp_path / "streamed", durable=False)
    assert streamed.apply_stream(iter(batches)) == 13
    assert streamed.dump() == one_by_one.dump()

    bad = [{"op": "put", "record": {**make_record(99, "s/bad"), "name": ""}}]
    partial = Catalog(tmp_path / "partial", durable=False)
    with pytest.raises(InvalidInput):
        partial.apply_stream(iter([batches[0], batches[1], bad, batches[3]]))
    # 4 events a transaction: the first two batches (6 events) committed at once
    assert sorted(r["name"] for r in partial.list(limit=100)) == [f"s/{n}" for n in range(6)]
    for c in (one_by_one, streamed, partial):
        c.close()


def test_a_big_stream_opens_the_environment_again_and_other_users_keep_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a stream of at least a tenth of ``STREAM_BATCH`` events the environment is
    closed and opened again (LMDB frees the dirty pages it kept only then): another
    ``Catalog`` of the process on the same folder reads and writes on, unaware."""
    monkeypatch.setattr(cas.catalog.catalog, "STREAM_BATCH", 40)
    first = Catalog(tmp_path / "cat", durable=False)
    other = Catalog(tmp_path / "cat", durable=False)
    other.put(make_record(100, "o/before"))
    before = first._engine.shared.env
    batches = [[{"op": "put", "record": make_record(n, f"s/{n}")}] for n in range(4)]
    assert first.apply_stream(iter(batches)) == 4
    assert first._engine.shared.env is not before  # opened again
    assert other.get(rid(100))["name"] == "o/before"
    other.put(make_record(101, "o/after"))
    assert {r["name"] for r in first.list(limit=10)} == {
        "o/before",
        "o/after",
        "s/0",
        "s/1",
        "s/2",
        "s/3",
    }
    first.close()
    assert other.get(rid(2))["name"] == "s/2"
    other.close()


def test_changes_since_a_mark_add_up_with_the_marked_state_to_the_catalog(
    tmp_path: Path,
) -> None:
    """What an incremental checkpoint is made of: the items that changed since a mark,
    applied over what the catalog held when marked, give the catalog."""
    from cas.catalog.catalog import item_event

    cat = Catalog(tmp_path / "cat", durable=False)
    for n in range(5):
        cat.put(make_record(n, f"m/{n}"))
    cat.tag(rid(0), {"stage": "dev"}, "2026-01-01T00:00:00.000000Z-a")
    assert cat.marked() is None and cat.changed("x") is None
    base: list[list[object]] = []
    cat.export(base.append, mark="base")
    assert cat.marked() == "base" and cat.changed("base") == 0
    cat.put(make_record(7, "m/7"))
    cat.put(make_record(0, "m/0"))  # already held: no change
    cat.tag(rid(1), {"stage": "prod"}, "2026-01-02T00:00:00.000000Z-b")
    cat.tag(rid(0), {"stage": "old"}, "2025-01-01T00:00:00.000000Z-c")  # loses: no change
    cat.delete(rid(2), "2026-01-03T00:00:00.000000Z-d")
    cat.put(make_record(8, "m/8"))
    cat.delete(rid(8), "2026-01-04T00:00:00.000000Z-e")  # put and gone since
    assert cat.changed("base") == 5  # p7, t1, d2, p8, d8
    since: list[list[object]] = []
    assert cat.export_changes(since.append, "other") is None and not since
    counts = cat.export_changes(since.append, "base")
    assert counts == {"tombstones": 2, "tags": 1, "records": 1}
    again = Catalog(tmp_path / "again", durable=False)
    again.apply([item_event(i) for i in base + since])
    assert again.dump() == cat.dump()
    assert cat.relabel("base", "named") and not cat.relabel("base", "x")
    assert cat.changed("named") == 5
    cat.rebuild([])  # a rebuild forgets the mark
    assert cat.marked() is None
    for c in (cat, again):
        c.close()


def test_a_catalog_of_format_2_is_read_and_upgraded_in_place(tmp_path: Path) -> None:
    import lmdb

    cat = Catalog(tmp_path / "cat", durable=False)
    cat.put(make_record(1, "old/one"))
    cat.close()
    env = lmdb.open(str(tmp_path / "cat"), max_dbs=32)  # as a cas of format 2 left it
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"changes", txn=txn))
        txn.put(b"format", b"2", db=env.open_db(b"meta", txn=txn))
    env.close()
    ro = Catalog(tmp_path / "cat", readonly=True)
    assert ro.get(rid(1))["name"] == "old/one" and ro.marked() is None
    assert ro.stats()["records"] == 1
    ro.close()
    rw = Catalog(tmp_path / "cat", durable=False)
    assert rw.dump()["meta"] == {"format": "3"}
    rw.put(make_record(2, "new/two"))
    rw.mark("m")
    rw.put(make_record(3, "new/three"))
    assert rw.changed("m") == 1
    rw.close()


def test_a_stream_marks_what_it_made_only_in_an_empty_catalog_and_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new machine's catalog filled from a whole checkpoint counts its changes from
    it: marked in the transaction that applied it, so that no write of another process
    lands between (it would be in neither the checkpoint nor the changes)."""
    batches = [[{"op": "put", "record": make_record(n, f"s/{n}")}] for n in range(4)]
    empty = Catalog(tmp_path / "empty", durable=False)
    empty.apply_stream(iter(batches), mark="w")
    assert empty.marked() == "w" and empty.changed("w") == 0
    held = Catalog(tmp_path / "held", durable=False)
    held.put(make_record(9, "x/9"))
    held.apply_stream(iter(batches), mark="w")
    assert held.marked() is None  # it holds more than the stream
    monkeypatch.setattr(cas.catalog.catalog, "STREAM_BATCH", 2)
    split = Catalog(tmp_path / "split", durable=False)
    split.apply_stream(iter(batches), mark="w")
    assert split.marked() is None  # others may have written between its transactions
    for c in (empty, held, split):
        c.close()


def test_a_stream_of_exactly_one_transaction_is_marked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cas.catalog.catalog, "STREAM_BATCH", 4)
    batches = [[{"op": "put", "record": make_record(n, f"s/{n}")}] for n in range(4)]
    cat = Catalog(tmp_path / "cat", durable=False)
    assert cat.apply_stream(iter(batches), mark="w") == 4
    assert cat.marked() == "w"
    cat.close()
