"""The conformance suite every RefStore backend runs: subclass and provide a fixture.

::

    class TestMyBackend(RefStoreTests):
        @pytest.fixture
        def make_refstore(self, tmp_path):
            def make(**options):            # options go to RefStore(...)
                return RefStore(fs, f"{folder}/.cas", conditional=MyConditional(fs), **options)
            return make

Each call of ``make_refstore`` must return a store on the *same* root, fresh for the
test; the root's parent folder must hold nothing else (the suite lists it to check
that no name escapes). Tests needing several processes are not here (they need a
picklable factory): see ``cas.refs.stress`` and ``tests/test_refs_local.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from .errors import (
    InvalidId,
    InvalidRefName,
    NameConflict,
    RefConflict,
    RefError,
    RefLocked,
    RefNotFound,
)
from .ids import ANY
from .log import LogEntry, encode_entry, entry_path
from .names import is_valid_ref_name
from .owner import hostname
from .store import RefStore
from .stress import Faulty, counter_id, counter_of, increment

MakeRefStore = Callable[..., RefStore]

A, B, C, D = (counter_id(n) for n in (1, 2, 3, 4))

#: (name, words its InvalidRefName message must contain): one line per rule.
BAD_NAMES = [
    ("", "empty"),
    ("@", "single character '@'"),
    ("/a", "begin with '/'"),
    ("a/", "end with '/'"),
    ("a//b", "'//'"),
    ("a..b", "'..'"),
    ("a/../../etc", "'..'"),
    ("a\x01b", "control character"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("a b", "' '"),
    ("a~b", "'~'"),
    ("a^b", "'^'"),
    ("a:b", "':'"),
    ("a?b", "'?'"),
    ("a*b", "'*'"),
    ("a[b", "'['"),
    ("a\\b", "'\\\\'"),
    ("a@{1}", "'@{'"),
    ("a.", "end with '.'"),
    ("a/./b", "component '.'"),
    ("a/.hidden", "begin with '.'"),
    (".a", "begin with '.'"),
    ("a/b.lock", "end with '.lock'"),
    ("a.lock/b", "end with '.lock'"),
    ("a\ud800", "UTF-8"),
    ("x" * 201, "200 bytes"),
]

_component = st.text(
    alphabet=st.characters(blacklist_characters="/ ~^:?*[\\", blacklist_categories=("Cs", "Cc")),
    min_size=1,
    max_size=12,
)
valid_names = st.lists(_component, min_size=1, max_size=4).map("/".join)
_settings = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
)


def assert_chain(entries: list[LogEntry]) -> None:
    """Newest-first ``entries`` form a chain: each entry's old is the previous one's new."""
    for newer, older in zip(entries, entries[1:], strict=False):
        assert newer.old == older.new, (older, newer)


class RefStoreTests:
    """Behaviour every RefStore must have, whatever the filesystem and Conditional."""

    @pytest.fixture
    def make_refstore(self) -> MakeRefStore:
        """Override: return ``make(**options) -> RefStore``, all on one fresh root."""
        raise NotImplementedError("subclasses provide the make_refstore fixture")

    @pytest.fixture
    def rs(self, make_refstore: MakeRefStore) -> RefStore:
        return make_refstore()

    def files_outside(self, rs: RefStore) -> list[str]:
        """Files under the root's parent that are not in ``refs/`` or ``logs/``."""
        parent = rs.root.rpartition("/")[0] or "/"
        rs.fs.invalidate_cache(parent)
        inside = (f"{rs.root}/refs/", f"{rs.root}/logs/")
        return [path for path in rs.fs.find(parent) if not str(path).startswith(inside)]

    # -- reading and compare-and-swap ---------------------------------------------

    def test_read_absent(self, rs: RefStore) -> None:
        assert rs.read("main") is None
        assert rs.list() == []
        assert rs.log("main") == []

    def test_create_then_expected_none_conflicts(self, rs: RefStore) -> None:
        assert rs.set("main", A, expected=None) is None
        assert rs.read("main") == A
        with pytest.raises(RefConflict) as caught:
            rs.set("main", B, expected=None)
        assert (caught.value.name, caught.value.expected, caught.value.actual) == ("main", None, A)
        assert "main" in str(caught.value) and A in str(caught.value)
        assert rs.read("main") == A

    def test_expected_old(self, rs: RefStore) -> None:
        rs.set("main", A)
        assert rs.set("main", B, expected=A) == A
        with pytest.raises(RefConflict) as caught:
            rs.set("main", C, expected=A)
        assert (caught.value.expected, caught.value.actual) == (A, B)
        with pytest.raises(RefConflict) as absent:
            rs.set("other", C, expected=A)
        assert absent.value.actual is None
        assert rs.read("main") == B and rs.read("other") is None

    def test_expected_any(self, rs: RefStore) -> None:
        assert rs.set("main", A, expected=ANY) is None
        assert rs.set("main", B) == A
        assert rs.set("main", B) == B  # same value: still an update in the history
        assert [(e.old, e.new) for e in rs.log("main")] == [(B, B), (A, B), (None, A)]

    def test_ids_are_checked(self, rs: RefStore) -> None:
        for bad in ["", "ab" * 31, "AB" * 32, "g" * 64, "ab" * 32 + "\n", 42, None]:
            with pytest.raises(InvalidId):
                rs.set("main", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            rs.set("main", A, expected="HEAD")
        assert rs.read("main") is None and rs.log("main") == []

    def test_delete(self, rs: RefStore) -> None:
        with pytest.raises(RefNotFound) as missing:
            rs.delete("main")
        assert isinstance(missing.value, KeyError) and "'main'" in str(missing.value)
        rs.set("main", A)
        with pytest.raises(RefConflict) as caught:
            rs.delete("main", expected=B)
        assert caught.value.actual == A
        assert rs.delete("main", expected=A, message="bye") == A
        assert rs.read("main") is None and rs.list() == []
        assert rs.set("main", B, expected=None) is None
        entries = rs.log("main")
        assert [(e.old, e.new, e.message) for e in entries] == [
            (None, B, ""),
            (A, None, "bye"),
            (None, A, ""),
        ]

    def test_list_and_items_prefix(self, rs: RefStore) -> None:
        for name, value in [("models/b", B), ("models/a", A), ("mod", C), ("other/x/y", D)]:
            rs.set(name, value)
        assert rs.list() == ["mod", "models/a", "models/b", "other/x/y"]
        assert rs.list("models/") == ["models/a", "models/b"]
        assert rs.list("mod") == ["mod", "models/a", "models/b"]
        assert rs.list("models/a") == ["models/a"]
        assert rs.list("other/") == ["other/x/y"]
        assert rs.list("nothing/") == [] and rs.list("zzz") == []
        assert rs.items("models/") == [("models/a", A), ("models/b", B)]
        assert rs.items() == [("mod", C), ("models/a", A), ("models/b", B), ("other/x/y", D)]
        with pytest.raises(InvalidRefName):
            rs.list("../")

    def test_two_stores_share_one_root(self, make_refstore: MakeRefStore) -> None:
        first, second = make_refstore(), make_refstore()
        first.set("main", A)
        assert second.read("main") == A
        second.set("main", B, expected=A)
        with pytest.raises(RefConflict):
            first.set("main", C, expected=A)
        assert first.set("main", C, expected=B) == B
        assert_chain(second.log("main"))
        assert len(second.log("main")) == 3

    # -- names ----------------------------------------------------------------

    @pytest.mark.parametrize(("name", "words"), BAD_NAMES)
    def test_each_name_rule_has_its_message(self, rs: RefStore, name: str, words: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: rs.read(name),
            lambda: rs.set(name, A),
            lambda: rs.delete(name),
            lambda: rs.log(name),
            lambda: rs.at(name, 1),
            lambda: rs.prune_log(name, time.time()),
        ]
        for call in calls:
            with pytest.raises(InvalidRefName) as caught:
                call()
            assert words in str(caught.value), str(caught.value)
            assert caught.value.name == name
        assert self.files_outside(rs) == []
        assert rs.list() == [] and rs.log_names() == []

    def test_a_trailing_hash_is_part_of_the_name(self, rs: RefStore) -> None:
        """adlfs's path splitting drops a trailing '#': 'a/b#' and 'a/b' were one blob."""
        rs.set("a/b#", A, expected=None)
        assert rs.read("a/b") is None
        rs.set("a/b", B, expected=None)
        assert rs.items() == [("a/b", B), ("a/b#", A)]
        assert rs.delete("a/b#", expected=A) == A and rs.read("a/b") == B

    @_settings
    @given(name=valid_names)
    def test_valid_names_round_trip(self, rs: RefStore, name: str) -> None:
        assume(is_valid_ref_name(name))
        rs.set(name, A, expected=None)
        assert rs.read(name) == A
        assert name in rs.list() and (name, A) in rs.items()
        assert rs.list(name) == [name]
        assert rs.delete(name, expected=A) == A
        assert rs.read(name) is None and rs.list() == []
        assert name in rs.log_names()
        assert self.files_outside(rs) == []

    @_settings
    @given(name=st.text(max_size=30) | st.builds("/".join, st.lists(st.text(max_size=5))))
    def test_no_name_escapes_the_root(self, rs: RefStore, name: str) -> None:
        try:
            rs.set(name, A)
        except InvalidRefName:
            assert not is_valid_ref_name(name)
            for call in (rs.read, rs.delete, rs.log):
                with pytest.raises(InvalidRefName):
                    call(name)
        else:
            assert rs.read(name) == A
            rs.delete(name)
        assert self.files_outside(rs) == []

    def test_a_ref_is_not_a_folder(self, rs: RefStore) -> None:
        rs.set("a/b", A)
        with pytest.raises(NameConflict) as caught:
            rs.set("a", B)
        assert caught.value.other == "a/b" and "'a/b' exists" in str(caught.value)
        assert isinstance(caught.value, RefConflict)
        with pytest.raises(NameConflict) as below:
            rs.set("a/b/c", B)
        assert below.value.other == "a/b"
        assert rs.list() == ["a/b"]
        assert rs.log("a") == [] and rs.log("a/b/c") == []  # refused writes leave no history
        rs.delete("a/b")
        assert rs.set("a", B, expected=None) is None  # the folder went with its last ref
        assert rs.list() == ["a"]
        assert rs.log_names() == ["a", "a/b"]

    # -- history ----------------------------------------------------------------

    def test_log_records_who_when_why(self, make_refstore: MakeRefStore) -> None:
        rs = make_refstore(identity="ada@lab")
        before = time.time()
        rs.set("main", A, message="first")
        rs.set("main", B, message="second ✓")
        entries = rs.log("main")
        assert [(e.old, e.new, e.who, e.message) for e in entries] == [
            (A, B, "ada@lab", "second ✓"),
            (None, A, "ada@lab", "first"),
        ]
        assert before <= entries[1].time <= entries[0].time <= time.time()
        with pytest.raises(AttributeError):
            entries[0].old = B  # type: ignore[misc]
        assert make_refstore().identity.count("@") == 1

    def test_at_and_at_time(self, rs: RefStore) -> None:
        times = []
        for value in (A, B, C):
            rs.set("main", value)
            times.append(time.time())
            time.sleep(0.02)
        rs.delete("main")
        assert [rs.at("main", n) for n in range(5)] == [None, C, B, A, None]
        with pytest.raises(RefNotFound):
            rs.at("main", 5)
        with pytest.raises(ValueError):
            rs.at("main", -1)
        assert rs.at_time("main", times[0] - 10) is None
        assert [rs.at_time("main", t) for t in times] == [A, B, C]
        assert rs.at_time("main", time.time()) is None
        assert rs.at_time("never", time.time()) is None

    def test_log_names(self, rs: RefStore) -> None:
        rs.set("x/one", A)
        rs.set("x/two", A)
        rs.set("y", A)
        rs.delete("x/two")
        assert rs.log_names() == ["x/one", "x/two", "y"]

    def test_prune_log(self, rs: RefStore) -> None:
        for value in (A, B, C, D):
            rs.set("main", value)
            time.sleep(0.02)
        entries = rs.log("main")
        assert rs.prune_log("main", entries[1].time) == 2  # the two oldest
        assert [(e.old, e.new) for e in rs.log("main")] == [(C, D), (B, C)]
        assert rs.at("main", 2) == B
        with pytest.raises(RefNotFound):
            rs.at("main", 3)
        with pytest.raises(RefNotFound):
            rs.at_time("main", entries[3].time)
        assert rs.prune_log("main", time.time() + 10) == 1  # the newest always stays
        assert rs.prune_log("main", time.time() + 10) == 0
        assert [(e.old, e.new) for e in rs.log("main")] == [(C, D)]
        rs.set("main", A, expected=D)  # numbering continues after pruning
        assert_chain(rs.log("main"))
        assert len(rs.log("main")) == 2
        assert rs.prune_log("never", time.time()) == 0

    def test_pruned_history_seen_by_a_store_that_looked_away(
        self, make_refstore: MakeRefStore
    ) -> None:
        """A store remembers the newest entry it saw; meanwhile others write and prune."""
        away, busy = make_refstore(), make_refstore()
        away.set("main", A)  # `away` now knows update 1 as the newest
        for value in (B, C, A):  # back to A: the ref looks unchanged to `away`
            busy.set("main", value)
        assert busy.prune_log("main", time.time() + 10) == 3  # only update 4 stays
        assert away.set("main", D, expected=A) == A  # must not reuse the freed slot 2
        entries = away.log("main")
        assert [(e.old, e.new) for e in entries] == [(A, D), (C, A)]
        busy.prune_log("main", time.time() + 10)
        away.set("main", B, expected=D)
        assert_chain(busy.log("main"))

    # -- concurrency and crashes ------------------------------------------------------

    def test_threads_never_lose_an_update(self, make_refstore: MakeRefStore) -> None:
        threads, count = 4, 25
        stores = [make_refstore() for _ in range(threads)]
        errors: list[BaseException] = []

        def work(store: RefStore) -> None:
            try:
                increment(store, "counter", count)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(store,)) for store in stores]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        entries = stores[0].log("counter")
        assert len(entries) == threads * count
        assert_chain(entries)
        assert entries[-1].old is None
        assert [counter_of(e.new) for e in reversed(entries)] == list(range(1, 1 + threads * count))
        assert counter_of(stores[0].read("counter")) == threads * count

    def test_parent_and_child_created_at_once(self, make_refstore: MakeRefStore) -> None:
        """Two writers create 'a' and 'a/b' together: at most one of them survives."""
        rs = make_refstore()
        for _ in range(15):
            barrier = threading.Barrier(2)
            outcome: dict[str, str] = {}

            def create(
                store: RefStore,
                name: str,
                barrier: threading.Barrier = barrier,
                outcome: dict[str, str] = outcome,
            ) -> None:
                barrier.wait()
                try:
                    store.set(name, A, expected=None)
                    outcome[name] = "created"
                except NameConflict:
                    outcome[name] = "refused"
                except Exception as exc:  # noqa: BLE001  (a thread's error fails the test)
                    outcome[name] = f"raised {exc!r}"

            workers = [
                # Patience past any slowness of a loaded machine (an update in flight
                # in the other thread is waited for, never taken for dead): what is
                # tested is that at most one survives, and that neither call fails.
                threading.Thread(target=create, args=(make_refstore(lock_timeout=60), name))
                for name in ("a", "a/b")
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            existing = rs.list()
            assert set(outcome.values()) <= {"created", "refused"}, outcome
            assert existing in ([], ["a"], ["a/b"]), (existing, outcome)
            assert [name for name, result in sorted(outcome.items()) if result == "created"] in (
                existing,
                [],  # created, then taken back when it saw the other
            ), (existing, outcome)
            for name in existing:
                rs.delete(name)
        for name in ("a", "a/b"):
            assert_chain(rs.log(name))

    def test_a_name_created_and_deleted_elsewhere_is_not_an_update_in_flight(
        self, make_refstore: MakeRefStore
    ) -> None:
        """Another store created ``main`` and deleted it (entries 1 and 2). A store that
        never saw the name loses its claim of entry 1, whose ``old`` (nothing) is what
        the ref holds again: entry 1 looks in flight, but entry 2 follows it. However
        short its patience, the store finds entry 2 and updates after it, where it
        raised ``RefLocked`` naming entry 1 as never published."""
        other = make_refstore()
        other.set("main", A, expected=None)
        other.delete("main", expected=A)
        rs = make_refstore(lock_timeout=0.001)
        assert rs.set("main", B, expected=None) is None
        assert [(e.old, e.new) for e in rs.log("main")] == [(None, B), (A, None), (None, A)]

    def test_unpublished_update_is_reported_not_broken(self, make_refstore: MakeRefStore) -> None:
        """A writer died after writing its history entry and before writing the ref."""
        rs = make_refstore(lock_timeout=0.3)
        rs.set("main", A)
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(dead.stdout)
        claim = entry_path(rs.root, "main", 2)
        stale = LogEntry(A, B, time.time() - 60, "ghost@elsewhere", "never published")
        assert rs.conditional.create(claim, encode_entry(stale, pid=pid, host=hostname()))
        assert rs.read("main") == A  # readers see the committed value
        assert [e.new for e in rs.log("main")] == [A]  # and no update that did not happen
        with pytest.raises(RefLocked) as caught:
            rs.set("main", C)
        error = caught.value
        assert error.path == claim and f"{pid}@{hostname()}" in str(error)
        assert error.owner_alive is False and "no longer running" in str(error)
        assert error.age >= 59 and claim in error.command
        assert rs.read("main") == A
        rs.fs.rm_file(claim)  # what error.command does
        assert rs.set("main", C, expected=A) == A
        assert [(e.old, e.new) for e in rs.log("main")] == [(A, C), (None, A)]

    @pytest.mark.parametrize(
        ("method", "where", "landed"),
        [
            ("create", "/logs/", True),  # the history entry was written, the answer lost
            ("create", "/logs/", False),
            ("replace", "/refs/", True),  # the ref was written, the answer lost
            ("replace", "/refs/", False),
            ("remove", "/refs/", True),
            ("remove", "/refs/", False),
        ],
    )
    def test_unknown_outcomes_are_resolved(
        self, make_refstore: MakeRefStore, method: str, where: str, landed: bool
    ) -> None:
        rs = make_refstore()
        rs.set("main", A)
        faulty = Faulty(rs.conditional, method, where, after=landed)
        flaky = make_refstore(conditional=faulty, lock_timeout=0.5)
        new = None if method == "remove" else B

        def call() -> str | None:
            return flaky.delete("main") if new is None else flaky.set("main", B)

        if landed:
            assert call() == A
        else:
            with pytest.raises(TimeoutError):
                call()
        assert faulty.fired
        expected = new if landed else A
        assert rs.read("main") == expected
        # Either way no trace of a half update: the history matches the ref.
        assert [(e.old, e.new) for e in rs.log("main")] == (
            [(A, new), (None, A)] if landed else [(None, A)]
        )
        assert rs.set("main", C) == expected  # and the next writer is not blocked

    def test_ref_changed_behind_its_back_is_reported(self, make_refstore: MakeRefStore) -> None:
        rs = make_refstore(lock_timeout=0.2)
        rs.set("main", A)
        rs.fs.pipe_file(f"{rs.root}/refs/main", (B + "\n").encode())
        with pytest.raises(RefError, match="changed outside refs"):
            rs.set("main", C)

    def test_corrupt_ref_file(self, rs: RefStore) -> None:
        rs.fs.makedirs(f"{rs.root}/refs", exist_ok=True)
        rs.fs.pipe_file(f"{rs.root}/refs/main", b"not an id\n")
        with pytest.raises(RefError, match="corrupt"):
            rs.read("main")

    def test_owner_of_this_process_is_alive(self) -> None:
        from .owner import describe_owner

        assert describe_owner(os.getpid(), hostname()) == (f"{os.getpid()}@{hostname()}", True)
        assert describe_owner(1, "another-host")[1] is None
        assert describe_owner(None, None) == ("an unknown owner", None)
