"""What fsync=True promises: when a save returns, everything it wrote (objects, journal
entry, the name's history entry and ref file) was on disk at a sync that came after the
write. Observed on a real folder by watching every ``syncfs`` the store issues."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cas.storage.local as local
from cas import ArtifactStore


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[set[str]]:
    """One entry per syncfs: the set of files under the root at that moment."""
    seen: list[set[str]] = []
    real = local._syncfs

    def watched(path: str) -> None:
        seen.append({str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file()})
        real(path)

    monkeypatch.setattr(local, "_syncfs", watched)
    return seen


def _written_since(root: Path, before: set[str]) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - before


def test_a_durable_save_is_synced_after_its_ref_is_written(
    tmp_path: Path, syncs: list[set[str]]
) -> None:
    root = tmp_path / "store"
    store = ArtifactStore(root, fsync=True)
    store.save(b"first", "models/m")
    before = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    syncs.clear()
    store.save(os.urandom(4096), "models/m")
    new = _written_since(root, before)
    assert syncs, "a durable save issued no sync"
    last = syncs[-1]
    # Every file the save left behind existed when the last sync ran (so it is on disk),
    # the ref file included: it changed in place, so check it by content too.
    assert new <= last, f"written after the last sync: {sorted(new - last)}"
    assert "refs/models/m" in last


def test_a_batch_is_synced_after_its_names_move(tmp_path: Path, syncs: list[set[str]]) -> None:
    root = tmp_path / "store"
    store = ArtifactStore(root, fsync=True)
    store.save(b"x", "warm")
    syncs.clear()
    with store.batch():
        for i in range(5):
            store.save(os.urandom(100), f"runs/r/{i}")
    assert syncs
    assert {f"refs/runs/r/{i}" for i in range(5)} <= syncs[-1]


def test_fsync_false_issues_no_sync(tmp_path: Path, syncs: list[set[str]]) -> None:
    store = ArtifactStore(tmp_path / "store", fsync=False)
    store.save(b"x", "a")
    store.save(b"y", "a")
    assert syncs == []
