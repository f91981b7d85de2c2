"""The RefStore suite (refs/testing.py) on S3, GCS and Azure Blob, through the local
servers: compare-and-swap by the services' conditional requests (refs/cloud.py).

Each test gets a fresh bucket: the suite lists the root's parent to check that no
name escapes the root, so the parent must hold nothing else.

Azure: refs lists blobs with the SDK itself (``cas.refs.services.azure``), not with
adlfs, which has two gaps pinned below as regression tests: ``find("c/refs/a")``
answers the blob ``c/refs/a`` itself when there is one, not ``c/refs/a/b`` below it
(the name-tree check missed a child created concurrently), and ``find`` of a folder
whose name holds ``#`` answers ``[]`` (``list(prefix)`` missed its refs, and ``set``
of a name whose last part holds ``#`` looped for ever: its history folder read as
empty, so ``_fresh`` was False on every try).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from cas.refs import Conditional, LogEntry, NameConflict, RefError, RefStore, packed
from cas.refs.cloud import conditional_for
from cas.refs.files import Files
from cas.refs.history import History
from cas.refs.log import pruned_path
from cas.refs.packed import RefState
from cas.refs.stress import counter_of, increment
from cas.refs.testing import A, B, C, D, MakeRefStore, RefStoreTests, assert_chain
from cas.testing.servers import Server

pytestmark = pytest.mark.slow  # about two minutes for the three servers


def _make(server: Server) -> MakeRefStore:
    bucket = server.new_bucket()
    fs = server.filesystem()

    def make(**options: Any) -> RefStore:
        options.setdefault("conditional", conditional_for(fs))
        return RefStore(fs, f"{bucket}/.cas", **options)

    return make


class _RacingRead(Conditional):
    """Delegates to ``inner``; the first read of ``path`` runs ``race`` before answering."""

    def __init__(self, inner: Conditional, path: str, race: Callable[[], object]) -> None:
        self.inner, self.path, self.race = inner, path, race

    def read(self, path: str) -> tuple[bytes, str] | None:
        got = self.inner.read(path)
        if path == self.path and self.race is not None:
            race, self.race = self.race, None  # type: ignore[assignment]
            race()
        return got

    def create(self, path: str, data: bytes) -> bool:
        return self.inner.create(path, data)

    def replace(self, path: str, data: bytes, version: str) -> bool:
        return self.inner.replace(path, data, version)

    def remove(self, path: str, version: str) -> bool:
        return self.inner.remove(path, version)


class ShortcutTests:
    """What the request-saving paths of RefStore.set must get right (refs/store.py)."""

    def test_a_version_read_before_an_a_b_a_is_written_again(
        self, make_refstore: MakeRefStore
    ) -> None:
        """The ref goes A -> B -> A between a writer's read and its claim: GCS
        generations, Azure ETags and local stamps change, the value does not."""
        first = make_refstore()
        first.set("main", A)
        other = make_refstore()

        def a_b_a() -> None:
            other.set("main", B)
            other.set("main", A)

        path = f"{first.root}/refs/main"
        racing = make_refstore(conditional=_RacingRead(first.conditional, path, a_b_a))
        assert racing.set("main", C, expected=A) == A
        assert first.read("main") == C
        assert [(e.old, e.new) for e in first.log("main")] == [(A, C), (B, A), (A, B), (None, A)]

    def test_a_remembered_entry_that_is_no_longer_the_newest(
        self, make_refstore: MakeRefStore
    ) -> None:
        mine, other = make_refstore(), make_refstore()
        mine.set("main", A)
        other.set("main", B)
        other.set("main", A)  # back to what `mine` remembers: its guess of entry 1 is wrong
        assert mine.read("main") == A
        assert mine.set("main", C, expected=A) == A
        assert [e.new for e in mine.log("main")] == [C, A, B, A]
        assert_chain(mine.log("main"))

    def test_a_pruned_name_created_again(self, make_refstore: MakeRefStore) -> None:
        rs = make_refstore()
        for value in (A, B, C):
            rs.set("gone", value)
        rs.delete("gone")
        assert rs.prune_log("gone", time.time() + 10) == 3  # entries 1-3 go, 4 stays
        assert rs.fs.exists(pruned_path(rs.root, "gone"))
        last = C
        for store in (rs, make_refstore()):  # one that remembers entry 4, one that does not
            assert store.read("gone") is None
            assert store.set("gone", D, expected=None) is None  # entry 1 is free: not for us
            assert [(e.old, e.new) for e in store.log("gone")][:2] == [(None, D), (last, None)]
            assert_chain(store.log("gone"))
            store.delete("gone")
            last = D
        assert len(rs.log("gone")) == 5  # entries 4 to 8

    def test_threads_sharing_one_store_lose_no_update(self, make_refstore: MakeRefStore) -> None:
        """Threads of one store share what it remembers (its newest entries, its folders)."""
        rs = make_refstore()
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                increment(rs, "shared/counter", 10)
                rs.set(f"shared/{n}", A, expected=None)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        entries = rs.log("shared/counter")
        assert len(entries) == 40 and counter_of(rs.read("shared/counter")) == 40
        assert_chain(entries)
        assert len(rs.list("shared/")) == 5

    def test_writers_beside_a_pruner_lose_no_update(self, make_refstore: MakeRefStore) -> None:
        """Claims that land in slots pruning freed are taken back, whichever path found them."""
        pruner, stop = make_refstore(), threading.Event()
        errors: list[BaseException] = []

        def prune() -> None:
            while not stop.is_set():
                try:
                    pruner.prune_log("pruned/counter", time.time() + 10)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    return

        def work() -> None:
            try:
                increment(make_refstore(), "pruned/counter", 8)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        pruning = threading.Thread(target=prune)
        pruning.start()
        workers = [threading.Thread(target=work) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        stop.set()
        pruning.join()
        assert errors == []
        assert counter_of(pruner.read("pruned/counter")) == 24
        entries = pruner.log("pruned/counter")
        assert_chain(entries)
        assert entries[0].new == pruner.read("pruned/counter")

    def test_a_folder_remembered_that_became_a_ref(self, make_refstore: MakeRefStore) -> None:
        mine, other = make_refstore(), make_refstore()
        mine.set("a/b", A)  # `mine` now knows "a" as a folder
        other.delete("a/b")
        other.set("a", B)
        with pytest.raises(NameConflict) as caught:
            mine.set("a/c", C)  # the first check trusts the memory, the second does not
        assert caught.value.other == "a"
        assert mine.list() == ["a"] and mine.read("a/c") is None
        with pytest.raises(NameConflict):
            mine.set("a/d", C)  # and it is forgotten
        assert mine.log("a/d") == []


class TestS3RefStore(RefStoreTests, ShortcutTests):
    @pytest.fixture
    def make_refstore(self, s3_server: Server) -> MakeRefStore:
        return _make(s3_server)


class TestGCSRefStore(RefStoreTests, ShortcutTests):
    @pytest.fixture
    def make_refstore(self, gcs_server: Server) -> MakeRefStore:
        return _make(gcs_server)


class TestLocalShortcuts(ShortcutTests):
    @pytest.fixture
    def make_refstore(self, tmp_path: Path) -> MakeRefStore:
        def make(**options: Any) -> RefStore:
            return RefStore(LocalFileSystem(), str(tmp_path / ".cas"), fsync=False, **options)

        return make


class TestMemoryShortcuts(ShortcutTests):
    @pytest.fixture
    def make_refstore(self) -> MakeRefStore:
        root = f"/shortcuts-{uuid.uuid4().hex}"

        def make(**options: Any) -> RefStore:
            return RefStore(fsspec.filesystem("memory"), root, **options)

        return make


class TestAzureRefStore(RefStoreTests, ShortcutTests):
    @pytest.fixture
    def make_refstore(self, azure_server: Server) -> MakeRefStore:
        return _make(azure_server)

    def test_hash_in_a_folder_name(self, rs: RefStore) -> None:
        """adlfs find() of a folder whose name holds '#' answers []."""
        rs.set("x#/y", A)
        assert rs.list("x#/") == ["x#/y"]
        assert rs.list() == ["x#/y"]

    def test_hash_at_the_end_of_a_name_returns(self, make_refstore: MakeRefStore) -> None:
        """set() of such a name looped for ever when history was listed through adlfs."""
        make_refstore().set("x/y#", A)
        rs = make_refstore()  # knows nothing of it: lists its history
        rs.set("x/y#", B, expected=A)
        assert rs.read("x/y#") == B
        assert [(e.old, e.new) for e in rs.log("x/y#")] == [(A, B), (None, A)]
        assert rs.log_names() == ["x/y#"]

    def test_a_child_written_behind_a_ref_is_seen(self, rs: RefStore) -> None:
        """adlfs find('refs/a') answers the blob 'refs/a' itself, not 'refs/a/b'."""
        rs.set("a", A)
        rs.fs.pipe_file(f"{rs.root}/refs/a/b", (A + "\n").encode())  # as a racing writer would
        assert rs._conflicting("a") == "a/b"


class _Blind(Files):
    """Lists nothing, as adlfs did for a folder whose name holds '#'."""

    def listdir(self, folder: str) -> list[str]:
        return []

    def find(self, top: str, limit: int | None = None) -> list[str]:
        return []


def _blind_store(**options: Any) -> RefStore:
    fs = fsspec.filesystem("memory")
    rs = RefStore(fs, f"/blind-{uuid.uuid4().hex}", **options)
    rs._files = _Blind(fs)
    rs._log = History(rs._files, rs.root)
    return rs


def test_a_claim_lost_to_an_unlisted_entry_reads_that_entry_and_goes_on() -> None:
    """A lost claim reads the entry that beat it, not the listing: an entry the listing
    misses is found that way, and the update builds on it (a call that never returns
    would be a defect)."""
    rs = _blind_store(lock_timeout=0.3)
    RefStore(rs.fs, rs.root).set("x", A)  # entry 1 exists, the listing never shows it
    started = time.monotonic()
    assert rs.set("x", B, expected=A) == A
    assert time.monotonic() - started < 5
    assert rs.read("x") == B
    assert [(e.old, e.new) for e in RefStore(rs.fs, rs.root).log("x")] == [(A, B), (None, A)]


def test_a_listing_that_misses_entries_after_pruning_ends_with_an_error() -> None:
    rs = _blind_store()
    rs.conditional.create(pruned_path(rs.root, "y"), b"{}\n")  # as prune_log leaves it
    with pytest.raises(RefError, match="listing misses files"):
        rs.set("y", A)  # entry 1 is ours, yet the listing says the history is empty
    assert rs.read("y") is None


class TestRefState:
    """``RefStore.state``: every ref and history entry from two listings and a snapshot
    (refs/packed.py); a file is taken from the snapshot only when the listing shows it
    unchanged, so a stale or damaged snapshot costs reads, never a wrong answer."""

    @staticmethod
    def _same_as_reads(rs: RefStore, state: RefState) -> None:
        assert state.items() == rs.items()
        by_name: dict[str, list[LogEntry]] = {}
        for name, _, entry in state.history():
            by_name.setdefault(name, []).append(entry)
        assert sorted(by_name) == rs.log_names()
        for name, entries in by_name.items():
            assert entries[::-1] == rs.log(name)

    def test_state_is_what_reads_give_and_a_snapshot_spares_them(
        self, cloud_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rs = _make(cloud_server)()
        rs.set("models/a", A, expected=None)
        rs.set("models/a", B, expected=A)
        rs.set("data/x", C, expected=None)
        rs.set("gone", D, expected=None)
        rs.delete("gone")
        monkeypatch.setattr(packed, "WRITE_AFTER", 1)
        first = rs.state()
        assert first is not None
        self._same_as_reads(rs, first)
        assert first.read == 2 + 5  # two refs, five history entries
        again = rs.state()  # the snapshot the first one wrote holds them all
        assert again is not None and again.read == 0
        self._same_as_reads(rs, again)
        # A ref that moved (and its new entry) is read again, at its new value; one that
        # returned to bytes it held before (an S3 ETag repeats then) reads right too.
        rs.set("models/a", C, expected=B)
        rs.set("data/x", D, expected=C)
        rs.set("data/x", C, expected=D)
        moved = rs.state()
        # Two refs and three entries; S3 spares data/x (its ETag is the MD5 of C again).
        assert moved is not None and moved.read in (4, 5)
        self._same_as_reads(rs, moved)
        assert dict(moved.items())["models/a"] == C

    def test_a_damaged_snapshot_is_skipped(
        self, s3_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        rs = _make(s3_server)()
        for i in range(3):
            rs.set(f"n{i}", A, expected=None)
        monkeypatch.setattr(packed, "WRITE_AFTER", 1)
        assert rs.state() is not None
        folder = f"{rs.root}/logs/{packed.FOLDER}"
        (snapshot,) = rs.fs.ls(folder, detail=False)
        rs.fs.pipe_file(snapshot, b"CASREFS1\nnot a snapshot")
        rs.set("n0", B, expected=A)
        state = rs.state()
        assert state is not None and state.read == 3 + 4  # everything, read again
        self._same_as_reads(rs, state)

    def test_local_and_memory_stores_read_as_before(self, tmp_path: Path) -> None:
        local = RefStore(LocalFileSystem(), str(tmp_path / ".cas"), fsync=False)
        memory = RefStore(fsspec.filesystem("memory"), f"/state-{uuid.uuid4().hex}")
        for rs in (local, memory):
            rs.set("a", A, expected=None)
            assert rs.state() is None  # no version tokens in their listings
