"""The conformance suite of :class:`cas.storage.Storage`: subclass and provide fixtures.

::

    class TestMyStorage(StorageTests):
        @pytest.fixture
        def storage(self, tmp_path):
            return open_storage(str(tmp_path / "root"))     # a fresh, empty root

        @pytest.fixture
        def broken_storage(self, tmp_path):
            return ...                                      # one whose service fails

Each test checks one promise of the contract (``cas/storage/base.py``) that cas relies
on: reads whole, by head and by ranges (absent: ``FileNotFoundError``); atomic writes
that create and replace, durable or not, never seen partial; ``create`` that writes only
where nothing is; ``stat``, ``touch``, ``delete``, ``delete_many``; ``walk`` and
``listdir`` (relative paths, stats, temporary files recognizable by
:data:`~cas.storage.TEMP_PREFIX`); ``exists``, ``is_empty``, ``sync``; a
``conditional()`` that acts on the same files; capability flags of the right types.

And the rule a garbage collector lives by: absence is never a failure, and a failure
is never absence. Every call on ``broken_storage`` must raise :attr:`failure` (by
default :class:`cas.BackendError`), never answer ``None``, ``False``, ``[]`` or
``FileNotFoundError``. A backend with a known gap names it in :attr:`known_failures`:
that call's test is then a strict xfail with the reason, never a skip.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Final

import pytest

from cas import refs
from cas.errors import BackendError
from cas.storage import TEMP_PREFIX, Stat, Storage

__all__ = ["BROKEN_CALLS", "StorageTests"]

#: Every call of the contract that asks the service something, by name.
BROKEN_CALLS: Final[dict[str, Callable[[Storage], object]]] = {
    "read": lambda s: s.read("f/x"),
    "read_head": lambda s: s.read_head("f/x", 4),
    "read_range": lambda s: s.read_range("f/x", 1, 2),
    "read_ranges": lambda s: s.read_ranges("f/x", [(0, 1), (2, 3)]),
    "stat": lambda s: s.stat("f/x"),
    "exists": lambda s: s.exists("f/x"),
    "write_atomic": lambda s: s.write_atomic("f/x", b"data"),
    "write_atomic_not_durable": lambda s: s.write_atomic("f/x", b"data", durable=False),
    "create": lambda s: s.create("f/x", b"data"),
    "touch": lambda s: s.touch("f/x"),
    "delete": lambda s: s.delete("f/x"),
    "delete_many": lambda s: s.delete_many(["f/x", "f/y"]),
    "walk": lambda s: list(s.walk("f")),
    "walk_root": lambda s: list(s.walk("")),
    "listdir": lambda s: s.listdir("f"),
    "is_empty": lambda s: s.is_empty(),
}


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


class StorageTests:
    """Every promise of :class:`cas.storage.Storage`, on the storage a subclass supplies.

    Fixtures a subclass provides: ``storage`` (a fresh, empty root) and
    ``broken_storage`` (one whose every call fails: a service that cannot be reached,
    a bucket that does not exist; it may be parametrized).
    """

    #: What every call on ``broken_storage`` raises (never ``FileNotFoundError``).
    failure: ClassVar[type[OSError]] = BackendError
    #: The finest step of this storage's modification times, in seconds.
    mtime_resolution: ClassVar[float] = 1.0
    #: Calls of :data:`BROKEN_CALLS` this backend gets wrong, with the bug: strict xfails.
    #: Keyed by call name, or by the test's parameter id (``"missing-bucket-read_range"``).
    known_failures: ClassVar[dict[str, str]] = {}
    #: Tests (by method name) this backend fails, with the bug: strict xfails.
    known_bugs: ClassVar[dict[str, str]] = {}

    @pytest.fixture
    def storage(self) -> Storage:
        raise NotImplementedError("a subclass provides the storage fixture")

    @pytest.fixture
    def broken_storage(self) -> Storage:
        raise NotImplementedError("a subclass provides the broken_storage fixture")

    @pytest.fixture(autouse=True)
    def _known_bug(self, request: pytest.FixtureRequest) -> None:
        reason = self.known_bugs.get(request.function.__name__)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))

    # -- reads ------------------------------------------------------------------------

    def test_read_round_trip(self, storage: Storage) -> None:
        data = bytes(range(256)) * 41
        storage.write_atomic("a/b/file", data)
        assert storage.read("a/b/file") == data
        storage.write_atomic("empty", b"")
        assert storage.read("empty") == b""

    def test_read_absent(self, storage: Storage) -> None:
        storage.write_atomic("a/there", b"x")
        for rel in ("a/absent", "absent/file", "absent"):
            with pytest.raises(FileNotFoundError):
                storage.read(rel)
            with pytest.raises(FileNotFoundError):
                storage.read_head(rel, 10)
            with pytest.raises(FileNotFoundError):
                storage.read_range(rel, 0, 1)
            with pytest.raises(FileNotFoundError):
                storage.read_ranges(rel, [(0, 1), (1, 2)])

    def test_read_head(self, storage: Storage) -> None:
        data = _data(10_000, seed=1)
        storage.write_atomic("h", data)
        assert storage.read_head("h", 1) == data[:1]
        assert storage.read_head("h", 4096) == data[:4096]
        assert storage.read_head("h", 10_000) == data
        assert storage.read_head("h", 1 << 20) == data  # all of a shorter file

    def test_read_range_exact(self, storage: Storage) -> None:
        data = _data(100_000, seed=2)
        storage.write_atomic("r", data)
        for start, length in [(0, 1), (0, 100_000), (1, 99_999), (4095, 2), (99_999, 1),
                              (50_000, 12_345)]:  # fmt: skip
            got = storage.read_range("r", start, length)
            assert got == data[start : start + length], (start, length, len(got))

    def test_read_ranges_exact_and_in_order(self, storage: Storage) -> None:
        data = _data(200_000, seed=3)
        storage.write_atomic("packs/p", data)
        spans = [(150_000, 150_100), (0, 10), (5, 70_000), (199_999, 200_000), (0, 10)]
        assert storage.read_ranges("packs/p", spans) == [data[s:e] for s, e in spans]
        assert storage.read_ranges("packs/p", [(7, 9)]) == [data[7:9]]

    def test_reads_see_a_replacement(self, storage: Storage) -> None:
        # Whole and head reads only: cas range-reads write-once files (packs) alone, and
        # a local storage keeps those open, so it may range-read a replaced file's bytes.
        storage.write_atomic("v", b"first version")
        assert storage.read("v") == b"first version"
        storage.write_atomic("v", b"SECOND")
        assert storage.read("v") == b"SECOND"
        assert storage.read_head("v", 3) == b"SEC"

    # -- writes -----------------------------------------------------------------------

    def test_write_atomic_creates_and_replaces(self, storage: Storage) -> None:
        storage.write_atomic("deep/er/still/file", b"one")
        assert storage.read("deep/er/still/file") == b"one"
        storage.write_atomic("deep/er/still/file", b"two, longer")
        assert storage.read("deep/er/still/file") == b"two, longer"
        storage.write_atomic("deep/er/still/file", b"3")
        assert storage.read("deep/er/still/file") == b"3"
        st = storage.stat("deep/er/still/file")
        assert st is not None and st.size == 1

    def test_write_not_durable_then_sync(self, storage: Storage) -> None:
        storage.sync()  # nothing written yet: no error
        for i in range(5):
            storage.write_atomic(f"batch/{i}", b"b%d" % i, durable=False)
        storage.write_atomic("batch/0", b"replaced", durable=False)
        assert storage.read("batch/1") == b"b1"  # readable before the sync
        storage.sync()
        storage.sync()  # idempotent
        assert storage.read("batch/0") == b"replaced"
        assert [storage.read(f"batch/{i}") for i in range(1, 5)] == [
            b"b%d" % i for i in range(1, 5)
        ]
        storage.write_atomic("batch/late", b"late")  # a durable write after the batch
        storage.sync()
        assert storage.read("batch/late") == b"late"

    def test_writes_leave_no_temporary_files(self, storage: Storage) -> None:
        storage.write_atomic("t/a", b"1")
        storage.write_atomic("t/a", b"2")
        storage.write_atomic("t/b", b"3", durable=False)
        storage.create("t/c", b"4")
        storage.create("t/c", b"5")
        storage.sync()
        assert sorted(rel for rel, _ in storage.walk("")) == ["t/a", "t/b", "t/c"]
        assert storage.listdir("t") == ["a", "b", "c"]

    def test_no_partial_file_is_ever_seen(self, storage: Storage) -> None:
        """A reader racing writers sees nothing, the old content or the new, whole."""
        old, new = _data(1 << 20, seed=4), _data(3 << 20, seed=5)
        storage.write_atomic("race/replaced", old)
        stop = threading.Event()
        seen: dict[str, set[bytes]] = {"race/replaced": set(), "race/created": set()}
        bad: list[str] = []

        def reader() -> None:
            while not stop.is_set():
                for rel, allowed in (("race/replaced", (old, new)), ("race/created", (new,))):
                    try:
                        got = storage.read(rel)
                    except FileNotFoundError:
                        if rel == "race/replaced":
                            bad.append(f"{rel} vanished while it was replaced")
                        continue
                    if got not in allowed:
                        bad.append(f"{rel}: {len(got)} bytes, neither version")
                    seen[rel].add(got[:8])
                    st = storage.stat(rel)
                    if st is not None and st.size not in {len(a) for a in allowed}:
                        bad.append(f"{rel}: stat says {st.size} bytes")

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            time.sleep(0.05)
            storage.write_atomic("race/replaced", new)
            storage.write_atomic("race/created", new)
            time.sleep(0.05)
        finally:
            stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert not bad, bad[:5]
        assert seen["race/replaced"], "the reader never read"
        assert storage.read("race/replaced") == new and storage.read("race/created") == new

    def test_create(self, storage: Storage) -> None:
        assert storage.create("objects/ab/cdef", b"first") is True
        assert storage.read("objects/ab/cdef") == b"first"
        before = storage.stat("objects/ab/cdef")
        assert storage.create("objects/ab/cdef", b"second, longer") is False
        assert storage.read("objects/ab/cdef") == b"first"  # nothing written
        assert storage.stat("objects/ab/cdef") == before
        storage.write_atomic("objects/ab/written", b"w")
        assert storage.create("objects/ab/written", b"other") is False
        assert storage.read("objects/ab/written") == b"w"
        assert storage.delete("objects/ab/cdef") is True
        assert storage.create("objects/ab/cdef", b"again") is True
        assert storage.read("objects/ab/cdef") == b"again"

    # -- stat, touch, delete ----------------------------------------------------------

    def test_stat(self, storage: Storage) -> None:
        assert storage.stat("nothing") is None
        assert storage.stat("no/such/folder/file") is None
        before = time.time()
        storage.write_atomic("s/file", _data(1234))
        after = time.time()
        st = storage.stat("s/file")
        assert isinstance(st, Stat)
        assert st.size == 1234 and isinstance(st.size, int)
        assert isinstance(st.mtime, float)
        slack = self.mtime_resolution + 2.0  # a server's clock and rounding
        assert before - slack <= st.mtime <= after + slack, (before, st.mtime, after)
        assert storage.stat("s/absent") is None

    def test_touch_refreshes_mtime(self, storage: Storage) -> None:
        storage.write_atomic("old", b"keep me")
        first = storage.stat("old")
        assert first is not None
        time.sleep(self.mtime_resolution * 1.2 + 0.05)
        assert storage.touch("old") is True
        second = storage.stat("old")
        assert second is not None
        assert second.mtime > first.mtime, (first, second)
        assert second.size == first.size and storage.read("old") == b"keep me"

    def test_touch_absent(self, storage: Storage) -> None:
        storage.write_atomic("d/present", b"x")
        assert storage.touch("d/absent") is False
        assert storage.touch("nowhere/absent") is False
        assert storage.stat("d/absent") is None  # touch never creates
        assert not storage.exists("nowhere/absent")

    def test_delete(self, storage: Storage) -> None:
        storage.write_atomic("del/a", b"a")
        storage.write_atomic("del/b", b"b")
        assert storage.delete("del/a") is True
        assert storage.stat("del/a") is None
        with pytest.raises(FileNotFoundError):
            storage.read("del/a")
        assert storage.delete("del/a") is False
        assert storage.delete("never/there") is False
        assert storage.read("del/b") == b"b"  # only what was named

    def test_delete_many(self, storage: Storage) -> None:
        rels = [f"many/{i:02d}" for i in range(12)]
        for rel in rels:
            storage.write_atomic(rel, rel.encode())
        assert storage.delete_many([]) == 0
        assert storage.delete_many(rels[:10]) == 10
        assert [storage.exists(rel) for rel in rels] == [False] * 10 + [True] * 2
        assert sorted(rel for rel, _ in storage.walk("many")) == rels[10:]

    def test_delete_many_counts_only_present_files(self, storage: Storage) -> None:
        storage.write_atomic("many/a", b"a")
        storage.write_atomic("many/b", b"b")
        assert storage.delete_many(["many/a", "many/gone", "many/b", "other/gone"]) == 2
        assert storage.delete_many(["many/a", "many/b"]) == 0
        assert not storage.exists("many/a") and not storage.exists("many/b")

    # -- listings ---------------------------------------------------------------------

    def _tree(self, storage: Storage) -> dict[str, bytes]:
        files = {
            "top": b"t",
            "a/1": b"one",
            "a/b/2": b"two!",
            "a/b/c/3": _data(3000, seed=6),
            "ab/4": b"not below a",
            "other/5": b"55555",
        }
        for rel, data in files.items():
            storage.write_atomic(rel, data)
        return files

    def test_walk(self, storage: Storage) -> None:
        files = self._tree(storage)
        before = time.time()
        below_a = {rel: st for rel, st in storage.walk("a")}
        assert sorted(below_a) == ["a/1", "a/b/2", "a/b/c/3"]  # not "ab/4"
        for rel, st in below_a.items():
            assert isinstance(st, Stat) and st.size == len(files[rel]), (rel, st)
            assert abs(st.mtime - before) < 120, (rel, st)
        assert sorted(rel for rel, _ in storage.walk("a/b")) == ["a/b/2", "a/b/c/3"]
        everything = {rel: st.size for rel, st in storage.walk("")}
        assert everything == {rel: len(data) for rel, data in files.items()}
        assert list(storage.walk("absent")) == []
        assert list(storage.walk("a/absent")) == []

    #: True where ``list_after`` must list on the service's side (S3, GCS): a suite
    #: for such a storage sets it, so a None there fails instead of passing quietly.
    lists_after = False

    def test_list_after(self, storage: Storage) -> None:
        self._tree(storage)
        for rel in ("a/b/c/4", "a/b/d"):
            storage.write_atomic(rel, b"x")
        listed = storage.list_after("a", "b/c/3")
        if listed is None:
            assert not self.lists_after, "this storage must list after a key"
            return
        assert listed == ["a/b/c/4", "a/b/d"]  # in order, below "a" only, after the key
        assert storage.list_after("a", "") == ["a/1", "a/b/2", "a/b/c/3", "a/b/c/4", "a/b/d"]
        assert storage.list_after("a", "b/d") == []
        assert storage.list_after("absent", "") == []

    def test_walk_lists_temporary_files_recognizably(self, storage: Storage) -> None:
        storage.write_atomic("objects/ab/final", b"whole")
        leftover = f"objects/ab/{TEMP_PREFIX}final-0123abcd"  # a crashed writer's
        storage.write_atomic(leftover, b"part")
        listed = {rel: st for rel, st in storage.walk("objects")}
        assert sorted(listed) == sorted(["objects/ab/final", leftover])
        temps = [rel for rel in listed if rel.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)]
        assert temps == [leftover] and listed[leftover].size == 4
        assert storage.delete(leftover) is True
        assert [rel for rel, _ in storage.walk("objects")] == ["objects/ab/final"]

    def test_listdir(self, storage: Storage) -> None:
        self._tree(storage)
        assert sorted(storage.listdir("a")) == ["1"]  # files only, not folder "b"
        assert sorted(storage.listdir("a/b")) == ["2"]
        assert sorted(storage.listdir("a/b/c")) == ["3"]
        assert sorted(storage.listdir("")) == ["top"]
        assert storage.listdir("absent") == []
        assert storage.listdir("a/absent") == []

    def test_exists(self, storage: Storage) -> None:
        assert storage.exists("e/file") is False
        storage.write_atomic("e/file", b"")
        assert storage.exists("e/file") is True
        assert storage.exists("e/fil") is False and storage.exists("f/file") is False
        storage.delete("e/file")
        assert storage.exists("e/file") is False

    def test_a_folder_is_not_a_file(self, storage: Storage) -> None:
        storage.write_atomic("folder/file", b"f")
        assert storage.stat("folder") is None
        assert storage.exists("folder") is False
        assert storage.listdir("") == []

    def test_is_empty(self, storage: Storage) -> None:
        assert storage.is_empty() is True
        storage.write_atomic("x/y/z", b"z")
        assert storage.is_empty() is False
        storage.write_atomic("top", b"t")
        storage.delete("x/y/z")
        assert storage.is_empty() is False
        storage.delete("top")
        assert storage.is_empty() is True

    # -- refs and capabilities --------------------------------------------------------

    def test_conditional_acts_on_the_same_files(self, storage: Storage) -> None:
        for durable in (True, False):
            conditional = storage.conditional(durable=durable)
            assert isinstance(conditional, refs.Conditional)
            path = f"{storage.root}/refs/heads/r{int(durable)}"
            assert conditional.read(path) is None
            assert conditional.create(path, b"v1") is True
            assert conditional.create(path, b"v2") is False
            got = conditional.read(path)
            assert got is not None and got[0] == b"v1"
            assert storage.read(f"refs/heads/r{int(durable)}") == b"v1"
            assert conditional.replace(path, b"v3", got[1]) is True
            assert conditional.replace(path, b"v4", got[1]) is False  # stale version
            assert storage.read(f"refs/heads/r{int(durable)}") == b"v3"
        storage.sync()

    def test_capability_flags(self, storage: Storage) -> None:
        assert type(storage.io_threads) is int and storage.io_threads >= 0
        assert type(storage.listing_stats) is bool
        assert type(storage.cheap_touch) is bool
        assert type(storage.creates) is bool
        assert storage.local_dir is None or type(storage.local_dir) is str
        assert isinstance(storage.root, str) and isinstance(storage.url, str)
        if storage.local_dir is not None:  # a folder of this machine holding the files
            storage.write_atomic("cap/file", b"on disk")
            with open(os.path.join(storage.local_dir, "cap", "file"), "rb") as f:
                assert f.read() == b"on disk"

    # -- failures ---------------------------------------------------------------------

    @pytest.fixture(params=sorted(BROKEN_CALLS))
    def broken_call(self, request: pytest.FixtureRequest) -> Callable[[Storage], object]:
        name: str = request.param
        case = request.node.callspec.id  # with broken_storage's own parameter, if any
        reason = self.known_failures.get(case) or self.known_failures.get(name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
        return BROKEN_CALLS[name]

    def test_a_failure_is_never_absence(
        self, broken_storage: Storage, broken_call: Callable[[Storage], object]
    ) -> None:
        try:
            answer = broken_call(broken_storage)
        except OSError as exc:
            assert not isinstance(exc, FileNotFoundError), f"a failure read as absence: {exc!r}"
            assert isinstance(exc, self.failure), f"expected {self.failure.__name__}: {exc!r}"
            return
        pytest.fail(f"a failure read as absence: the call answered {answer!r}")
