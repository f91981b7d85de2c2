"""A refused save leaves nothing any reader sees: not this process, not another machine,
not a catalog rebuilt from the journal.

The refusal users meet most: a name below or above a name that exists (``df/p`` holds an
artifact, so ``df/p/q`` cannot be one). It is refused before its name is claimed. A
writer that loses a race for the name after that check (another process created ``df/p``
meanwhile) is refused when it claims the name: a save's journal entry is written only
once its name is claimed. A save killed before that claim is invisible too; one killed
after it is rolled forward whole, journal entry and name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cas
from cas.admin import fsck
from cas.errors import RefConflict
from cas.repo.local_catalog import LocalCatalog
from cas.repo.names import Names
from cas.testing.servers import Server


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "store"), {}
    if request.param == "memory":
        return f"memory://{tmp_path.name}/store", {}
    server: Server = request.getfixturevalue("s3_server")
    return server.url(server.new_bucket(), "store"), server.storage_options


def _seen_elsewhere(store: Any, folder: Path) -> dict[str, Any]:
    """What another machine's catalog of the root holds after a sync."""
    other = LocalCatalog(store.repo.space, store.repo.journal, folder)
    try:
        other.sync()
        return {
            "names": other.catalog.names(),
            "search": [r["name"] for r in other.catalog.search("stage:prod")],
        }
    finally:
        other.close()


def _only_df_p_is_seen(store: Any, folder: Path) -> None:
    """Another machine's catalog, this one, and this one rebuilt from the journal list
    only ``df/p``, and none of it has the tag of what was refused; fsck is clean."""
    assert _seen_elsewhere(store, folder) == {"names": ["df/p"], "search": []}
    assert store.list_artifacts() == ["df/p"]
    assert store.catalog.search("stage:prod") == []
    store.repo.reindex()
    assert [a.name for a in store.catalog.list()] == ["df/p"]
    assert fsck.check(store).ok


def test_a_name_below_a_name_is_refused_before_anything_is_written(
    root: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, options = root
    with cas.open_store(url, **options) as store:
        store.save(b"1", "df/p")
        entries = store.repo.journal.stamps()
        with pytest.raises(RefConflict):
            store.save(b"2", "df/p/q", tags={"stage": "prod"})
        with pytest.raises(RefConflict):
            store.catalog.register("df", "Model", data=b"3")  # above it, the same
        assert store.repo.journal.stamps() == entries  # no entry, not even a withdrawn one
        _only_df_p_is_seen(store, tmp_path / "other")
    # A process that knows nothing of the root (on a bucket its read of the name and
    # the check of the names around it go together) refuses alike.
    with cas.open_store(url, **options) as other:
        for value, name in ((b"4", "df/p/r"), (b"5", "df")):
            with pytest.raises(RefConflict):
                other.save(value, name, tags={"stage": "prod"})
        assert other.repo.journal.stamps() == entries
        assert other.list_artifacts() == ["df/p"]


def test_a_save_that_loses_the_name_to_a_racing_writer_is_withdrawn(
    root: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check before writing passed; then a concurrent writer created ``df/p``: the
    name cannot move, and no catalog ever lists the record."""
    url, options = root
    with cas.open_store(url, **options) as store:
        store.save(b"1", "df/p")
        monkeypatch.setattr(Names, "check_new", lambda self, name: None)  # the race
        with pytest.raises(RefConflict):
            store.save(b"2", "df/p/q", tags={"stage": "prod"})
        assert _seen_elsewhere(store, tmp_path / "other") == {"names": ["df/p"], "search": []}
        assert store.catalog.search("stage:prod") == []
        assert [a.name for a in store.catalog.list()] == ["df/p"]
        store.repo.reindex()
        assert [a.name for a in store.catalog.list()] == ["df/p"]


def test_a_refusal_inside_a_batch_publishes_none_of_it(tmp_path: Path) -> None:
    with cas.open_store(str(tmp_path / "store")) as store:
        store.save(b"1", "df/p")
        with pytest.raises(RefConflict), store.batch():
            store.save(b"a", "ok/a")
            store.save(b"b", "df/p/q")  # refused now: the batch stops here
        assert store.list_artifacts() == ["df/p"]
        assert _seen_elsewhere(store, tmp_path / "other")["names"] == ["df/p"]


# -- a save killed on its way: invisible before its name is claimed, whole after --------

_KILLED_SAVE = """
import json, sys, time
import cas
from cas.repo.journal import Journal
from cas.repo.names import Names

url, options, name, where = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]

def stall(*args, **kwargs):
    print("ready", flush=True)
    time.sleep(60)

if where == "before-claim":  # its objects are written and synced
    Names.set = stall
else:  # "after-claim": its name's history entry is written, its journal entry not yet
    append = Journal.append
    def stall_puts(self, event, *args, **kwargs):
        if event["op"] == "put":
            stall()
        return append(self, event, *args, **kwargs)
    Journal.append = stall_puts
store = cas.open_store(url, fsync=False, **options)
store.save(b"the dead writer's bytes", name, tags={"stage": "prod"})
"""


def _kill_a_save(url: str, options: dict[str, Any], name: str, where: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, url, json.dumps(options), name, where],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", "the saving process never got ready"
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -9


@pytest.fixture(params=["local", "s3"])
def shared_root(
    request: pytest.FixtureRequest, tmp_path: Path, fresh_cache: None
) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "store"), {}
    server: Server = request.getfixturevalue("s3_server")
    return server.url(server.new_bucket(), "store"), dict(server.storage_options)


def test_a_save_killed_before_its_name_is_claimed_is_seen_by_no_reader(
    shared_root: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Its content and record are written (gc's to collect); no catalog lists it, in
    this process, another machine, or after a rebuild from the journal."""
    url, options = shared_root
    with cas.open_store(url, **options) as store:
        store.save(b"1", "df/p")
        _kill_a_save(url, options, "df/q", "before-claim")
        _only_df_p_is_seen(store, tmp_path / "other")


def test_a_save_killed_after_its_name_is_claimed_is_rolled_forward_whole(
    shared_root: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Killed between the claim of its name and its journal entry: readers see the old
    value until someone settles it (here fsck, as the next writer would); then the
    name, the catalog of every machine and the history all have it."""
    url, options = shared_root
    with cas.open_store(url, **options) as store:
        store.save(b"1", "df/p")
        _kill_a_save(url, options, "df/p", "after-claim")
        assert store.load("df/p") == b"1"  # not happened yet
        assert _seen_elsewhere(store, tmp_path / "before") == {"names": ["df/p"], "search": []}
        report = fsck.check(store, settle=0.0)
        assert report.problems == [], [p.describe() for p in report.problems]
        assert store.load("df/p") == b"the dead writer's bytes"
        assert _seen_elsewhere(store, tmp_path / "after") == {
            "names": ["df/p"], "search": ["df/p"],
        }  # fmt: skip
        store.repo.sync()
        assert [a.name for a in store.catalog.search("stage:prod")] == ["df/p"]
        store.repo.reindex()
        assert [a.name for a in store.catalog.search("stage:prod")] == ["df/p"]
        assert fsck.check(store).ok
