"""States a user can reach that must not need a hand-typed ``rm``: a damaged index, a
read-only store, a typo in a root. Each ends in a working store or a ``CasError`` that
says what to do, and the documented remedy works."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

import cas


def _overwrite_start(data: Path) -> None:
    with data.open("r+b") as f:
        f.write(os.urandom(4096))


def _truncate(data: Path) -> None:
    os.truncate(data, 100)


def _second_meta_page(data: Path) -> None:
    with data.open("r+b") as f:  # the meta page LMDB picks when its txn id is larger
        f.seek(4096)
        f.write(b"\xff" * 4096)


def _data_pages(data: Path) -> None:
    size = data.stat().st_size
    with data.open("r+b") as f:  # the meta pages sound, every page they point at garbage
        f.seek(2 * 4096)
        f.write(os.urandom(size - 2 * 4096))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "overwritten": _overwrite_start,
    "truncated": _truncate,
    "meta-page": _second_meta_page,
    "data-pages": _data_pages,
}


def _fill(root: str) -> dict[str, str]:
    store = cas.open_store(root)
    ids = {f"models/m{i}": store.save(f"model {i}".encode(), f"models/m{i}") for i in range(40)}
    store.catalog.tag(ids["models/m3"], stage="production")
    store.repo.close()
    return ids


def _check(root: str, ids: dict[str, str]) -> None:
    store = cas.open_store(root)
    assert store.load("models/m7") == b"model 7"
    assert [a.id for a in store.catalog.search("stage:production")] == [ids["models/m3"]]
    assert len(store.catalog.list(limit=1000)) == 40
    new = store.save(b"after", "models/after")
    assert store.catalog.get(new).name == "models/after"
    store.repo.close()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_local_index_is_set_aside_and_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "store"
    ids = _fill(str(root))
    DAMAGE[damage](root / "index" / "catalog" / "data.mdb")
    with caplog.at_level(logging.WARNING, logger="cas"):
        _check(str(root), ids)
    aside = [p for p in (root / "index").iterdir() if p.name.startswith("damaged-")]
    if damage in ("overwritten", "truncated"):  # the others may be read past by LMDB
        assert len(aside) == 1 and (aside[0] / "catalog" / "data.mdb").exists()
    for folder in aside:
        assert any(str(folder) in r.getMessage() for r in caplog.records)


def test_a_damaged_index_of_a_remote_root_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAS_CACHE_DIR", str(tmp_path / "cache"))
    root = f"memory://damaged-{os.getpid()}-{tmp_path.name}"
    ids = _fill(root)
    (data,) = (tmp_path / "cache").rglob("data.mdb")
    _overwrite_start(data)
    _check(root, ids)


def test_a_catalog_emptied_beside_its_sync_state_is_read_whole(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = _fill(str(root))
    # The sync state says the catalog holds every entry up to a day from now (as for a
    # store whose entries are all older than the resync window): an emptied catalog
    # must not trust it.
    state_path = root / "index" / "sync.msgpack"
    state = msgpack.unpackb(state_path.read_bytes())
    later = (_dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=1)).strftime("%Y%m%dT%H%M%S")
    state.update(newest=later + ".000000Z", listed_at=later + ".000000Z", deep_at=time.time())
    state_path.write_bytes(msgpack.packb(state))
    os.truncate(root / "index" / "catalog" / "data.mdb", 0)
    _check(str(root), ids)


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cas.cli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["reindex", "fsck"])
def test_reindex_and_fsck_work_on_a_damaged_index(
    tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    ids = _fill(str(root))
    _overwrite_start(root / "index" / "catalog" / "data.mdb")
    env = {**os.environ, "CAS_CACHE_DIR": str(tmp_path / "cache")}
    run = _cli("--root", str(root), command, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "set aside in" in run.stderr and "damaged-" in run.stderr
    _check(str(root), ids)


# -- a read-only store ----------------------------------------------------------------

READER = r"""
import json, sys
import cas
store = cas.open_store(sys.argv[1])
out = {"load": store.load("models/m7").decode(),
       "name": store.get_metadata("models/m3")["name"],
       "search": [a.id for a in store.catalog.search("stage:production")],
       "names": len(store.list_artifacts())}
for what, call in [("save", lambda: store.save(b"new", "models/new")),
                   ("dedup", lambda: store.save(b"model 1", "models/again")),
                   ("tag", lambda: store.catalog.tag(out["search"][0], stage="old")),
                   ("delete", lambda: store.delete("models/m1"))]:
    try:
        call()
        out[what] = "written"
    except cas.ReadOnlyStore as exc:
        out[what] = str(exc)
print(json.dumps(out))
"""


def _as_a_reader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run Python as a user whom permissions bind: as root (whom ``chmod`` does not
    stop), the same user without the capabilities that override file permissions."""
    command = [sys.executable, "-c", READER, *args]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search,-fowner,-linux_immutable"
        command = ["setpriv", f"--bounding-set={drop}", "--inh-caps=-all", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_read_only_store_is_read_with_its_catalog_in_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "store"
    ids = _fill(str(root))
    shutil.rmtree(root / "index")  # a copy without its index, as an archive may be
    before = _files(root)
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        env = {**os.environ, "CAS_CACHE_DIR": str(tmp_path / "cache")}
        run = _as_a_reader(str(root), env=env)
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert out["load"] == "model 7" and out["name"] == "models/m3"
        assert out["search"] == [ids["models/m3"]] and out["names"] == 40
        for what in ("save", "dedup", "tag", "delete"):
            assert "is read-only here" in out[what] and str(root) in out[what], out
            assert "cas pull" in out[what]
        assert _files(root) == before  # nothing written, the index not even made
        assert list((tmp_path / "cache").rglob("data.mdb"))  # the catalog is kept there
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


# -- a typo in a root ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--port", "0", "--token-file", "missing"],  # an argument error first
        ["serve", "--port", "0"],  # a root that is not a store
        ["serve", "--port", "70000"],
    ],
)
def test_serve_never_creates_a_store(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "CAS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("CAS_ROOT", None)
    run = _cli("--root", "./typo", *args, cwd=tmp_path, env=env)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "typo").exists()
    if "--token-file" not in args and "70000" not in args:
        assert "run 'cas init'" in run.stderr
