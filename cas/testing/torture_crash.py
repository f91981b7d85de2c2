"""The crash scenario: a writer SIGKILLed at a random moment, again and again, and the
store checked after each kill as the next writer would find it."""

from __future__ import annotations

import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas.errors import RefLocked
from cas.testing.torture_checks import (
    Target,
    check_objects,
    check_saves,
    check_store,
    clear_stale_lock,
)
from cas.testing.torture_run import Outcome
from cas.testing.torture_workers import (
    CRASH_NAMES,
    MiB,
    b3,
    content,
    open_root,
    read_report,
    spawn,
    started,
    tail,
    wait_for,
)


@dataclass(frozen=True, slots=True)
class _Kill:
    """One run: the writer's seed, whether it fsyncs, and when it is killed."""

    run: int
    seed: int
    fsync: bool
    delay: float  # seconds after the writer opened the store

    @classmethod
    def draw(cls, rng: random.Random, run: int, max_delay: float) -> _Kill:
        seed = rng.randrange(10**9)
        early = rng.random() < 0.1  # a tenth of the kills land in the first save
        delay = rng.uniform(0.0, 0.08) if early else rng.uniform(0.05, max_delay)
        return cls(run, seed, run % 2 == 0, delay)


@dataclass(slots=True)
class _Group:
    """A store that a group of runs shares, and what its killed writers reported."""

    root: Target
    saves: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)


def crash_scenario(
    base: Path,
    runs: int,
    seed: int,
    *,
    group: int = 10,
    target: Target | None = None,
    max_delay: float = 1.5,
) -> Outcome:
    """``runs`` writers, each SIGKILLed at a random moment (up to ``max_delay`` seconds
    after it opened the store; a tenth of them in its first save); checks after each.
    Every ``group`` runs share a store, so later writers meet earlier wreckage."""
    rng = random.Random(seed)
    out = Outcome()
    out.figures.update(
        runs=0, saves=0, tags=0, multi_chunk=0, stale_locks=0, temp_files_seen=0, verifications=0
    )
    kinds: dict[str, int] = {}  # stale locks the next writer met, by kind
    shared = _Group(_fresh_root(base, target, 0))
    started_at = time.monotonic()
    for run in range(runs):
        if run % group == 0 and run:
            shared = _next_group(base, target, run // group, shared, out)
        kill = _Kill.draw(rng, run, max_delay)
        where = (
            f"crash run {run} (seed {seed}, run seed {kill.seed}, fsync={kill.fsync}, "
            f"kill after {kill.delay:.3f}s, store {shared.root.url})"
        )
        events = _run_and_kill(base, shared.root, kill, out, where)
        if events is None:
            break
        _tally(events, shared, out)
        _after_crash(shared.root, kill.fsync, shared.saves, shared.tags, out, where, kinds)
        if out.failures:
            out.fail(f"{where}: the writer's report is {_report_path(base, run)}")
            break
    out.figures["stale_locks"] = sum(kinds.values())
    out.figures["stale_lock_kinds"] = kinds
    out.figures["seconds"] = round(time.monotonic() - started_at, 1)
    return out


def _fresh_root(base: Path, target: Target | None, group: int) -> Target:
    if target is None:
        return Target(str(base / f"store-{group}"))
    return Target(f"{target.url}/crash-{group}", target.options, target.env, local=False)


def _next_group(
    base: Path, target: Target | None, group: int, done: _Group, out: Outcome
) -> _Group:
    """A fresh store for the next group of runs; a local store that held is removed (one
    that failed is kept, for the failure to name)."""
    if done.root.local and not out.failures:
        shutil.rmtree(done.root.url, ignore_errors=True)
    return _Group(_fresh_root(base, target, group))


def _report_path(base: Path, run: int) -> Path:
    return base / f"run-{run}.jsonl"


def _run_and_kill(
    base: Path, root: Target, kill: _Kill, out: Outcome, where: str
) -> list[dict[str, Any]] | None:
    """Start a writer, SIGKILL it ``kill.delay`` seconds after its first report line, and
    return its report; None (and a failure) if it stopped by itself."""
    report, errors = _report_path(base, kill.run), base / f"run-{kill.run}.err"
    args = {
        "root": root.url,
        "options": root.options,
        "seed": kill.seed,
        "fsync": kill.fsync,
        "out": str(report),
    }
    proc = spawn("crash-writer", args, errors)
    try:
        wait_for(started(report, proc), 60, "the writer")
    finally:
        if proc.poll() is None:
            time.sleep(kill.delay)
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
    if rc != -signal.SIGKILL:
        out.fail(f"{where}: the writer stopped by itself (exit {rc}):\n{tail(errors)}")
        return None
    return read_report(report)


def _tally(events: list[dict[str, Any]], shared: _Group, out: Outcome) -> None:
    """Keep what a killed writer reported, for the checks of this and later runs."""
    new = [e for e in events if e["ev"] == "save"]
    tags = [e for e in events if e["ev"] == "tag"]
    shared.saves += new
    shared.tags += tags
    out.figures["runs"] += 1
    out.figures["saves"] += len(new)
    out.figures["tags"] += len(tags)
    out.figures["multi_chunk"] += sum(1 for e in new if e["size"] > 4 * MiB)


def _after_crash(
    root: Target,
    fsync: bool,
    saves: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    out: Outcome,
    where: str,
    kinds: dict[str, int],
) -> None:
    """Check the store a writer died in, then save each name once more as the next
    writer would."""
    store = open_root(root.url, root.options, fsync=fsync)
    try:
        _check_wreckage(store, saves, tags, out, where)
        _next_writer(store, root, saves, out, where, kinds)
    finally:
        store.close()


def _check_wreckage(
    store: Any, saves: list[dict[str, Any]], tags: list[dict[str, Any]], out: Outcome, where: str
) -> None:
    """Every object is whole, every reported save and tag holds, fsck is clean."""
    _, temp, problems = check_objects(store)
    out.figures["temp_files_seen"] += temp
    for problem in problems:
        out.fail(f"{where}: {problem}")
    out.figures["verifications"] += check_saves(store, saves, out, where)
    for ev in tags:
        got = store.get_metadata(ev["id"])["tags"].get(ev["key"])
        if got != ev["value"]:
            out.fail(
                f"{where}: tag {ev['key']}={ev['value']} on {ev['id']} returned but reads {got!r}"
            )
    check_store(store, out, where, killed=True)


def _next_writer(
    store: Any,
    root: Target,
    saves: list[dict[str, Any]],
    out: Outcome,
    where: str,
    kinds: dict[str, int],
) -> None:
    """Save each name once more. The writer that held a ref's lock is dead, so a
    RefLocked here must name the lock and the command that clears it."""
    store.refs.lock_timeout = 0.5
    if hasattr(store.refs.conditional, "timeout"):
        store.refs.conditional.timeout = 0.5
    for name in CRASH_NAMES:
        data = content(f"probe-{where}-{name}", 64)
        for _attempt in range(3):
            try:
                rid = store.save(data, name)
            except RefLocked as exc:
                kind = clear_stale_lock(str(exc), root, out, where)
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
            saves.append({"ev": "save", "name": name, "id": rid, "b3": b3(data)})
            break
        else:
            out.fail(f"{where}: the next writer could not save {name} even after clearing locks")
