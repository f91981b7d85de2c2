"""The RefStore suite on a local folder, plus real processes: contention and SIGKILL."""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from cas.refs import LocalConditional, NameConflict, RefLocked, RefStore
from cas.refs.files import Files, LocalFiles, files_for
from cas.refs.stress import (
    counter_id,
    counter_of,
    kill_between_claim_and_publish,
    kill_while_holding_lock,
    local_refstore,
    run_increments,
)
from cas.refs.testing import A, B, C, MakeRefStore, RefStoreTests, assert_chain


class TestLocalRefStore(RefStoreTests):
    @pytest.fixture
    def make_refstore(self, tmp_path: Path) -> MakeRefStore:
        def make(**options: object) -> RefStore:
            return RefStore(LocalFileSystem(), str(tmp_path / ".cas"), **options)  # type: ignore[arg-type]

        return make

    def test_default_conditional_is_the_lock_file(self, rs: RefStore) -> None:
        assert isinstance(rs.conditional, LocalConditional)
        assert rs.conditional.fsync is True


def check_counter(rs: RefStore, total: int) -> None:
    entries = rs.log("counter")
    assert len(entries) == total
    assert_chain(entries)
    assert entries[-1].old is None
    assert [counter_of(entry.new) for entry in reversed(entries)] == list(range(1, total + 1))
    assert rs.read("counter") == counter_id(total)


@pytest.fixture
def memory_backed_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs if the host has one, else on the test disk.

    The 8-process test is about the protocol, not the disk: on a busy shared disk a
    rename over a file waits for the data to be flushed (ext4 auto_da_alloc), which
    turns a 5 s test into a 40 s one. The disk itself is exercised by the next test.
    """
    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="refs-test-", dir="/dev/shm"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_8_processes_200_increments_each(memory_backed_folder: Path) -> None:
    """No lost update, and a history that is a chain of exactly 1,600 updates."""
    root = str(memory_backed_folder / ".cas")
    run_increments(functools.partial(local_refstore, root, False), "counter", 8, 200)
    check_counter(local_refstore(root), 1600)
    assert not list(Path(root).rglob("*.lock"))


def test_processes_on_disk_with_fsync(tmp_path: Path) -> None:
    root = str(tmp_path / ".cas")
    run_increments(functools.partial(local_refstore, root, True), "counter", 4, 15)
    check_counter(local_refstore(root), 60)


def shell(command: str) -> None:
    subprocess.run(command, shell=True, check=True)


def test_sigkilled_lock_holder(tmp_path: Path) -> None:
    """The next writer breaks a dead owner's lock at once (tests/test_self_heal.py)."""
    root = str(tmp_path / ".cas")
    rs = RefStore(LocalFileSystem(), root, lock_timeout=30)
    rs.set("models/fraud", A, message="committed")
    ref = f"{root}/refs/models/fraud"
    kill_while_holding_lock(ref)
    assert Path(ref + ".lock").exists()
    assert rs.read("models/fraud") == A  # readers ignore the lock
    started = time.monotonic()
    assert rs.set("models/fraud", B, expected=A) == A
    assert time.monotonic() - started < 5  # not the 30 s lock timeout
    assert not Path(ref + ".lock").exists()
    assert [(e.old, e.new) for e in rs.log("models/fraud")] == [(A, B), (None, A)]


def test_sigkilled_between_claim_and_publish(tmp_path: Path) -> None:
    """The next writer rolls a dead writer's claimed update forward at once."""
    root = str(tmp_path / ".cas")
    rs = RefStore(LocalFileSystem(), root, lock_timeout=30)
    rs.set("main", A)
    kill_between_claim_and_publish(functools.partial(local_refstore, root), "main", B)
    assert rs.read("main") == A
    assert [e.new for e in rs.log("main")] == [A]
    started = time.monotonic()
    assert rs.set("main", C) == B
    assert time.monotonic() - started < 5
    assert [(e.old, e.new) for e in rs.log("main")] == [(B, C), (A, B), (None, A)]


def test_lock_without_owner_record(tmp_path: Path) -> None:
    """A writer killed between creating its lock and writing its owner into it."""
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"), lock_timeout=0.2)
    rs.set("main", A)
    Path(f"{rs.root}/refs/main.lock").write_bytes(b"")
    with pytest.raises(RefLocked, match="unknown owner") as caught:
        rs.set("main", B)
    assert caught.value.owner_alive is None


def test_lock_held_by_a_live_process(tmp_path: Path) -> None:
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"), lock_timeout=0.2)
    rs.set("main", A)
    record = {"pid": os.getpid(), "host": os.uname().nodename, "time": time.time()}
    Path(f"{rs.root}/refs/main.lock").write_text(json.dumps(record))
    with pytest.raises(RefLocked, match="still running"):
        rs.delete("main")
    assert rs.read("main") == A


def test_listing_skips_locks_and_temporary_files(tmp_path: Path) -> None:
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"))
    rs.set("a/main", A)
    for junk in ("a/main.lock", "a/.main.tmp", "a/.main.123.abc.tmp", "stray.lock"):
        Path(f"{rs.root}/refs/{junk}").write_bytes(b"junk")
    Path(f"{rs.root}/logs/a/main/.~000000000002.1.2.tmp").write_bytes(b"junk")
    assert rs.list() == ["a/main"] and rs.items() == [("a/main", A)]
    assert rs.log_names() == ["a/main"] and len(rs.log("a/main")) == 1


def test_empty_folder_where_a_ref_goes(tmp_path: Path) -> None:
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"))
    Path(f"{rs.root}/refs/a/b").mkdir(parents=True)
    assert rs.read("a") is None and rs.list() == []
    rs.set("a", A, expected=None)
    assert rs.read("a") == A


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rs = RefStore(LocalFileSystem(), ".cas")
    rs.set("main", A)
    assert rs.root == str(tmp_path / ".cas")
    assert (tmp_path / ".cas" / "refs" / "main").read_text() == A + "\n"


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where link(2) is refused (some FUSE and SMB mounts), creates take the lock."""

    def no_link(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", target)

    monkeypatch.setattr(os, "link", no_link)
    conditional = LocalConditional(fsync=False)
    path = str(tmp_path / "one" / "file")
    assert conditional.create(path, b"first") is True
    assert conditional.create(path, b"second") is False
    got = conditional.read(path)
    assert got is not None and got[0] == b"first"
    assert not [p for p in os.listdir(tmp_path / "one") if p != "file"]  # no lock, no temp
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"), fsync=False)
    rs.set("main", A, expected=None)
    rs.set("main", B, expected=A)
    assert [(e.old, e.new) for e in rs.log("main")] == [(A, B), (None, A)]


def test_version_tokens_move_with_every_write(tmp_path: Path) -> None:
    conditional = LocalConditional(fsync=False)
    path = str(tmp_path / "file")
    assert conditional.read(path) is None
    assert conditional.create(path, b"x")
    first = conditional.read(path)
    assert first is not None
    assert conditional.replace(path, b"y", first[1])
    assert not conditional.replace(path, b"z", first[1])  # stale version
    second = conditional.read(path)
    assert second is not None and second[0] == b"y"
    assert conditional.replace(path, b"x", second[1])
    third = conditional.read(path)
    assert not conditional.remove(path, second[1])
    assert third is not None and conditional.remove(path, third[1])
    assert conditional.read(path) is None and os.listdir(tmp_path) == []


def test_local_stores_read_with_os_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a local disk every read, listing and check is an os call, not fsspec's."""
    fs = LocalFileSystem()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("refs went through fsspec on a local disk")

    for method in ("ls", "find", "info", "cat_file", "cat_ranges", "exists", "isdir", "isfile"):
        monkeypatch.setattr(fs, method, refuse)
    rs = RefStore(fs, str(tmp_path / ".cas"), fsync=False)
    rs.set("a/b", A, expected=None)
    rs.set("a/b", B, expected=A)
    with pytest.raises(NameConflict):
        rs.set("a", C)
    assert RefStore(fs, rs.root).set("a/b", C, expected=B) == B  # cold cache
    assert rs.read("a/b") == C and rs.list() == ["a/b"] and rs.items() == [("a/b", C)]
    assert [e.new for e in rs.log("a/b")] == [C, B, A] and rs.log_names() == ["a/b"]
    assert rs.delete("a/b") == C and rs.at("a/b", 1) == C


def test_local_files_answer_as_fsspec_does(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "f").write_bytes(b"x" * 70000)  # more than one read
    (tmp_path / "d" / "g").write_bytes(b"")
    (tmp_path / "d" / "e" / "h").write_bytes(b"h")
    local, generic = files_for(LocalFileSystem()), Files(LocalFileSystem())
    assert isinstance(local, LocalFiles) and not isinstance(generic, LocalFiles)
    paths = [str(tmp_path / p) for p in ("", "d", "d/e", "empty", "f", "f/x", "d/g", "nope")]
    for path in paths:
        assert local.cat(path) == generic.cat(path), path
        assert local.exists(path) == generic.exists(path), path
        if not os.path.isfile(path):  # fsspec lists a file as itself; no caller asks
            assert sorted(local.listdir(path)) == sorted(generic.listdir(path)), path
            assert sorted(local.find(path)) == sorted(generic.find(path)), path
    assert local.cat_many(paths) == generic.cat_many(paths)


def test_file_where_a_folder_goes(tmp_path: Path) -> None:
    """The filesystem refuses what the name check cannot see: no ref, no history."""
    rs = RefStore(LocalFileSystem(), str(tmp_path / ".cas"), fsync=False)
    rs.set("x", A)
    Path(f"{rs.root}/refs/x.").write_bytes(b"not a ref")  # "x." is no name, "x./y" is
    with pytest.raises(NameConflict) as caught:
        rs.set("x./y", B)
    assert caught.value.other is None
    assert rs.log("x./y") == [] and rs.read("x./y") is None
    assert Path(f"{rs.root}/refs/x.").read_bytes() == b"not a ref"


def test_empty_folder_where_a_ref_goes_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(source: str, target: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", target)

    monkeypatch.setattr(os, "link", no_link)
    conditional = LocalConditional(fsync=False)
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert conditional.create(str(tmp_path / "a"), b"file") is True
    assert (tmp_path / "a").read_bytes() == b"file"
    (tmp_path / "c" / "d").mkdir(parents=True)
    (tmp_path / "c" / "d" / "e").write_bytes(b"")
    with pytest.raises(IsADirectoryError):
        conditional.create(str(tmp_path / "c"), b"file")


def test_new_folders_are_flushed_with_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss must not take away a new folder holding a file we reported written."""
    conditional = LocalConditional(fsync=True)
    synced: list[str] = []
    monkeypatch.setattr(conditional, "_sync_dir", synced.append)
    assert conditional.create(str(tmp_path / "a" / "b" / "file"), b"x")
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    assert conditional.create(str(tmp_path / "a" / "b" / "other"), b"y")
    assert synced == [str(tmp_path / "a" / "b")]
