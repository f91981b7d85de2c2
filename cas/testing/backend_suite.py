"""The conformance suite every storage backend runs: subclass and provide a fixture.

::

    class TestMyBackend(BackendTests, CrossProcessTests):
        @pytest.fixture
        def backend(self, tmp_path):
            return Backend("mine", url, options, raw_fs, raw_root)

Each test gets a fresh, empty root and checks one property through the public entry
point, ``cas.open_store(url, **options)``: round trips (bytes, and content cut into
chunks), dedup, verify on read, ``has_many`` from listings, no partial object ever
listed, refs compare-and-swap with a chained history, four writers racing on one ref
(processes, or threads where only one process sees the root) losing no update, saves
from many threads, a catalog rebuilt by ``reindex`` that answers as before, a second
machine (another catalog cache) that sees the first one's artifacts, tags and
deletions, and a dedup hit that refreshes an old object's age. ``CrossProcessTests``
adds what needs a root other processes see: a writer killed with SIGKILL mid-write
leaves no partial object under a final name.

The workers at the end are importable, so spawned processes can run them whatever
pytest's import mode is.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import cas
from cas import refs as _refs
from cas.api.artifact_store import ArtifactStore
from cas.objects import writer as objectwriter
from cas.objects.ids import ObjectId, blob_id
from cas.objects.space import object_path
from cas.refs.stress import counter_id, counter_of, increment, run_increments
from cas.refs.testing import assert_chain

MIB = 1 << 20


@dataclass
class Backend:
    """One fresh root: where it is, how a store reaches it, and a raw view of its files.

    ``raw`` is an fsspec filesystem that reaches the root's files behind the store's
    back (``raw_root`` is the root inside it). ``processes``: whether another process
    sees the same files (not ``memory://``).
    """

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    raw: Any = None
    raw_root: str = ""
    processes: bool = True

    def open(self, **kwargs: Any) -> ArtifactStore:
        return cas.open_store(self.url, fsync=False, **self.options, **kwargs)

    def raw_path(self, rel: str) -> str:
        return f"{self.raw_root}/{rel}"


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _flip_last_byte(backend: Backend, rel: str) -> None:
    path = backend.raw_path(rel)
    data = bytearray(backend.raw.cat_file(path))
    data[-1] ^= 0x01
    backend.raw.rm_file(path)  # local objects are read-only files
    backend.raw.pipe_file(path, bytes(data))


class BackendTests:
    """Every property a storage backend must have, through ``cas.open_store``."""

    @pytest.fixture
    def backend(self) -> Backend:
        """Override: a :class:`Backend` on a fresh, empty root."""
        raise NotImplementedError("subclasses provide the backend fixture")

    @pytest.fixture
    def store_of(self) -> Iterator[Any]:
        """``store_of(backend)``: open a store, closed at the end of the test."""
        opened: list[ArtifactStore] = []

        def open_one(backend: Backend, **kwargs: Any) -> ArtifactStore:
            store = backend.open(**kwargs)
            opened.append(store)
            return store

        yield open_one
        for store in opened:
            store.close()

    @pytest.fixture
    def store(self, backend: Backend, store_of: Any) -> ArtifactStore:
        opened: ArtifactStore = store_of(backend)
        return opened

    # -- round trips ------------------------------------------------------------------

    def test_round_trip(self, backend: Backend, store: ArtifactStore, store_of: Any) -> None:
        values: dict[str, Any] = {
            "empty": b"",
            "one": b"x",
            "random": _random(300_000, 1),
            "text": "héllo " * 1000,
            "json": {"auc": 0.91, "layers": [1, 2, 3]},
        }
        ids = {name: store.save(value, f"rt/{name}") for name, value in values.items()}
        other = store_of(backend)  # a new store object: nothing cached in memory
        for name, value in values.items():
            assert store.load(f"rt/{name}") == value
            assert other.load(ids[name]) == value
        assert other.list_artifacts("rt/") == sorted(f"rt/{n}" for n in values)

    def test_multi_chunk_round_trip(
        self, backend: Backend, store: ArtifactStore, store_of: Any
    ) -> None:
        data = _random(6 * MIB + 12_345, 2)  # above the 4 MiB threshold: chunked
        store.save(data, "big")
        content = store.get_metadata("big")["content_id"]
        assert content == blob_id(data)  # the id is the b3sum of the bytes, however stored
        assert store.space.kind(content) == "chunks"
        other = store_of(backend)
        assert other.load("big") == data
        with other.space.open(content) as stream:
            assert stream.read() == data

    # -- dedup, verify ----------------------------------------------------------------

    def test_dedup_stores_content_once(self, store: ArtifactStore) -> None:
        for data in (_random(50_000, 3), _random(5 * MIB, 4)):
            before = set(store.space)
            first = store.save(data, f"a/{len(data)}")
            added = set(store.space) - before
            second = store.save(data, f"b/{len(data)}")
            added_again = set(store.space) - before - added
            assert first != second  # two records
            assert (
                store.get_metadata(first)["content_id"] == store.get_metadata(second)["content_id"]
            )
            assert added_again == {ObjectId(second)}  # only the second record is new

    def test_verify_on_read(self, backend: Backend, store: ArtifactStore, store_of: Any) -> None:
        data = _random(64_000, 5)  # incompressible: stored raw, so any flip is in content
        store.save(data, "victim")
        content = store.get_metadata("victim")["content_id"]
        _flip_last_byte(backend, object_path(content))
        with pytest.raises(cas.IntegrityError) as caught:
            store_of(backend).load("victim")
        assert content in str(caught.value)

    def test_has_many_lists_instead_of_asking_each(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        present = {store.space.put(_random(100, 100 + i)) for i in range(30)}
        absent = {blob_id(_random(100, 1000 + i)) for i in range(30)}

        def no_stat(rel: str) -> None:
            raise AssertionError(f"has_many asked about {rel} one by one")

        monkeypatch.setattr(store.storage, "stat", no_stat)
        assert store.space.has_many(present | absent) == present

    # -- atomic visibility ------------------------------------------------------------

    def test_no_partial_object_is_ever_listed(self, store: ArtifactStore) -> None:
        stop = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                for i in range(12):
                    store.space.put(_random(random.choice((10_000, 900_000, 5 * MIB)), 10 + i))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
            finally:
                stop.set()

        writer = threading.Thread(target=write)
        writer.start()
        checked: set[ObjectId] = set()
        while not stop.is_set():
            checked |= _check_listed(store, checked)
        writer.join()
        assert not errors, errors
        _check_listed(store, checked)
        assert len(set(store.space)) >= 12

    # -- refs ---------------------------------------------------------------------------

    def test_refs_compare_and_swap_and_history(self, store: ArtifactStore) -> None:
        first = store.save(b"1", "models/r")
        second = store.save(b"2", "models/r")
        with pytest.raises(_refs.RefConflict) as caught:
            store.refs.set("models/r", counter_id(7), expected=first)  # stale
        assert caught.value.actual == second
        assert store.refs.read("models/r") == second
        store.refs.set("models/r", counter_id(8), expected=second)
        entries = store.refs.log("models/r")
        assert [e.new for e in entries] == [counter_id(8), second, first]
        assert entries[-1].old is None
        assert_chain(entries)

    def test_racing_writers_lose_no_update(self, backend: Backend) -> None:
        """Four processes (threads where the files are visible to one process only)."""
        workers, count = 4, 6
        rs = open_refs(backend.url, backend.options)  # the root exists before they start
        factory = functools.partial(open_refs, backend.url, backend.options)
        if backend.processes:
            lost = run_increments(factory, "race/counter", workers, count)
        else:
            with ThreadPoolExecutor(workers) as pool:
                lost = list(
                    pool.map(lambda _: increment(factory(), "race/counter", count), range(workers))
                )
        assert counter_of(rs.read("race/counter")) == workers * count
        entries = rs.log("race/counter")
        assert len(entries) == workers * count
        assert_chain(entries)
        if backend.processes:  # threads on memory:// are serialized by the GIL: rarely race
            assert sum(lost) > 0, "the workers never raced: the test proved nothing"

    def test_saves_from_threads(
        self, backend: Backend, store: ArtifactStore, store_of: Any
    ) -> None:
        """One store serves many threads (how many small artifacts go up at once)."""
        items = {f"threads/{i:02d}": _random(2000, 200 + i) for i in range(24)}
        with ThreadPoolExecutor(8) as pool:
            ids = dict(zip(items, pool.map(lambda n: store.save(items[n], n), items), strict=True))
        assert store.list_artifacts("threads/") == sorted(items)
        other = store_of(backend)
        assert {a.name: a.id for a in other.catalog.list(limit=1000)} == ids
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(other.load, items)) == list(items.values())

    # -- catalog --------------------------------------------------------------------------

    def test_reindex_reproduces_the_answers(self, store: ArtifactStore) -> None:
        _populate(store)
        before = _answers(store)
        report = store.reindex()
        assert report["dangling_refs"] == []
        assert _answers(store) == before

    def test_second_machine_sees_artifacts_tags_and_deletions(
        self,
        backend: Backend,
        store_of: Any,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "machine-a"))
        first = store_of(backend)
        ids = _populate(first)
        monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "machine-b"))
        second = store_of(backend)
        assert _answers(second) == _answers(first)
        # More from the first machine: the second sees it after its sync.
        first.catalog.tag(ids["model"], stage="archived")
        first.delete("data/train")
        later = first.save(b"later", "data/later", tags={"stage": "dev"})
        second.sync()
        assert _answers(second) == _answers(first)
        assert second.catalog.get(later) is not None
        assert second.catalog.get(ids["model"]).tags["stage"] == "archived"
        assert not second.exists("data/train")

    # -- freshen ------------------------------------------------------------------------

    def test_dedup_hit_refreshes_an_old_object(
        self, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = _random(20_000, 6)
        oid = store.space.put(data)
        before = store.storage.stat(object_path(oid))
        assert before is not None
        time.sleep(1.1)  # object stores keep whole seconds
        monkeypatch.setattr(objectwriter, "FRESHEN_AFTER", 0.0)  # "old": any age
        assert store.space.put(data) == oid
        after = store.storage.stat(object_path(oid))
        assert after is not None and after.mtime > before.mtime
        assert after.size == before.size
        assert store.space.get(oid) == data


class CrossProcessTests:
    """For roots that other processes see too (all but ``memory://``): a writer killed
    with SIGKILL in the middle of its writes leaves no partial object under a final name."""

    def test_killed_writer_leaves_nothing_partial(
        self, backend: Backend, store: ArtifactStore
    ) -> None:
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=write_forever, args=(backend.url, backend.options))
        child.start()
        try:
            deadline = time.monotonic() + 60
            while len(set(store.space)) < 2 and child.is_alive():
                assert time.monotonic() < deadline, "the writer never wrote"
                time.sleep(0.05)
            time.sleep(random.uniform(0.0, 0.3))  # somewhere in the middle of a write
        finally:
            assert child.pid is not None
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)
        listed = _check_listed(store, set())
        assert listed, "nothing was written before the kill"


# -- helpers ------------------------------------------------------------------------------


def _check_listed(store: ArtifactStore, known: set[ObjectId]) -> set[ObjectId]:
    """Every listed object (not in ``known``) is complete: its size is what a read returns
    and it verifies. Returns the ids checked."""
    seen: set[ObjectId] = set()
    for oid, st in store.space.iter_stats():
        if oid in known:
            continue
        raw = store.storage.read(object_path(oid))
        assert st.size == len(raw) > 0, f"{oid}: listed {st.size} bytes, read {len(raw)}"
        store.space.read_object(oid)  # raises IntegrityError if partial
        seen.add(oid)
    return seen


def _populate(store: ArtifactStore) -> dict[str, str]:
    ids = {
        "data": store.save(b"rows", "data/train", tags={"stage": "dev", "team": "fraud"}),
        "feat": store.save({"cols": 3}, "features/fraud_v1", tags={"team": "fraud"}),
    }
    ids["model"] = store.save(
        b"weights", "models/fraud_detector", parent_ids=[ids["data"], ids["feat"]],
        tags={"stage": "production", "team": "fraud"}, metadata={"auc": 0.91},
    )  # fmt: skip
    store.catalog.tag(ids["feat"], stage="staging")
    gone = store.save(b"scratch", "tmp/scratch")
    store.delete(gone)
    return ids


def _answers(store: ArtifactStore) -> dict[str, Any]:
    """What a user asks the catalog and the names, as plain values."""
    model = store.refs.read("models/fraud_detector")
    lineage = store.catalog.get_lineage(model, depth=None) if model else {}
    return {
        "names": store.list_artifacts(),
        "list": sorted((a.id, a.name, tuple(sorted(a.tags.items()))) for a in store.catalog.list()),
        "production": sorted(a.name for a in store.catalog.search("stage:production")),
        "fraud": sorted(a.name for a in store.catalog.search("fraud")),
        "lineage": {side: sorted(a.id for a in items) for side, items in lineage.items()},
    }


# -- workers for spawned processes ------------------------------------------------------------


def open_refs(url: str, options: dict[str, Any]) -> _refs.RefStore:
    """The RefStore of the store at ``url``, opened in this process."""
    return cas.open_store(url, fsync=False, **options).refs


def write_forever(url: str, options: dict[str, Any]) -> None:
    """Write new objects of 0.3 to 3 MiB until killed."""
    store = cas.open_store(url, fsync=False, **options)
    rng = random.Random(uuid.uuid4().int)
    while True:
        store.space.put(rng.randbytes(rng.randint(300_000, 3 * MIB)))
