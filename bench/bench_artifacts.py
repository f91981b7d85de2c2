"""Artifact benchmark: saves and loads of small artifacts, beside FlowyML and the disk.

Run: ``python -m bench.bench_artifacts [--count 5000] [--size 4096]``.

``count`` artifacts of ``size`` distinct random bytes under distinct names are saved
(content, record, journal entry, ref with history, catalog entry) and loaded back by
name, with ``fsync=False`` and ``fsync=True``. In the same run, on the same data:
FlowyML's ``LocalArtifactStore`` (it pickles each value to one file, no fsync), and
the cost of one atomic 4 KiB file write (temp file, rename; with and without fsync),
the floor under any durable save. Targets (issue 6): >= 1,500 saves/s and >= 10,000
loads/s (fsync=False; with fsync=True each save waits on the disk several times).
FlowyML is installed into this virtualenv on first use (``pip install flowyml``); if
that cannot be done the table says why and the benchmark goes on without it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import Rounds, fresh, mark, table, workdir

TARGET_SAVES = 1_500  # per second
TARGET_LOADS = 10_000  # per second
BREAKDOWN_SAVES = 500


def payloads(count: int, size: int, seed: int = 6) -> list[bytes]:
    blob = np.random.default_rng(seed).bytes(count * size)
    return [blob[i * size : (i + 1) * size] for i in range(count)]


def names(count: int) -> list[str]:
    return [f"bench/run{i % 50:02d}/artifact-{i:05d}" for i in range(count)]


# -- the peer -------------------------------------------------------------------------


def flowyml_store() -> tuple[Any, str]:
    """(FlowyML's LocalArtifactStore class or None, how it was found or why not)."""
    try:
        return _import_flowyml(), "flowyml.storage.artifacts"
    except ImportError:
        pass
    print("  (installing the peer: python -m pip install flowyml ...)", flush=True)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "flowyml"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip could not run ({exc!r})"
    if done.returncode != 0:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        return None, f"pip install flowyml failed: {tail[:300]}"
    importlib.invalidate_caches()
    try:
        return _import_flowyml(), "flowyml.storage.artifacts (installed now)"
    except ImportError as exc:
        return None, f"flowyml installed but does not import ({exc})"


def _import_flowyml() -> Any:
    try:
        module = importlib.import_module("flowyml.storage.artifacts")
    except ImportError:
        raise
    except Exception:  # noqa: BLE001 - the package's __init__ may fail on its heavy extras
        # The class needs only the standard library: load its module file alone.
        spec = importlib.util.find_spec("flowyml")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("flowyml not found") from None
        path = Path(next(iter(spec.submodule_search_locations))) / "storage" / "artifacts.py"
        file_spec = importlib.util.spec_from_file_location("_flowyml_artifacts", path)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"cannot load {path}") from None
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
    return module.LocalArtifactStore


# -- stage timing -----------------------------------------------------------------------


class Stages:
    """Wall and CPU time spent inside chosen methods of one store, summed per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def wrap(self, owner: Any, method: str, stage: str) -> None:
        """Time every call of ``owner.method`` (an instance attribute shadows it)."""
        inner: Callable[..., Any] = getattr(owner, method)

        @wraps(inner)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.thread_time(), time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
                self.cpu[stage] = self.cpu.get(stage, 0.0) + time.thread_time() - c0

        setattr(owner, method, timed_call)


Breakdown = tuple[dict[str, float], dict[str, float], float, float]  # wall, cpu per stage; totals


def save_breakdown(
    cas: Any, root: Path, fsync: bool, data: Sequence[bytes], keys: Sequence[str]
) -> Breakdown:
    """Per-save µs (wall, CPU) in each stage of ``ArtifactStore.save`` and ``commit``."""
    store = cas.open_store(root, fsync=fsync)
    store.save(b"warm-up", "bench/warm-up")  # open the catalog, make the first folders
    st = Stages()
    st.wrap(store.space, "put", "content put (ObjectSpace.put: hash, stat, compress, write)")
    st.wrap(store.refs, "read", "ref read (commit's idempotence check)")
    st.wrap(store.space, "put_value", "record put (ObjectSpace.put_value)")
    st.wrap(store.journal, "append", "journal append (one write-once file)")
    st.wrap(store.refs, "set", "ref set (lock, history entry, rename)")
    st.wrap(store.index.catalog, "put", "catalog put (one LMDB transaction)")
    st.wrap(store.index, "note_written", "catalog high-water mark (note_written)")
    c0, t0 = time.thread_time(), time.perf_counter()
    for d, k in zip(data, keys, strict=True):
        store.save(d, k)
    total, cpu = time.perf_counter() - t0, time.thread_time() - c0
    store.close()
    return _per_op(st, total, cpu, len(data))


def load_breakdown(cas: Any, root: Path, keys: Sequence[str]) -> Breakdown:
    """Per-load µs (wall, CPU) in each stage of ``ArtifactStore.load``."""
    store = cas.open_store(root, fsync=False, create=False)
    store.load(keys[0])
    st = Stages()
    st.wrap(store.refs, "read", "ref read (name -> record id)")
    st.wrap(store.index.catalog, "get", "catalog get (record by id, LMDB)")
    st.wrap(store.space, "get", "content get (read, decode, verify BLAKE3)")
    c0, t0 = time.thread_time(), time.perf_counter()
    for k in keys:
        store.load(k)
    total, cpu = time.perf_counter() - t0, time.thread_time() - c0
    store.close()
    return _per_op(st, total, cpu, len(keys))


def _per_op(st: Stages, total: float, cpu: float, n: int) -> Breakdown:
    us = 1e6 / n
    return (
        {k: v * us for k, v in st.seconds.items()},
        {k: v * us for k, v in st.cpu.items()},
        total * us,
        cpu * us,
    )


@dataclass(frozen=True)
class Sizes:
    count: int
    fsync_count: int
    breakdown: int


#: File-system calls a save makes, counted through the os module: os.open creates every
#: file cas writes (and opens folders to fsync them); reads go through builtin open().
_COUNTED = {name: f"os.{name}" for name in ("open", "link", "replace", "mkdir", "fsync")}


def files_per_save(
    cas: Any, root: Path, data: Sequence[bytes], keys: Sequence[str]
) -> dict[str, float]:
    """Mean number of file-system calls of each kind per save (fsync=True store)."""
    store = cas.open_store(root, fsync=True)
    store.save(b"warm-up", "bench/warm-up")
    counts = dict.fromkeys(_COUNTED.values(), 0)
    saved = {name: getattr(os, name) for name in _COUNTED}

    def counting(name: str) -> Callable[..., Any]:
        real = saved[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            counts[_COUNTED[name]] += 1
            return real(*args, **kwargs)

        return call

    try:
        for name in _COUNTED:
            setattr(os, name, counting(name))
        for d, k in zip(data, keys, strict=True):
            store.save(d, k)
    finally:
        for name, real in saved.items():
            setattr(os, name, real)
    store.close()
    return {k: v / len(data) for k, v in counts.items()}


# -- the run ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, return the figures (operations per second)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_artifacts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--count", type=int, default=5_000, help="artifacts (default 5,000)")
    ap.add_argument("--size", type=int, default=4096, help="bytes each (default 4096)")
    ap.add_argument(
        "--fsync-count",
        type=int,
        default=1_000,
        help="saves with fsync=True (default 1,000: each waits on the disk)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="best of this many (default 2)")
    ap.add_argument("--no-peer", action="store_true", help="skip FlowyML")
    args = ap.parse_args(argv)
    try:
        import cas
    except ImportError as exc:  # another engineer's part may be mid-way
        print(f"artifacts benchmark: skipped, 'import cas' fails ({exc})")
        return {"skipped": str(exc)}
    with workdir("cas-bench-artifacts-") as work:
        # The catalog of a remote root and the checkouts live in the cache folder:
        # keep them in the work folder, not in the user's cache.
        os.environ.setdefault("CAS_CACHE_DIR", str(work / "cache"))
        return _run(
            cas,
            work,
            args.count,
            min(args.count, args.fsync_count),
            args.size,
            max(1, args.rounds),
            not args.no_peer,
        )


def _run(cas: Any, work: Path, count: int, fsync_count: int, size: int, rounds: int,
         peer: bool) -> dict[str, Any]:  # fmt: skip
    print(f"artifacts benchmark: {count:,} saves and loads of {size:,}-byte artifacts, "
          f"{os.cpu_count()} cores, best of {rounds} rounds, work folder {work}")  # fmt: skip
    data = payloads(count, size)
    keys = names(count)
    peer_cls, peer_note = flowyml_store() if peer else (None, "skipped (--no-peer)")
    r = Rounds()

    # The store is opened before the clock starts (untimed setup): its first use opens
    # the LMDB catalog and catches up with the journal, timed on its own below.
    opened: dict[str, Any] = {}

    def open_cas(fsync: bool, new: bool) -> Callable[[], None]:
        def setup() -> None:
            root = work / f"cas-{fsync}"
            if new:
                fresh(root)
            store = cas.open_store(root, fsync=fsync, create=new)
            if new:
                store.save(b"warm-up", "bench/warm-up")
            else:
                store.load(keys[0])
            opened["store"] = store

        return setup

    def close_cas() -> None:
        opened.pop("store").close()

    def cas_saves(fsync: bool) -> Callable[[], None]:
        n = fsync_count if fsync else count

        def run() -> None:
            store = opened["store"]
            for d, k in zip(data[:n], keys[:n], strict=True):
                store.save(d, k)

        return run

    def cas_loads(fsync: bool) -> Callable[[], None]:
        n = fsync_count if fsync else count

        def run() -> None:
            store = opened["store"]
            for d, k in zip(data[:n], keys[:n], strict=True):
                if store.load(k) != d:
                    raise SystemExit(f"cas loaded wrong bytes for {k}")

        return run

    def cas_open() -> None:
        """A new process's first load: open the store, catch up with the journal."""
        opened["store"] = cas.open_store(work / "cas-False", fsync=False, create=False)
        opened["store"].load(keys[0])

    def peer_saves() -> None:
        assert peer_cls is not None
        store = peer_cls(base_path=str(work / "flowyml"))
        for d, k in zip(data, keys, strict=True):
            store.save(d, k)

    def peer_loads() -> None:
        assert peer_cls is not None
        store = peer_cls(base_path=str(work / "flowyml"))
        for d, k in zip(data, keys, strict=True):
            if store.load(k) != d:
                raise SystemExit(f"FlowyML loaded wrong bytes for {k}")

    # the floor: one atomic small-file write, the way cas writes every file
    from cas.storage import LocalStorage

    def atomic_writes(fsync: bool, n: int) -> Callable[[], None]:
        def run() -> None:
            storage = LocalStorage(fresh(work / "atomic"), fsync=fsync)
            for i in range(n):
                storage.write_atomic(f"d{i % 256:02x}/f{i:06d}", data[i % count])

        return run

    n_fsync_writes = fsync_count
    for i in range(rounds):
        r.run("write", atomic_writes(False, count))
        if i == 0:
            r.run("write fsync", atomic_writes(True, n_fsync_writes))
        r.run("cas save", cas_saves(False), setup=open_cas(False, True), teardown=close_cas)
        r.run(
            "cas load", cas_loads(False), setup=open_cas(False, False), teardown=close_cas, repeat=2
        )
        r.run("cas open", cas_open, teardown=close_cas)
        if i == 0:  # fsync=True saves take long: one round
            r.run("cas save fsync", cas_saves(True), setup=open_cas(True, True), teardown=close_cas)
            r.run(
                "cas load fsync", cas_loads(True), setup=open_cas(True, False), teardown=close_cas
            )
        if peer_cls is not None:
            r.run("peer save", peer_saves, setup=lambda: fresh(work / "flowyml"))
            r.run("peer load", peer_loads, repeat=2)
    fresh(work / "atomic")

    n_bd = min(count, BREAKDOWN_SAVES)
    breakdown = {
        fsync: save_breakdown(cas, fresh(work / f"bd-{fsync}"), fsync, data[:n_bd], keys[:n_bd])
        for fsync in (False, True)
    }
    files = files_per_save(cas, fresh(work / "files"), data[:100], keys[:100])
    load_bd = load_breakdown(cas, work / "cas-False", keys)
    fresh(work / "files")
    sizes = Sizes(count, fsync_count, n_bd)
    return _report(r, sizes, peer_note, peer_cls is not None, breakdown, files, load_bd)


def _report(r: Rounds, n: Sizes, peer_note: str, have_peer: bool, breakdown: dict[bool, Breakdown],
            files: dict[str, float], load_bd: Breakdown) -> dict[str, Any]:  # fmt: skip
    ops = {k: n.fsync_count if "fsync" in k else n.count for k in r.best}
    ops["cas open"] = 1
    per_s = {k: ops[k] / v for k, v in r.best.items()}
    cpu_us = {k: v / ops[k] * 1e6 for k, v in r.cpu.items()}
    open_ms, open_cpu_ms = r.best["cas open"] * 1e3, r.cpu["cas open"] * 1e3

    def row(
        label: str, key: str, target: int | None = None, vs_peer: str | None = None
    ) -> list[str]:
        rate = per_s[key]
        us = 1e6 / rate
        floor = "write fsync" if "fsync" in key else "write"
        writes = f"{us * per_s[floor] / 1e6:.1f}" if "save" in key or "write" in key else ""
        peer = f"{rate / per_s[vs_peer]:.2f}x" if vs_peer and vs_peer in per_s else ""
        goal = f">= {target:,}" if target else ""
        verdict = mark(rate >= target) if target else ""
        return [
            label,
            f"{rate:,.0f}",
            f"{us:,.0f}",
            f"{cpu_us[key]:,.0f}",
            writes,
            peer,
            goal,
            verdict,
        ]

    rows = [
        row("cas save, fsync=False", "cas save", TARGET_SAVES, "peer save"),
        row("cas load, fsync=False store", "cas load", TARGET_LOADS, "peer load"),
        row(f"cas save, fsync=True ({n.fsync_count:,})", "cas save fsync", None, "peer save"),
        row(f"cas load, fsync=True store ({n.fsync_count:,})", "cas load fsync", None, "peer load"),
    ]
    if have_peer:
        rows += [row("FlowyML save (pickle, no fsync)", "peer save"),
                 row("FlowyML load", "peer load")]  # fmt: skip
    rows += [row("atomic 4 KiB file write, fsync=False", "write"),
             row(f"atomic 4 KiB file write, fsync=True ({n.fsync_count:,})", "write fsync")]  # fmt: skip
    print()
    print(table(
        "  small artifacts, local folder, best of rounds",
        ["", "ops/s", "µs/op", "CPU µs/op", "writes", "vs FlowyML", "target", ""],
        rows,
        notes=[
            f"peer: {peer_note}",
            f"open + first load of a store just written ({n.count + 1:,} journal entries in the catch-up"
            f" window): {open_ms:,.0f} ms ({open_cpu_ms:,.0f} ms CPU), not in the rates above.",
            "writes = one save's time over one atomic 4 KiB file write's (same fsync setting).",
            "CPU µs/op counts every thread; the gap to µs/op is waiting (disk, or other processes).",
        ],
    ))  # fmt: skip

    def shares(bd: Breakdown, stage: str | None) -> str:
        wall, _, total, _ = bd
        part = total - sum(wall.values()) if stage is None else wall.get(stage, 0.0)
        return f"{part / total:.0%}"

    off, on = breakdown[False], breakdown[True]
    bd_rows = [
        [f"  {stage}", f"{off[0][stage]:,.0f}", f"{off[1][stage]:,.0f}", f"{on[0].get(stage, 0.0):,.0f}",
         shares(off, stage), shares(on, stage)]
        for stage in off[0]
    ]  # fmt: skip
    bd_rows.append([
        "  rest: name check, materializer, record build, Python",
        f"{off[2] - sum(off[0].values()):,.0f}", f"{off[3] - sum(off[1].values()):,.0f}",
        f"{on[2] - sum(on[0].values()):,.0f}", shares(off, None), shares(on, None),
    ])  # fmt: skip
    bd_rows.append(
        ["  = one save", f"{off[2]:,.0f}", f"{off[3]:,.0f}", f"{on[2]:,.0f}", "100%", "100%"]
    )
    print()
    print(table(
        f"  one save, stage by stage (mean of {n.breakdown} saves into a fresh store)",
        ["", "fsync=False µs", "CPU µs", "fsync=True µs", "share", "share"],
        bd_rows,
        notes=[
            "per save: " + ", ".join(f"{v:.1f} {k}" for k, v in files.items())
            + " (from Python; LMDB's own fsync is not counted)",
            "The catalog's LMDB commits with sync=True whatever the store's fsync setting.",
        ],
    ))  # fmt: skip

    wall, cpu, total, total_cpu = load_bd
    l_rows = [
        [f"  {k}", f"{v:,.1f}", f"{cpu[k]:,.1f}", f"{v / total:.0%}"] for k, v in wall.items()
    ]
    l_rows.append([
        "  rest: resolve, name check, materializer, Python",
        f"{total - sum(wall.values()):,.1f}", f"{total_cpu - sum(cpu.values()):,.1f}",
        f"{1 - sum(wall.values()) / total:.0%}",
    ])  # fmt: skip
    l_rows.append(["  = one load", f"{total:,.1f}", f"{total_cpu:,.1f}", "100%"])
    print()
    print(
        table(
            f"  one load by name, stage by stage (mean of {n.count:,})",
            ["", "µs", "CPU µs", "share"],
            l_rows,
        )
    )

    result: dict[str, Any] = {f"{k} /s": v for k, v in per_s.items() if k != "cas open"}
    result["cas open ms"] = open_ms
    result["pass"] = {
        "saves": per_s["cas save"] >= TARGET_SAVES,
        "loads": per_s["cas load"] >= TARGET_LOADS,
    }
    return result


if __name__ == "__main__":
    main()
