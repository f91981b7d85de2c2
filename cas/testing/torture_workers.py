"""The torture suite's worker processes: what each does until it is killed or done, the
deterministic content they save, their reports, and how a driver starts and reaps them.

A driver starts a worker as a real process (``python -m cas.testing.torture_workers
ROLE ARGS-JSON``), because pytest's importlib mode hides test modules from children.
Every worker reports what it did, one JSON line per finished step, written with a single
``write(2)`` *before* it moves on, so a line in the report is a promise that the step
returned::

    {"ev": "save", "name": ..., "id": ..., "b3": ..., "t0": ..., "t1": ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3

MiB = 1 << 20


def content(tag: str, size: int) -> bytes:
    """Deterministic bytes of ``size`` for ``tag``: random-looking or, for tags ending
    in ``~z``, compressible. The same tag and size are the same bytes in every process."""
    if tag.endswith("~z"):
        unit = (tag.encode() + b" lorem ipsum dolor sit amet\n") * 8
        return (unit * (size // len(unit) + 1))[:size]
    return blake3.blake3(tag.encode()).digest(length=size)


def b3(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class Report:
    """A worker's report file: one JSON line per step, written before moving on."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(self, **event: Any) -> None:
        os.write(self.fd, (json.dumps(event, separators=(",", ":")) + "\n").encode())


def read_report(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a report (a killed writer's last line may be cut)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in raw.split(b"\n")[:-1] if line]


def open_root(root: str, options: dict[str, Any], *, fsync: bool = True) -> Any:
    from cas.api.artifact_store import open_store

    return open_store(root, fsync=fsync, **options)


def spawn(
    role: str, args: dict[str, Any], stderr: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a worker process running ``role`` (a key of :data:`ROLES`); its stderr goes to
    the file ``stderr``."""
    with stderr.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "cas.testing.torture_workers", role, json.dumps(args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            env={**os.environ, **(env or {})},
        )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def started(report: Path, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """A predicate: true once a worker wrote its first report line, or died."""
    return lambda: (report.exists() and report.stat().st_size > 0) or proc.poll() is not None


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    """Kill whatever of ``procs`` still runs when the block ends (a failed scenario)."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


# -- workers ----------------------------------------------------------------------------

CRASH_NAMES = ("crash/a", "crash/b", "models/fraud", "runs/p/r1/train/model", "data/x")


def crash_writer(a: dict[str, Any]) -> None:
    """Save forever (until SIGKILL): small and multi-chunk, new and duplicate content,
    moves of the same names, tags, parents. Reports every step that returned."""
    rng = random.Random(a["seed"])
    store = open_root(a["root"], a["options"], fsync=a["fsync"])
    out = Report(a["out"])
    out.emit(ev="ready", pid=os.getpid())
    recent: list[str] = []
    mine: list[tuple[str, int]] = []
    n = 0
    while True:
        n += 1
        r = rng.random()
        if r < 0.012:  # new multi-chunk content (> the 4 MiB chunking threshold)
            spec = (f"{a['seed']}-big-{n}", rng.randint(5 * MiB, 12 * MiB))
            data = content(*spec)
        elif r < 0.024:  # shared multi-chunk content (present from an earlier run), or an edit
            k = rng.randrange(3)
            data = content(f"big-shared-{k}", (5 + 3 * k) * MiB)
            if rng.random() < 0.5:
                at = rng.randrange(len(data) - 4096)
                data = data[:at] + content(f"edit-{a['seed']}-{n}", 4096) + data[at + 4096 :]
        elif r < 0.05:  # a batch: its saves become durable together, in one pack
            t0 = time.time()
            specs = [(f"{a['seed']}-batch-{n}-{k}", rng.randrange(3000)) for k in range(20)]
            names = [rng.choice(CRASH_NAMES) for _ in specs]
            with store.batch():
                rids = [store.save(content(*s), nm) for s, nm in zip(specs, names, strict=True)]
            t1 = time.time()
            for s, nm, rid in zip(specs, names, rids, strict=True):
                data = content(*s)
                out.emit(ev="save", name=nm, id=rid, b3=b3(data), size=len(data), t0=t0, t1=t1)
                mine.append(s)
            recent = [*recent[-19:], *rids[-3:]]
            continue
        elif r < 0.14 and recent:
            rid = rng.choice(recent)
            key, value = f"t{n}", str(rng.randrange(1000))
            store.catalog.tag(rid, **{key: value})
            out.emit(ev="tag", id=rid, key=key, value=value)
            continue
        elif r < 0.34:  # shared small content: dedup across runs and processes
            k = rng.randrange(12)
            data = content(f"shared-{k}" + ("~z" if k % 2 else ""), 100 + 7919 * k)
        elif r < 0.44 and mine:
            data = content(*rng.choice(mine))  # a duplicate of this run's own content
        else:
            spec = (
                f"{a['seed']}-{n}" + rng.choice(("", "~z")),
                rng.choice((0, 1, 700, 70_000, rng.randrange(300_000))),
            )
            mine.append(spec)
            data = content(*spec)
        name = rng.choice(CRASH_NAMES)
        parents = [rng.choice(recent)] if recent and rng.random() < 0.2 else []
        metadata = {"n": n} if rng.random() < 0.5 else None
        t0 = time.time()
        rid = store.save(data, name, metadata=metadata, parent_ids=parents)
        out.emit(ev="save", name=name, id=rid, b3=b3(data), size=len(data), t0=t0, t1=time.time())
        recent = [*recent[-19:], rid]


SHARED_NAMES = tuple(f"shared/{k}" for k in range(6))


def _mixed_content(rng: random.Random, who: str, i: int) -> bytes:
    r = rng.random()
    if r < 0.45:  # identical in every process
        k = rng.randrange(10)
        return content(f"shared-{k}" + ("~z" if k % 2 else ""), 300 + 977 * k)
    if r < 0.47:
        k = rng.randrange(2)
        return content(f"big-shared-{k}", (5 + k) * MiB)
    return content(f"{who}-{i}" + rng.choice(("", "~z")), rng.randrange(60_000))


def conc_writer(a: dict[str, Any]) -> None:
    """``saves`` saves on shared and own names, shared and own content; reports each
    save and each error, never stops at one."""
    rng = random.Random(a["seed"])
    store = open_root(a["root"], a["options"])
    out = Report(a["out"])
    who = f"w{a['worker']}"
    wait_for(lambda: time.time() >= a["start_at"], 60, "the start time")
    for i in range(a["saves"]):
        name = rng.choice(SHARED_NAMES) if rng.random() < 0.7 else f"own/{who}/{rng.randrange(3)}"
        data = _mixed_content(rng, who, i)
        metadata = None if rng.random() < 0.6 else {"w": who, "i": i}
        t0 = time.time()
        try:
            rid = store.save(data, name, metadata=metadata)
        except Exception as exc:  # noqa: BLE001 - every error is a finding: report it
            out.emit(ev="error", name=name, error=repr(exc), tb=traceback.format_exc())
            continue
        out.emit(ev="save", name=name, id=rid, b3=b3(data), t0=t0, t1=time.time())


GC_NAMES = tuple(f"gc/{k}" for k in range(8))


def gc_writer(a: dict[str, Any]) -> None:
    """Save and delete on shared names until the deadline: the current version of a
    name, or an older version by id (so content becomes unreachable), and save again
    what was deleted a moment ago (``cas rm``, then ``cas put`` of the same file)."""
    from cas.errors import ObjectNotFound

    rng = random.Random(a["seed"])
    store = open_root(a["root"], a["options"])
    out = Report(a["out"])
    who = f"w{a['worker']}"
    saved: list[tuple[str, tuple[str, int]]] = []  # (id, content spec) of live saves
    gone: list[tuple[float, tuple[str, int]]] = []  # (when, content spec) of deleted ones
    i = 0
    while time.time() < a["deadline"]:
        i += 1
        name = rng.choice(GC_NAMES)
        t0 = time.time()
        r = rng.random()
        try:
            if r < 0.35:
                if r < 0.2:
                    try:
                        rid = str(store.resolve(name)[0])
                    except ObjectNotFound:
                        continue
                elif saved:
                    rid = saved[rng.randrange(len(saved))][0]
                else:
                    continue
                out.emit(ev="deleting", name=name, id=rid, t0=t0)  # before: it may half-happen
                with contextlib.suppress(ObjectNotFound):
                    store.delete(rid)
                for spec in [s for x, s in saved if x == rid]:
                    gone.append((time.time(), spec))
                saved = [(x, s) for x, s in saved if x != rid]
                gone = gone[-50:]
                continue
            # An undo: put back what was deleted a moment ago, long enough for a gc round
            # to have planned since (the moment a plan has condemned it and not yet run).
            undo = [k for k, (when, _) in enumerate(gone) if 0.1 < t0 - when < 1.5]
            if r < 0.5 and undo:
                spec = gone.pop(rng.choice(undo))[1]
            elif r < 0.75:
                k = rng.randrange(a["pool"])
                spec = (f"pool-{k}" + ("~z" if k % 2 else ""), 200 + 1531 * k)
            elif r < 0.77:
                spec = (f"big-shared-{rng.randrange(2)}", 5 * MiB)
            else:
                spec = (f"{who}-{a['seed']}-{i}", rng.randrange(30_000))
            if r > 0.97:  # a batch of the pool's content: a pack, which gc then rewrites
                specs = [
                    spec,
                    *((f"{who}-{a['seed']}-{i}-{k}", rng.randrange(2000)) for k in range(19)),
                ]
                names = [name, *(rng.choice(GC_NAMES) for _ in specs[1:])]
                with store.batch():
                    rids = [store.save(content(*s), n) for s, n in zip(specs, names, strict=True)]
                t1 = time.time()
                for s, n, rid in zip(specs, names, rids, strict=True):
                    out.emit(ev="save", name=n, id=rid, b3=b3(content(*s)), t0=t0, t1=t1)
                    saved = [*saved[-199:], (rid, s)]
                continue
            data = content(*spec)
            rid = store.save(data, name)
            out.emit(ev="save", name=name, id=rid, b3=b3(data), t0=t0, t1=time.time())
            saved = [*saved[-199:], (rid, spec)]
        except Exception as exc:  # noqa: BLE001 - every error is a finding: report it
            out.emit(ev="error", name=name, error=repr(exc), tb=traceback.format_exc())


def gc_loop(a: dict[str, Any]) -> None:
    """gc (plan, then execute) in a loop until the stop file appears; reports each round
    with its timing and the ids its plan condemned."""
    from cas.admin import gc

    store = open_root(a["root"], a["options"])
    out = Report(a["out"])
    rng = random.Random(a["seed"])
    out.emit(ev="ready")
    while not os.path.exists(a["stop"]):
        t0 = time.time()
        try:
            plan = gc.plan(store, grace=a["grace"], retention=0)
            # Planning a big store takes seconds; a pause stands in for it, so writers
            # do meet the gap between a plan and its execution.
            time.sleep(rng.uniform(0, a["pause"]))
            result = gc.execute(store, plan)
        except Exception as exc:  # noqa: BLE001 - a refused or failed round is a finding
            out.emit(ev="error", error=repr(exc), tb=traceback.format_exc(), t0=t0)
            continue
        out.emit(
            ev="round", t0=t0, t1=time.time(), objects=plan.objects, deleted=result.deleted,
            spared=result.spared,
            condemned=[oid for oid, _ in plan.delete] + [oid for oid, _ in plan.pack_garbage],
        )  # fmt: skip


ROLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "crash-writer": crash_writer,
    "conc-writer": conc_writer,
    "gc-writer": gc_writer,
    "gc-loop": gc_loop,
}


def main(argv: list[str]) -> int:
    ROLES[argv[1]](json.loads(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
