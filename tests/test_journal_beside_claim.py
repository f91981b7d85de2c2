"""On an object store a save's catalog journal entry is written beside its name's claim
(one round trip fewer), and the name is published only once both are there.

What that must keep: a save whose entry fails is not published and leaves nothing any
reader sees; a writer killed after its claim, before its entry landed, leaves a claim
that the next writer rolls forward, and the next writer writes the entry first (the
claim carries its stamp), so every machine's catalog learns the artifact its name holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest

import cas
import cas.refs.store as refs_store
from cas.admin import fsck
from cas.refs import RefStore
from cas.repo.journal import Journal
from cas.repo.local_catalog import LocalCatalog
from cas.testing.servers import Server

NAME = "models/fraud"


@pytest.fixture(params=["memory", "s3", "gcs", "azure"])
def root(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    if request.param == "memory":
        top = f"/beside-{uuid.uuid4().hex}"
        yield f"memory://{top}/store", {}
        fs = fsspec.filesystem("memory")
        if fs.exists(top):
            fs.rm(top, recursive=True)
        return
    server: Server = request.getfixturevalue(f"{request.param}_server")
    yield server.url(server.new_bucket(), "store"), server.storage_options


def _elsewhere(store: Any, folder: Path) -> dict[str, Any]:
    """What another machine's catalog of the root holds after a sync."""
    other = LocalCatalog(store.repo.space, store.repo.journal, folder)
    try:
        other.sync()
        return {r["id"]: r["name"] for r in other.catalog.list(limit=100)}
    finally:
        other.close()


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs in the writer."""


def test_a_save_whose_journal_entry_fails_is_not_published(
    root: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = root
    with cas.open_store(url, **options) as store:
        first = store.save(b"v1", NAME)

        def fails(self: Journal, stamp: str, event: dict[str, Any], **_: Any) -> None:
            raise ConnectionError("the journal entry could not be written (injected)")

        monkeypatch.setattr(Journal, "write", fails)
        with pytest.raises(ConnectionError, match="injected"):
            store.save(b"v2", NAME)
        monkeypatch.undo()
        assert store.resolve(NAME)[0] == first
        assert [e["new"] for e in store.history(NAME)] == [first]  # the claim taken back
        assert _elsewhere(store, tmp_path / "other") == {first: NAME}
        assert store.load(NAME) == b"v1"
        assert fsck.check(store).ok


def test_a_writer_killed_before_its_journal_entry_landed_is_rolled_forward_with_it(
    root: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, options = root
    with cas.open_store(url, **options) as store:
        first = store.save(b"v1", NAME)
    with cas.open_store(url, **options) as dying:
        # A writer on another host whose lease ran out at once: its claim may be rolled
        # forward by the next writer without waiting.
        dead = {"pid": 999_999, "host": "elsewhere", "start": 1.0, "boot": "another-boot",
                "pidns": "other", "lease": 0.001}  # fmt: skip
        monkeypatch.setattr(refs_store, "owner_fields", lambda lease=0.0: dict(dead))
        monkeypatch.setattr(Journal, "write", lambda self, stamp, event, **_: None)  # lost

        def killed(self: RefStore, *args: Any, **kwargs: Any) -> None:
            raise Killed

        monkeypatch.setattr(RefStore, "_publish", killed)
        with pytest.raises(Killed):
            dying.save(b"v2", NAME)
        monkeypatch.undo()
        claimed = dying.refs._log.all(NAME)[-1]  # an update in flight: log() leaves it out
        assert claimed.entry.old == first and dying.resolve(NAME)[0] == first  # unpublished
    second = claimed.entry.new
    assert second is not None and claimed.record["journal"].endswith(f"-put-{second}")
    stamps = [s for s in Journal(dying.repo.storage).stamps() if s.endswith(second)]
    assert stamps == []  # its journal entry never landed
    with cas.open_store(url, **options) as other:
        third = other.save(b"v3", NAME)
        assert [e["new"] for e in other.history(NAME)] == [third, second, first]
        assert [s for s in other.repo.journal.stamps() if s.endswith(second)] != []
        assert _elsewhere(other, tmp_path / "elsewhere") == {first: NAME, second: NAME, third: NAME}
        assert other.load(second) == b"v2" and other.load(NAME) == b"v3"
        assert fsck.check(other).ok
