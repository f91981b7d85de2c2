"""``cas gc --pack --aggressive``: delta bases chosen again over the whole store. Every
id reads the same bytes after it, the store is smaller, fsck is clean, chains stay
within the writer's caps, and a process killed at any point of it loses nothing."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cas
from cas.admin import fsck, gc
from cas.objects import codec, delta
from cas.objects.ids import blob_id

WORDS = [
    "def",
    "return",
    "self",
    "import",
    "class",
    "from",
    "if",
    "else",
    "for",
    "in",
    "while",
    "yield",
    "value",
    "name",
    "path",
    "store",
    "object",
    "pack",
    "delta",
    "base",
    "chain",
    "window",
    "index",
    "read",
    "write",
    "verify",
    "size",
]


def _release(rng: random.Random, files: dict[str, bytes]) -> dict[str, bytes]:
    """The next release: a third of the files edited a little, one file added."""
    out = dict(files)
    for rel in rng.sample(sorted(out), len(out) // 3):
        lines = out[rel].split(b"\n")
        for _ in range(3):
            lines.insert(rng.randrange(len(lines)), _line(rng))
        out[rel] = b"\n".join(lines)
    out[f"pkg/added_{len(out)}.py"] = b"\n".join(_line(rng) for _ in range(80))
    return out


def _line(rng: random.Random) -> bytes:
    return ("    " * rng.randrange(3) + " ".join(rng.choices(WORDS, k=8))).encode()


def _series(root: Path, versions: int = 4) -> list[Path]:
    rng = random.Random(35)
    files = {
        f"pkg/{d}/mod_{i}.py": b"\n".join(_line(rng) for _ in range(rng.randrange(60, 240)))
        for d in ("core", "io")
        for i in range(10)
    }
    folders = []
    for n in range(versions):
        if n:
            files = _release(rng, files)
        folder = root / f"release-{n}"
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        folders.append(folder)
    return folders


def _save_series(root: Path, folders: list[Path], *, large: bool = True) -> None:
    """Each release under a name of its own, in folders of their own: no save finds
    another release as its kin, so only a repack can share their bytes."""
    store = cas.open_store(root, fsync=False)
    for n, folder in enumerate(folders):
        store.save(folder, f"team-{n}/release")
        store.save(folder / "pkg" / "core" / "mod_0.py", f"loose-{n}/mod")  # a loose blob
    if not large:
        return store.close()
    # A large file, twice: chunks above the window's size keep their stored form.
    big = bytearray(random.Random(7).randbytes(9 << 19))
    store.save(bytes(big), "weights/a")
    big[1 << 20 : (1 << 20) + 64] = bytes(64)
    store.save(bytes(big), "weights/b")
    return store.close()


def _objects(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every object of the store, read (and verified) by its id."""
    space = cas.open_store(root).space
    return {oid: space.read_object(oid) for oid in set(space)}


def _stored_bytes(root: Path) -> int:
    files = (f for d in ("objects", "packs") for f in (root / d).rglob("*") if f.is_file())
    return sum(f.stat().st_size for f in files)


def _chains(root: Path) -> list[tuple[int, int, int]]:
    """(header depth, levels counted down to a plain object, writer's cap) of each object."""
    space = cas.open_store(root).space
    out = []
    for oid in set(space):
        head = space.head(oid)
        levels, below = 0, head.base
        while below is not None:
            levels += 1
            below = space.head(below).base
        out.append((head.depth, levels, delta.max_depth(head.raw_size)))
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    base = tmp_path_factory.mktemp("aggressive")
    folders = _series(base / "src")
    _save_series(base / "store", folders)
    return base / "store", folders


def _aggressive(root: Path) -> gc.GcResult:
    store = cas.open_store(root, fsync=False)
    try:
        return gc.execute(store, gc.plan(store, grace=0, pack_loose_from=1), aggressive=True)
    finally:
        store.close()


def test_every_id_reads_the_same_and_the_store_shrinks(
    saved: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(saved[0], root)
    before = _objects(root)
    result = _aggressive(root)
    assert result.repacked == len(before) and result.repacked_to < result.repacked_from
    assert _objects(root) == before

    assert not [p for p in (root / "objects").rglob("*") if p.is_file()]  # all packed now
    assert len(list((root / "packs").glob("*.pack"))) == 1
    report = fsck.check(cas.open_store(root))
    assert report.ok, report.problems
    small = tmp_path / "small"  # the releases alone: the bytes they take shrink
    _save_series(small, saved[1], large=False)
    size = _stored_bytes(small)
    _aggressive(small)
    assert _stored_bytes(small) < 0.6 * size
    for depth, levels, cap in _chains(root):  # depths agree with the chains, under the caps
        assert depth == levels <= cap
    store = cas.open_store(root)
    for n, folder in enumerate(saved[1]):
        got = Path(store.load(f"team-{n}/release", dest=tmp_path / f"out-{n}"))
        for f in folder.rglob("*"):
            if f.is_file():
                assert (got / f.relative_to(folder)).read_bytes() == f.read_bytes()
    # Again: nothing left to gain, nothing lost.
    again = _aggressive(root)
    assert again.repacked_to <= result.repacked_to * 1.01
    assert _objects(root) == before


def test_a_delta_on_a_base_repacked_meanwhile_still_reads(
    saved: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """A writer beside the repack may write a delta naming its base's old depth: the
    reader counts the levels of a chain, not the depths its headers give."""
    root = tmp_path / "store"
    shutil.copytree(saved[0], root)
    _aggressive(root)
    store = cas.open_store(root, fsync=False)
    space = store.space
    deep = next(o for o in set(space) if space.head(o).depth >= 2)
    _, payload = space.read_entry(deep)
    new = payload + b"\n# one more line\n"
    stale = delta.encode("blob", new, delta.Base(deep, payload, 0))  # says depth 1
    oid = blob_id(new)
    assert codec.read_header(oid, stale).depth == 1
    space.storage.write_atomic(f"objects/{oid[:2]}/{oid[2:]}", stale)
    assert space.read_object(oid) == ("blob", new)


CRASH = textwrap.dedent(
    """
    import json, os, signal, sys
    import cas
    from cas.admin import gc

    store = cas.open_store(sys.argv[1], fsync=False)
    what, at = sys.argv[2], int(sys.argv[3])
    storage = store.repo.storage
    calls = {"write_atomic": 0, "delete": 0}
    for name in calls:
        def hooked(path, *args, _name=name, _orig=getattr(storage, name), **kwargs):
            done = _orig(path, *args, **kwargs)
            if not path.startswith("packs/"):
                return done
            calls[_name] += 1
            if _name == what and calls[_name] == at:
                os.kill(os.getpid(), signal.SIGKILL)  # right after that write or delete
            return done
        setattr(storage, name, hooked)
    gc.execute(store, gc.plan(store, grace=0, pack_loose_from=1), aggressive=True)
    print(json.dumps(calls))
    """
)


def _run_crash(root: Path, what: str, at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", CRASH, str(root), what, str(at)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip


def test_a_repack_killed_at_any_point_loses_nothing(
    saved: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    before = _objects(saved[0])
    whole = tmp_path / "whole"
    shutil.copytree(saved[0], whole)
    done = _run_crash(whole, "none", 0)
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout.strip().splitlines()[-1])  # of files under packs/
    assert calls["write_atomic"] >= 2 and calls["delete"] >= 2  # a pack, its index; the old
    points = [(w, n) for w in ("write_atomic", "delete") for n in range(1, calls[w] + 1)]
    for what, at in points:
        root = tmp_path / f"{what}-{at}"
        shutil.copytree(saved[0], root)
        killed = _run_crash(root, what, at)
        assert killed.returncode == -9, (what, at, killed.stderr)
        assert _objects(root) == before, (what, at)  # each one there, verified
        report = fsck.check(cas.open_store(root))
        assert report.ok, (what, at, report.problems)
        _aggressive(root)  # the next run finishes the work
        assert _objects(root) == before, (what, at)


def test_cli_gc_aggressive(saved: tuple[Path, list[Path]], tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(saved[0], root)
    env = {k: v for k, v in os.environ.items() if k != "CAS_ROOT"}
    env["CAS_CACHE_DIR"] = str(tmp_path / "cache")
    run = subprocess.run(
        [sys.executable, "-m", "cas.cli", "--root", str(root), "gc", "--pack", "--aggressive",
         "--grace", "0", "--json"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["result"]
    assert result["repacked"] > 0 and result["repacked_to"] < result["repacked_from"]
    text = subprocess.run(
        [sys.executable, "-m", "cas.cli", "--root", str(root), "gc", "--aggressive", "--grace",
         "0"],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout  # fmt: skip
    assert "repacked" in text
