"""A refused save leaves nothing any reader sees: not this process, not another machine,
not a catalog rebuilt from the journal.

The refusal users meet most: a name below or above a name that exists (``df/p`` holds an
artifact, so ``df/p/q`` cannot be one). It is refused before the record and its journal
entry are written. A writer that loses a race for the name after that check (another
process created ``df/p`` meanwhile) follows its journal entry with a delete.
"""

from __future__ import annotations

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
        assert _seen_elsewhere(store, tmp_path / "other") == {"names": ["df/p"], "search": []}
        assert store.list_artifacts() == ["df/p"]
        assert store.catalog.search("stage:prod") == []
        store.repo.reindex()
        assert [a.name for a in store.catalog.list()] == ["df/p"]
        assert fsck.check(store).ok
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
    name cannot move, and the record's journal entry is followed by a delete."""
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
