"""The catalog journal: entries carry a checksum, and one that does not read never stops
the catalog: it is skipped, named on the reads it concerns, listed by fsck and reindex,
and gc will not run past it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import msgpack
import pytest

import cas
from cas.admin import fsck
from cas.errors import IntegrityError
from cas.objects.kinds import pack
from cas.repo.journal import JOURNAL, open_entry, stamp_day


def _entry(root: Path, stamp: str) -> Path:
    return root / JOURNAL / stamp_day(stamp) / stamp


@pytest.fixture
def tagged(tmp_path: Path) -> tuple[Path, str]:
    """A store with two artifacts, the first tagged; (root, the tag entry's stamp)."""
    root = tmp_path / "store"
    with cas.open_store(str(root), fsync=False) as store:
        rid = store.save(b"model bytes", "models/a")
        store.save(b"other bytes", "models/b")
        store.catalog.tag(rid, stage="production")
        [stamp] = [s for s in store.journal.stamps() if f"-tag-{rid}" in s]
    return root, stamp


def test_a_flipped_bit_inside_a_tag_value_is_detected(tagged: tuple[Path, str]) -> None:
    root, stamp = tagged
    path = _entry(root, stamp)
    raw = path.read_bytes()
    at = raw.index(b"production")
    path.chmod(0o644)
    path.write_bytes(raw[:at] + b"pRoduction" + raw[at + 10 :])  # still valid msgpack
    with pytest.raises(IntegrityError, match="checksum") as caught:
        open_entry(stamp, path.read_bytes())
    assert caught.value.object_id == stamp


def test_entries_written_before_checksums_still_read(tagged: tuple[Path, str]) -> None:
    root, stamp = tagged
    event = msgpack.unpackb(_entry(root, stamp).read_bytes(), raw=False)
    del event["check"]
    assert open_entry(stamp, pack(event))["tags"] == {"stage": "production"}


def test_a_damaged_entry_is_skipped_named_and_reported(
    tagged: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    root, stamp = tagged
    path = _entry(root, stamp)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:7])  # truncated
    shutil.rmtree(root / "index")  # a machine that builds its catalog from the journal
    with caplog.at_level(logging.WARNING, logger="cas"), cas.open_store(str(root)) as store:
        assert store.load("models/b") == b"other bytes"  # the rest of the store works
        assert store.load("models/a") == b"model bytes"  # its content is intact
        with pytest.raises(IntegrityError, match=stamp):  # its tags may be incomplete
            store.get_metadata("models/a")
        report = fsck.check(store)
        [problem] = [p for p in report.problems if p.kind == "damaged-journal"]
        assert problem.object_id == stamp and "models/a" in " ".join(problem.artifacts)
        assert store.reindex()["damaged"] and "models/a" in store.list_artifacts()
    assert stamp in caplog.text  # said once, on the sync that met it
    # Repaired (here: the tag written again and the bad entry moved away), a reindex
    # clears it.
    path.unlink()
    with cas.open_store(str(root)) as store:
        store.catalog.tag(store.resolve("models/a")[0], stage="production")
        assert store.reindex()["damaged"] == []
        assert store.get_metadata("models/a")["tags"] == {"stage": "production"}
        assert fsck.check(store).ok


def test_reindex_cli_exits_1_on_a_damaged_entry(
    tagged: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from cas.cli.main import main

    root, stamp = tagged
    path = _entry(root, stamp)
    path.chmod(0o644)
    path.write_bytes(b"")
    assert main(["--root", str(root), "reindex"]) == 1
    assert stamp in capsys.readouterr().out


def test_gc_refuses_past_a_damaged_entry_until_fsck_repair_sets_it_aside(
    tagged: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """gc cannot know what a damaged entry named, so it deletes nothing (exit 1, saying
    what to run); ``cas fsck --repair`` moves the entry to quarantine/ and says the tags
    it set are lost; then gc runs and every artifact still loads."""
    from cas.cli.main import main

    root, stamp = tagged
    path = _entry(root, stamp)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-3])
    shutil.rmtree(root / "index")  # a machine that never applied the entry
    objects = sorted((root / "objects").rglob("*"))
    assert main(["--root", str(root), "gc", "--grace", "0"]) == 1
    err = capsys.readouterr().err
    assert stamp in err and "cas fsck --repair" in err
    assert sorted((root / "objects").rglob("*")) == objects  # nothing deleted
    assert main(["--root", str(root), "fsck", "--repair"]) == 1  # problems were found
    out = capsys.readouterr().out
    assert f"quarantined journal/{stamp}" in out and "tag it again" in out
    assert (root / "quarantine" / "journal" / stamp).exists() and not path.exists()
    assert main(["--root", str(root), "fsck"]) == 0
    assert main(["--root", str(root), "gc", "--grace", "0"]) == 0
    with cas.open_store(str(root)) as store:
        assert store.load("models/a") == b"model bytes"
        assert store.load("models/b") == b"other bytes"


def test_repair_writes_a_damaged_put_entry_again(tmp_path: Path) -> None:
    """A damaged entry of a record that still reads is written again, so the record
    stays in every machine's catalog (and stays a gc root)."""
    root = tmp_path / "store"
    with cas.open_store(str(root), fsync=False) as store:
        rid = store.save(b"first version", "k")
        store.save(b"second version", "k")  # no ref holds the first: the catalog does
        [stamp] = [s for s in store.journal.stamps() if f"-put-{rid}" in s]
    _entry(root, stamp).chmod(0o644)
    _entry(root, stamp).write_bytes(b"\xc1")
    shutil.rmtree(root / "index")
    with cas.open_store(str(root)) as store:
        report = fsck.check(store, repair=True)
        assert [p.kind for p in report.problems] == ["damaged-journal"]
        assert any("written again" in line for line in report.repaired)
        assert rid in set(store.index.catalog.ids())
        assert store.load(rid) == b"first version"
        assert fsck.check(store).ok


def test_a_deleted_put_entry_is_found_and_written_again(tmp_path: Path) -> None:
    """A record a name (or this machine's catalog) holds, with no journal entry
    registering it: a catalog rebuilt elsewhere would lack it, so fsck names it and
    ``--repair`` writes the entry again."""
    root = tmp_path / "store"
    with cas.open_store(str(root), fsync=False) as store:
        old = store.save(b"first version", "k")
        new = store.save(b"second version", "k")
        gone = [s for s in store.journal.stamps() if "-put-" in s]
        for stamp in gone:
            _entry(root, stamp).unlink()
        problems = fsck.check(store).problems
        assert sorted((p.kind, p.object_id) for p in problems) == sorted(
            [("unjournaled", old), ("unjournaled", new)]
        )
        assert any(a.startswith("k (") for p in problems for a in p.artifacts)
        fsck.check(store, repair=True)
        assert fsck.check(store).ok
    shutil.rmtree(root / "index")
    with cas.open_store(str(root)) as store:
        assert {old, new} <= set(store.index.catalog.ids())


def test_a_deleted_tag_entry_is_found_where_it_was_applied(tagged: tuple[Path, str]) -> None:
    """Entries are not chained, so only a machine whose catalog applied a tag entry can
    tell it is gone: fsck there names it with its tags, and ``--repair`` journals them
    again, so a machine that builds its catalog from the journal has them too."""
    root, stamp = tagged
    _entry(root, stamp).unlink()
    with cas.open_store(str(root)) as store:
        [problem] = fsck.check(store).problems
        assert problem.kind == "lost-journal-entry" and problem.object_id == stamp
        assert "stage=production" in problem.detail and "models/a" in problem.artifacts[0]
        fsck.check(store, repair=True)
        assert fsck.check(store).ok
    shutil.rmtree(root / "index")
    with cas.open_store(str(root)) as store:
        assert store.get_metadata("models/a")["tags"] == {"stage": "production"}


def test_repair_journals_again_the_tags_of_a_damaged_entry_this_machine_applied(
    tagged: tuple[Path, str],
) -> None:
    root, stamp = tagged
    path = _entry(root, stamp)
    path.chmod(0o644)
    path.write_bytes(b"")
    with cas.open_store(str(root)) as store:
        report = fsck.check(store, repair=True)
        assert [p.kind for p in report.problems] == ["damaged-journal"]
        assert any("journaled again" in line for line in report.repaired)
        assert fsck.check(store).ok
    shutil.rmtree(root / "index")
    with cas.open_store(str(root)) as store:
        assert store.get_metadata("models/a")["tags"] == {"stage": "production"}
