"""Two torture scenarios of processes racing on one store: many writers at once
(:func:`concurrency_scenario`), and gc looping beside writers (:func:`gc_scenario`)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from cas.testing.torture_checks import Target, check_saves, check_store
from cas.testing.torture_run import Outcome
from cas.testing.torture_workers import (
    b3,
    open_root,
    read_report,
    reaped,
    spawn,
    started,
    tail,
    wait_for,
)


def concurrency_scenario(
    base: Path, procs: int, saves: int, seed: int, *, target: Target | None = None
) -> Outcome:
    """``procs`` processes x ``saves`` saves at once on shared names and content."""
    out = Outcome()
    root = target or Target(str(base / "store"))
    open_root(root.url, root.options).close()  # create it once, before the race
    workers: list[subprocess.Popen[bytes]] = []
    with reaped(workers):
        _race(base, root, procs, saves, seed, workers, out)
    return _check_race(base, root, procs, out)


def _race(
    base: Path,
    root: Target,
    procs: int,
    saves: int,
    seed: int,
    workers: list[subprocess.Popen[bytes]],
    out: Outcome,
) -> None:
    start_at = time.time() + 1.0 + 0.3 * procs
    for w in range(procs):
        args = {
            "root": root.url,
            "options": root.options,
            "seed": seed * 100 + w,
            "worker": w,
            "saves": saves,
            "out": str(base / f"w{w}.jsonl"),
            "start_at": start_at,
        }
        workers.append(spawn("conc-writer", args, base / f"w{w}.err"))
    for w, proc in enumerate(workers):
        if proc.wait(timeout=3600) != 0:
            out.fail(f"writer {w} exited {proc.returncode}:\n{tail(base / f'w{w}.err')}")
    out.figures["seconds"] = round(time.time() - start_at, 1)


def _check_history(store: Any, name: str, ids: set[str], out: Outcome) -> int:
    """The history of ``name`` is a chain of exactly the ids its saves returned, and its
    newest entry is what the ref holds; returns how many entries it has."""
    log = store.refs.log(name)  # newest first
    for newer, older in zip(log, log[1:], strict=False):
        if newer.old != older.new:
            out.fail(
                f"history of {name} is not a chain: {older.new} then an update from {newer.old}"
            )
    news = {e.new for e in log}
    for lost in sorted(ids - news):
        out.fail(f"lost update: a save of {name} returned {lost}, which its history never held")
    for extra in sorted(news - ids):
        out.fail(f"history of {name} holds {extra}, which no save returned")
    if len(log) != len(ids):
        out.fail(f"{name}: {len(log)} history entries for {len(ids)} successful sets")
    if log and store.refs.read(name) != log[0].new:
        out.fail(
            f"{name} holds {store.refs.read(name)}, its newest history entry says {log[0].new}"
        )
    return len(log)


def _check_race(base: Path, root: Target, procs: int, out: Outcome) -> Outcome:
    elapsed = out.figures.pop("seconds")
    events = [e for w in range(procs) for e in read_report(base / f"w{w}.jsonl")]
    done = [e for e in events if e["ev"] == "save"]
    for e in events:
        if e["ev"] == "error":
            out.fail(f"save of {e['name']} failed: {e['error']}\n{e['tb'][-1500:]}")
    by_name: dict[str, set[str]] = {}
    for e in done:
        by_name.setdefault(e["name"], set()).add(e["id"])
    store = open_root(root.url, root.options)
    try:
        entries = sum(
            _check_history(store, name, ids, out) for name, ids in sorted(by_name.items())
        )
        check_saves(store, done, out, "after the race")
        report = store.reindex()
        if report["changed"] or report["dangling_refs"]:
            out.fail(f"reindex changed the catalog: {report}")
        for name, rid in store.refs.items():
            got = store.catalog.get(rid)
            if got is None or got.name != name:
                out.fail(f"ref {name} -> {rid} has no matching catalog record after reindex: {got}")
        check_store(store, out, "after the race")
    finally:
        store.close()
    records = len({e["id"] for e in done})
    out.figures.update(
        processes=procs, saves=len(done), errors=sum(1 for e in events if e["ev"] == "error"),
        records=records, idempotent=len(done) - records, history_entries=entries,
        distinct_content=len({e["b3"] for e in done}), seconds=elapsed,
        saves_per_s=round(len(done) / max(elapsed, 1e-9)),
    )  # fmt: skip
    return out


# -- gc beside writers ---------------------------------------------------------------------


def gc_scenario(
    base: Path,
    seconds: float,
    writers: int,
    grace: float,
    seed: int,
    *,
    target: Target | None = None,
    pool: int = 24,
    pause: float = 0.3,
) -> Outcome:
    """gc looping (``grace``, retention 0) while ``writers`` save and delete.

    Afterwards every save whose name still holds it, and every saved version not
    deleted, must load. Each loss is traced to the gc round that condemned the object:
    if that round planned after the save returned, it is a bug at any grace; if the
    save was still running, or returned while that round ran, it is counted (expected
    with grace 0, documented as unsafe beside writers) and fails the run with grace > 0.
    """
    out = Outcome()
    root = target or Target(str(base / "store"))
    open_root(root.url, root.options).close()
    procs: list[subprocess.Popen[bytes]] = []
    with reaped(procs):
        _gc_race(base, root, seconds, writers, grace, seed, pool, pause, procs, out)
    _check_gc(base, root, writers, grace, out)
    out.figures.update(seconds=seconds, writers=writers)
    return out


def _gc_race(
    base: Path,
    root: Target,
    seconds: float,
    writers: int,
    grace: float,
    seed: int,
    pool: int,
    pause: float,
    procs: list[subprocess.Popen[bytes]],
    out: Outcome,
) -> None:
    stop, gc_out = base / "stop", base / "gc.jsonl"
    gc_args = {"root": root.url, "options": root.options, "grace": grace, "stop": str(stop),
               "out": str(gc_out), "seed": seed, "pause": pause}  # fmt: skip
    procs.append(spawn("gc-loop", gc_args, base / "gc.err"))
    wait_for(started(gc_out, procs[0]), 60, "gc")
    deadline = time.time() + seconds
    for w in range(writers):
        args = {"root": root.url, "options": root.options, "seed": seed * 100 + w, "worker": w,
                "deadline": deadline, "pool": pool, "out": str(base / f"w{w}.jsonl")}  # fmt: skip
        procs.append(spawn("gc-writer", args, base / f"w{w}.err"))
    for w, proc in enumerate(procs[1:]):
        if proc.wait(timeout=seconds + 600) != 0:
            out.fail(f"writer {w} exited {proc.returncode}:\n{tail(base / f'w{w}.err')}")
    stop.touch()
    if procs[0].wait(timeout=600) != 0:
        out.fail(f"gc exited {procs[0].returncode}:\n{tail(base / 'gc.err')}")


def _check_gc(base: Path, root: Target, writers: int, grace: float, out: Outcome) -> None:
    from cas.admin import gc

    events = [e for w in range(writers) for e in read_report(base / f"w{w}.jsonl")]
    gc_events = read_report(base / "gc.jsonl")
    rounds = [e for e in gc_events if e["ev"] == "round"]
    for e in gc_events + events:
        if e["ev"] != "error":
            continue
        out.fail(f"{'gc' if 'name' not in e else 'writer'} error: {e['error']}\n{e['tb'][-1500:]}")
    saves = [e for e in events if e["ev"] == "save"]
    deleted = {e["id"] for e in events if e["ev"] == "deleting"}
    first: dict[str, dict[str, Any]] = {}  # record id -> the save that first returned it
    for e in saves:
        if e["id"] not in first or e["t1"] < first[e["id"]]["t1"]:
            first[e["id"]] = e
    lost = {"in_flight": 0, "returned_mid_round": 0, "after_return": 0}
    store = open_root(root.url, root.options)
    try:
        t0 = time.time()
        final_plan = gc.plan(store, grace=grace, retention=0)  # no writer is left
        final = gc.execute(store, final_plan)
        rounds.append({"t0": t0, "t1": time.time(), "deleted": final.deleted,
                       "condemned": [oid for oid, _ in final_plan.delete]})  # fmt: skip
        todo = {rid: f"name {name}" for name, rid in store.refs.items()}
        for rid in first:
            if rid not in deleted and rid not in todo:
                todo[rid] = "version (not deleted)"
        for rid, why in sorted(todo.items()):
            if rid not in first:
                out.fail(f"{why} -> {rid}: no writer reported saving it")
                continue
            missing = _missing(store, rid, first[rid]["b3"], why, out)
            if missing is not None:
                lost[_blame(missing, first[rid], why, rounds, grace, out)] += 1
    finally:
        store.close()
    out.figures.update(
        grace=grace, gc_rounds=len(rounds), objects_deleted=sum(r["deleted"] for r in rounds),
        saves=len(saves), deletes=len(deleted), artifacts_checked=len(todo),
        lost_in_flight=lost["in_flight"],
        lost_returned_mid_round=lost["returned_mid_round"], lost_after_return=lost["after_return"],
    )  # fmt: skip


def _missing(store: Any, rid: str, digest: str, why: str, out: Outcome) -> str | None:
    """None if ``rid`` loads the bytes saved, else the id of the object that is gone."""
    from cas.errors import CasError, IntegrityError, ObjectNotFound

    try:
        if b3(store.load(rid)) != digest:
            out.fail(f"{why} -> {rid} loads other bytes than were saved")
        return None
    except (IntegrityError, ObjectNotFound) as exc:
        return str(getattr(exc, "object_id", None) or getattr(exc, "what", ""))
    except CasError as exc:
        out.fail(f"{why} -> {rid} fails to load: {exc}")
        return None


def _blame(
    missing: str,
    save: dict[str, Any],
    why: str,
    rounds: list[dict[str, Any]],
    grace: float,
    out: Outcome,
) -> str:
    """Which gc round deleted ``missing`` and how that relates to the save; returns the
    kind of loss, failing the outcome when it is a bug."""
    story = (
        f"{why} -> record {save['id']}: object {missing} is gone; its save of {save['name']} "
        f"ran {save['t0']:.3f}-{save['t1']:.3f} (grace {grace}s)"
    )
    guilty = [r for r in rounds if missing in r["condemned"]]
    if not guilty:
        out.fail(f"LOST, and no gc round condemned it: {story}")
        return "after_return"
    before = [r for r in guilty if r["t0"] > save["t1"]]
    if before:
        out.fail(f"LOST after its save returned: {story}; gc planned at {before[0]['t0']:.3f}, "
                 "after the save returned, and condemned it")  # fmt: skip
        return "after_return"
    during = [r for r in guilty if r["t0"] <= save["t1"] <= r["t1"]]
    if during:
        if grace > 0:
            out.fail(f"LOST after its save returned: {story}; the gc round planned at "
                     f"{during[0]['t0']:.3f} condemned it and deleted it by {during[0]['t1']:.3f}, "
                     "after the save had returned")  # fmt: skip
        return "returned_mid_round"
    if grace > 0:
        out.fail(f"LOST with grace {grace}s, save in flight: {story}; condemned by the round "
                 f"planned at {guilty[-1]['t0']:.3f}")  # fmt: skip
    return "in_flight"
