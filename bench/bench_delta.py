"""Delta benchmark (issue 21): successive releases of a public package, as folders and
as tar files, stored by cas with deltas beside restic and git, in the same run.

Run: ``python -m bench.bench_delta [--package pip] [--versions 24.0,24.1,24.2,24.3]``
(or ``python -m bench delta``).

The data: the source distributions of ``--versions`` of ``--package``, fetched with
``pip download --no-deps --no-binary :all:`` (kept in ``$CAS_BENCH_CACHE`` or
``/tmp/cas-bench-delta``), each unpacked to a folder and also written as one
uncompressed tar (as ``python -m build`` writes it before gzip). Without a package
index, successive "releases" are made from the source tree of a package installed
here (a third of its files edited a little each release, one added, one removed); the
output says which.

Measured, each version saved in turn:

- **stored bytes** (files under ``objects/`` and ``packs/``) of cas with deltas (every
  version under one name: the previous version lends its bases), of cas with deltas
  and each version under a sibling name of its own (``pkg/<version>``, as releases,
  checkpoints and dated datasets are named), of cas without deltas (a name each: what
  cas stored before), of restic
  (``restic backup`` of each version; repository size) and of git (a commit per
  version, then ``git gc --aggressive``; pack bytes).
- **after ``cas gc --pack --aggressive``**: stored bytes of the sibling names' store once
  every pack is rewritten with bases chosen again across the store, and its seconds.
- **put**: seconds to save each new version (after the first), with deltas and
  without; **load**: seconds to load the newest version, with deltas and without.
- the design's numbers: the chain cap (a source file edited ``--chain`` times under
  one name: load time of each depth against a plain load), and the saving threshold
  (stored bytes of the folders at other values of ``delta.MIN_SAVING``).

Targets: stored bytes <= 0.5x restic's for the folders and for the tars (<= 0.7x under
sibling names, without ``cas gc --pack``; <= 0.5x after ``cas gc --pack --aggressive``,
measured on the siblings' store in the same run); put of a new
version >= 0.5x the put without deltas; load of the newest version >= 0.5x a plain
load. Moonshot: within 1.2x of git's ``gc --aggressive`` packs on the folders.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cas
from bench._common import fresh, mark, table, workdir
from bench._procs import tool, version
from cas.admin import gc
from cas.objects import delta

TARGET_BYTES = 0.5  # x restic
TARGET_SIBLINGS = 0.7  # x restic, each version under a name of its own
TARGET_SPEED = 0.5  # x cas without deltas
MOONSHOT = 1.2  # x git gc --aggressive


# -- the data ------------------------------------------------------------------------------


def _download(package: str, versions: Sequence[str], cache: Path) -> list[Path] | None:
    """The sdists of ``versions``, fetched with pip (cached); None if pip cannot."""
    cache.mkdir(parents=True, exist_ok=True)
    found: list[Path] = []
    for v in versions:
        have = sorted(cache.glob(f"{package}-{v}.tar.gz")) + sorted(
            cache.glob(f"{package}-{v}.zip")
        )
        if not have:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                 ":all:", "-d", str(cache), f"{package}=={v}"],
                capture_output=True, timeout=300, check=False,
            )  # fmt: skip
            have = sorted(cache.glob(f"{package}-{v}.tar.gz"))
        if not have:
            return None
        found.append(have[0])
    return found


def _unpack(sdists: Sequence[Path], into: Path) -> list[Path]:
    folders = []
    for sdist in sdists:
        with tarfile.open(sdist) as tar:
            tar.extractall(into, filter="data")
        top = into / sdist.name.removesuffix(".tar.gz")
        folders.append(top)
    return folders


def _made_up(versions: int, into: Path) -> tuple[list[Path], str]:
    """Releases made from an installed package's source (no package index here)."""
    import email  # noqa: F401 - any stdlib package with many modules

    source = Path(os.path.dirname(email.__file__))
    rng = random.Random(21)
    files = {p.relative_to(source): p.read_bytes() for p in source.rglob("*.py")}
    out = []
    for n in range(versions):
        if n:
            for rel in rng.sample(sorted(files), len(files) // 3):
                lines = files[rel].split(b"\n")
                for _ in range(3):
                    i = rng.randrange(len(lines))
                    lines.insert(i, b"# release %d: %d" % (n, rng.randrange(10**6)))
                files[rel] = b"\n".join(lines)
            files.pop(rng.choice(sorted(files)))
        folder = into / f"email-{n}"
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        out.append(folder)
    return out, f"made up: {versions} releases edited from {source}"


def _tars(folders: Sequence[Path], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for folder in folders:
        path = into / f"{folder.name}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder, arcname=folder.name)
        out.append(path)
    return out


def _bytes_under(*paths: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(r, f)) for p in paths for r, _, fs in os.walk(p) for f in fs
    )


# -- cas --------------------------------------------------------------------------------------


#: How the versions are named: "one" name with deltas, "siblings" ``pkg/<item>`` with
#: deltas, "plain": a name each without deltas (every object plain, as cas stored before).
NAMINGS = ("one", "siblings", "plain")


def _name(naming: str, n: int, item: Path) -> str:
    return {"one": "pkg", "siblings": f"pkg/{item.name}", "plain": f"pkg-{n}"}[naming]


def _cas(root: Path, items: Sequence[Path], *, naming: str, out: Path) -> dict[str, Any]:
    """Save each version in turn under the names of ``naming``; then load the newest.
    Returns stored bytes, put seconds of each version, load seconds; under sibling
    names, also the stored bytes after ``cas gc --pack --aggressive`` and its seconds."""
    store = cas.open_store(fresh(root))
    store.space.deltas = naming != "plain"
    puts = []
    for n, item in enumerate(items):
        t0 = time.perf_counter()
        store.save(item, _name(naming, n, item))
        puts.append(time.perf_counter() - t0)
    newest = _name(naming, len(items) - 1, items[-1])
    loads = []
    for _ in range(3):
        fresh(out)
        t0 = time.perf_counter()
        got = store.load(newest, dest=out / items[-1].name)
        loads.append(time.perf_counter() - t0)
    if items[-1].is_file() and Path(got).read_bytes() != items[-1].read_bytes():
        raise AssertionError(f"{items[-1]} did not load back the same")
    stored = _bytes_under(root / "objects", root / "packs")
    repacked, repack_s = None, None
    if naming == "siblings":  # what `cas gc --pack --aggressive --grace 0` leaves
        t0 = time.perf_counter()
        gc.execute(store, gc.plan(store, grace=0, pack_loose_from=1), aggressive=True)
        repack_s = time.perf_counter() - t0
        repacked = _bytes_under(root / "objects", root / "packs")
        got = store.load(newest, dest=fresh(out) / items[-1].name)
        if items[-1].is_file() and Path(got).read_bytes() != items[-1].read_bytes():
            raise AssertionError(f"{items[-1]} did not load back the same after the repack")
    store.close()
    return {"bytes": stored, "puts": puts, "load": min(loads), "repacked": repacked,
            "repack_s": repack_s}  # fmt: skip


def _best(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    puts = [min(r["puts"][i] for r in runs) for i in range(len(runs[0]["puts"]))]
    return {"bytes": runs[0]["bytes"], "puts": puts, "load": min(r["load"] for r in runs),
            "repacked": runs[0]["repacked"], "repack_s": runs[0]["repack_s"]}  # fmt: skip


# -- peers ------------------------------------------------------------------------------------


def _restic(exe: str, repo: Path, items: Sequence[Path]) -> int | None:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(repo) + "-cache"}
    if subprocess.run([exe, "init", "-r", str(fresh(repo)), "-q"], env=env,
                      capture_output=True, check=False).returncode:  # fmt: skip
        return None
    for item in items:
        if item.is_dir():
            cwd, what = item, "."
        else:  # the same file name each version, as a versioned file is backed up
            cwd = item.parent / "restic-view"
            fresh(cwd).mkdir()
            os.link(item, cwd / "pkg.tar")
            what = "pkg.tar"
        done = subprocess.run([exe, "-r", str(repo), "backup", "-q", "--host", "bench", what],
                              cwd=cwd, env=env, capture_output=True, check=False)  # fmt: skip
        if done.returncode:
            return None
    return _bytes_under(repo)


def _git(exe: str, repo: Path, items: Sequence[Path]) -> int | None:
    git = [exe, "-C", str(fresh(repo)), "-c", "user.name=b", "-c", "user.email=b@b",
           "-c", "gc.auto=0"]  # fmt: skip
    subprocess.run([exe, "init", "-q", str(repo)], capture_output=True, check=True)
    for item in items:
        for entry in repo.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        if item.is_dir():
            shutil.copytree(item, repo, dirs_exist_ok=True)
        else:
            shutil.copy(item, repo / "pkg.tar")
        subprocess.run([*git, "add", "-A", "-f"], capture_output=True, check=True)
        subprocess.run([*git, "commit", "-q", "-m", item.name], capture_output=True, check=True)
    if subprocess.run([*git, "gc", "--aggressive", "-q"], capture_output=True).returncode:
        return None
    return _bytes_under(repo / ".git" / "objects" / "pack")


# -- the design's numbers ---------------------------------------------------------------------


def _chain(work: Path, source: bytes, edits: int) -> list[tuple[int, float]]:
    """(depth, load seconds / plain load seconds) of each version of one file edited
    ``edits`` times under one name."""
    rng = random.Random(5)
    store = cas.open_store(fresh(work / "chain"), fsync=False)
    plain = cas.open_store(fresh(work / "chain-plain"), fsync=False)
    data, ids = source, []
    for _ in range(edits):
        lines = data.split(b"\n")
        lines.insert(rng.randrange(len(lines)), b"# an edit %d" % rng.randrange(10**6))
        data = b"\n".join(lines)
        ids.append((store.save(data, "doc"), plain.save(data, f"doc{len(ids)}")))

    def best(fn: Callable[..., object]) -> float:
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    out = []
    for aid, pid in ids:
        content = store.get_metadata(aid)["content_id"]
        depth = store.space.head(content).depth
        ratio = best(lambda a=aid: store.load(a)) / best(lambda p=pid: plain.load(p))
        out.append((depth, ratio))
    return out


def _thresholds(work: Path, folders: Sequence[Path], values: Sequence[float]) -> dict[float, int]:
    saved = delta.MIN_SAVING
    out = {}
    try:
        for value in values:
            delta.MIN_SAVING = value  # type: ignore[misc]
            root = work / f"threshold-{value}"
            store = cas.open_store(fresh(root), fsync=False)
            for folder in folders:
                store.save(folder, "pkg")
            store.close()
            out[value] = _bytes_under(root / "objects", root / "packs")
    finally:
        delta.MIN_SAVING = saved  # type: ignore[misc]
    return out


# -- the run ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_delta", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--package", default="pip", help="a package on PyPI with sdists (pip)")
    ap.add_argument("--versions", default="24.0,24.1,24.2,24.3",
                    help="successive releases, oldest first (24.0,24.1,24.2,24.3)")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2, help="puts and loads: best of (2)")
    ap.add_argument("--chain", type=int, default=2 * delta.MAX_DEPTH + 2,
                    help="edits of one file for the chain figures (2 x MAX_DEPTH + 2)")  # fmt: skip
    args = ap.parse_args(argv)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    cache = Path(os.environ.get("CAS_BENCH_CACHE") or "/tmp/cas-bench-delta")
    restic, git = tool("restic"), tool("git")
    with workdir("cas-bench-delta-") as work:
        sdists = _download(args.package, versions, cache)
        if sdists is not None:
            folders = _unpack(sdists, work / "src")
            source = f"{args.package} {', '.join(versions)}: sdists from the package index"
        else:
            folders, source = _made_up(len(versions), work / "src")
        tars = _tars(folders, work / "tars")
        size = sum(_bytes_under(f) for f in folders)
        print(f"delta benchmark: {source}; {size / 1e6:,.1f} MB of folders, "
              f"{sum(t.stat().st_size for t in tars) / 1e6:,.1f} MB of tars; "
              f"restic: {version(restic, 'version')}; git: {version(git)}")  # fmt: skip
        results: dict[str, dict[str, Any]] = {}
        for kind, items in (("folders", folders), ("tars", tars)):
            runs = {naming: _best([_cas(work / naming, items, naming=naming, out=work / "out")
                                   for _ in range(args.rounds)])
                    for naming in NAMINGS}  # fmt: skip
            with_d, without = runs["one"], runs["plain"]
            results[kind] = {
                "cas": with_d["bytes"], "cas_without_deltas": without["bytes"],
                "cas_siblings": runs["siblings"]["bytes"],
                "cas_aggressive": runs["siblings"]["repacked"],
                "aggressive_s": runs["siblings"]["repack_s"],
                "put_siblings_s": sum(runs["siblings"]["puts"][1:]),
                "load_siblings_s": runs["siblings"]["load"],
                "restic": _restic(restic, work / "restic", items) if restic else None,
                "git": _git(git, work / "git", items) if git else None,
                "put_s": sum(with_d["puts"][1:]), "put_plain_s": sum(without["puts"][1:]),
                "load_s": with_d["load"], "load_plain_s": without["load"],
                "puts": with_d["puts"], "puts_plain": without["puts"],
            }  # fmt: skip
        largest = max((p for p in folders[-1].rglob("*.py")), key=lambda p: p.stat().st_size)
        chain = _chain(work, largest.read_bytes(), args.chain)
        thresholds = _thresholds(work, folders, sorted({0.1, 0.25, 0.5, delta.MIN_SAVING}))
    return _report(results, chain, thresholds, source, largest.name)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _secs(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _report(
    results: dict[str, dict[str, Any]], chain: list[tuple[int, float]],
    thresholds: dict[float, int], source: str, chained: str,
) -> dict[str, Any]:  # fmt: skip
    rows, marks, figures = [], {}, {"data": source}
    for kind, r in results.items():
        vs_restic = _ratio(r["cas"], r["restic"])
        vs_git = _ratio(r["cas"], r["git"])
        put = _ratio(r["put_plain_s"], r["put_s"])
        load = _ratio(r["load_plain_s"], r["load_s"])
        peers = ["-" if r["restic"] is None else f"{r['restic'] / 1e6:.2f}",
                 "-" if r["git"] is None else f"{r['git'] / 1e6:.2f}"]  # fmt: skip
        rows.append([kind, f"{r['cas'] / 1e6:.2f}", f"{r['cas_without_deltas'] / 1e6:.2f}",
                     *peers, _x(vs_restic), _x(vs_git), _x(put), _x(load)])  # fmt: skip
        marks[f"{kind} <= {TARGET_BYTES}x restic"] = (
            vs_restic is not None and vs_restic <= TARGET_BYTES
        )
        sib_restic = _ratio(r["cas_siblings"], r["restic"])
        sib_put = _ratio(r["put_plain_s"], r["put_siblings_s"])
        sib_load = _ratio(r["load_plain_s"], r["load_siblings_s"])
        rows.append([f"{kind}, siblings", f"{r['cas_siblings'] / 1e6:.2f}",
                     f"{r['cas_without_deltas'] / 1e6:.2f}", *peers, _x(sib_restic),
                     _x(_ratio(r["cas_siblings"], r["git"])), _x(sib_put), _x(sib_load)])  # fmt: skip
        marks[f"{kind} under sibling names <= {TARGET_SIBLINGS}x restic"] = (
            sib_restic is not None and sib_restic <= TARGET_SIBLINGS
        )
        agg = r["cas_aggressive"]
        agg_restic, agg_git = _ratio(agg, r["restic"]), _ratio(agg, r["git"])
        rows.append([f"{kind}, siblings, gc --aggressive", f"{agg / 1e6:.2f}",
                     f"{r['cas_without_deltas'] / 1e6:.2f}", *peers, _x(agg_restic),
                     _x(agg_git), "-", "-"])  # fmt: skip
        marks[f"{kind} under sibling names after gc --aggressive <= {TARGET_BYTES}x restic"] = (
            agg_restic is not None and agg_restic <= TARGET_BYTES
        )
        print(f"  {kind}: cas gc --pack --aggressive took {r['aggressive_s']:.1f} s")
        marks[f"put {kind} >= {TARGET_SPEED}x"] = put is not None and put >= TARGET_SPEED
        marks[f"load {kind} >= {TARGET_SPEED}x"] = load is not None and load >= TARGET_SPEED
        print(f"  {kind}: put seconds of each version, with deltas {_secs(r['puts'])}, "
              f"without {_secs(r['puts_plain'])}")  # fmt: skip
        figures[kind] = {**r, "vs_restic": vs_restic, "vs_git": vs_git, "put_ratio": put,
                         "load_ratio": load, "siblings_vs_restic": sib_restic,
                         "aggressive_vs_restic": agg_restic, "aggressive_vs_git": agg_git}  # fmt: skip
    folders_git = figures["folders"]["vs_git"]  # type: ignore[index]
    marks[f"moonshot folders <= {MOONSHOT}x git"] = (
        folders_git is not None and folders_git <= MOONSHOT
    )
    agg_git = figures["folders"]["aggressive_vs_git"]  # type: ignore[index]
    marks[f"moonshot folders under sibling names after gc --aggressive <= {MOONSHOT}x git"] = (
        agg_git is not None and agg_git <= MOONSHOT
    )
    print(table(
        f"stored MB after every version ({source})",
        ["", "cas", "no deltas", "restic", "git gc", "vs restic", "vs git", "put", "load"], rows,
        ["put: seconds to save the new versions without deltas / with (>= 0.5x: PASS); load: "
         "of the newest version, plain / with deltas", "git: git gc --aggressive packs",
         f"siblings: each version under pkg/<version> (target <= {TARGET_SIBLINGS}x restic)",
         f"gc --aggressive: the siblings' store after `cas gc --pack --aggressive --grace 0` "
         f"(target <= {TARGET_BYTES}x restic)"],
    ))  # fmt: skip
    worst: dict[int, float] = {}
    for depth, ratio in chain:
        worst[depth] = max(worst.get(depth, 0.0), ratio)
    print(table(
        f"chain depth: a load of {chained} (edited each version) against a plain load",
        ["depth", "load time / plain"], [[str(d), f"{worst[d]:.2f}x"] for d in sorted(worst)],
        [f"the writer's cap is MAX_DEPTH = {delta.MAX_DEPTH} (chunks: {delta.LARGE_DEPTH}): the "
         "version after a delta at the cap takes the chain's plain root as its base"],
    ))  # fmt: skip
    print(table(
        "saving threshold: stored MB of the folders (a delta is kept if it saves this much)",
        ["MIN_SAVING", "stored MB"],
        [[f"{v:.2f}" + (" (chosen)" if v == delta.MIN_SAVING else ""), f"{b / 1e6:.3f}"]
         for v, b in thresholds.items()],
    ))  # fmt: skip
    for name, ok in marks.items():
        print(f"  {mark(ok)}  {name}")
    return {**figures, "chain": chain, "thresholds": thresholds, "pass": marks}


if __name__ == "__main__":
    main(sys.argv[1:])
