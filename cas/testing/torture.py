"""The reliability ("torture") suite's workers and scenario drivers.

``tests/test_torture.py`` calls the drivers; the drivers start workers as real
processes (``python -m cas.testing.torture ROLE ARGS-JSON``), because pytest's
importlib mode hides test modules from children. Every worker reports what it did,
one JSON line per finished step, written with a single ``write(2)`` *before* it moves
on, so a line in the report is a promise that the step returned::

    {"ev": "save", "name": ..., "id": ..., "b3": ..., "t0": ..., "t1": ...}

Scenarios (``docs/reliability.md`` says what each proves):

- :func:`crash_scenario`: a writer SIGKILLed at a random moment, N times.
- :func:`concurrency_scenario`: P processes x S saves on shared names and content.
- :func:`gc_scenario`: gc looping beside writers that save and delete.

Drivers never assert: they return an :class:`Outcome` whose ``failures`` say what
broke and how to reproduce it (seed, run, the kept store), and whose ``figures`` the
tests print. ``CAS_TORTURE=full`` picks the long :data:`PROFILES` entry,
``CAS_TORTURE_SEED`` fixes the seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

# -- profiles and seeds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    crash_runs: int
    conc_procs: int
    conc_saves: int
    gc_seconds: float
    gc_writers: int
    s3_crash_runs: int
    s3_conc_procs: int
    s3_conc_saves: int
    s3_gc_seconds: float
    fuzz_examples: int
    crash_group: int = 10  # runs sharing one store before a fresh one (bounds disk and fsck time)


PROFILES = {
    "short": Profile("short", 16, 4, 60, 10.0, 2, 3, 3, 15, 6.0, 60),
    "full": Profile("full", 200, 8, 500, 60.0, 3, 20, 4, 60, 20.0, 600),
}


def profile() -> Profile:
    name = os.environ.get("CAS_TORTURE", "short") or "short"
    if name not in PROFILES:
        raise ValueError(f"CAS_TORTURE={name!r}: use one of {sorted(PROFILES)}")
    return PROFILES[name]


def session_seed() -> int:
    """``CAS_TORTURE_SEED`` or a fresh random seed (printed with every failure)."""
    text = os.environ.get("CAS_TORTURE_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 10**9)


def repro(test: str, seed: int) -> str:
    mode = os.environ.get("CAS_TORTURE", "short") or "short"
    return (
        f"reproduce: CAS_TORTURE={mode} CAS_TORTURE_SEED={seed} "
        f".venv/bin/python -m pytest -q tests/test_torture.py -k {test}"
    )


@dataclass(slots=True)
class Outcome:
    """What a scenario saw: figures to print, failures (empty when all held)."""

    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 40:
            self.failures.append(text)


# -- content, reports, processes --------------------------------------------------------

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
    """Start a worker process running :func:`main` with ``role``; its stderr goes to
    the file ``stderr``."""
    with stderr.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "cas.testing.torture", role, json.dumps(args)],
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


def _started(report: Path, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    """True once a worker wrote its first report line, or died."""
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


def _tail(path: Path, n: int = 1500) -> str:
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
            spared=result.spared, condemned=[oid for oid, _ in plan.delete],
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


# -- checks shared by the scenarios -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a scenario's store lives: a folder or an object-store URL."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what a shell command needs (S3)
    local: bool = True


def object_files(store: Any) -> Iterator[tuple[str, str]]:
    """(relative path, file name) of every file under objects/, dot-files included."""
    for rel, _ in store.storage.walk("objects"):
        yield rel, rel.rsplit("/", 1)[-1]


def check_objects(store: Any) -> tuple[int, int, list[str]]:
    """Read every object under its final name: (objects, temp files, problems). A chunk
    list is read whole, so a list whose chunks are not all there is a problem."""
    from cas.errors import CasError
    from cas.objects.ids import is_id

    objects = temp = 0
    problems: list[str] = []
    for rel, base in object_files(store):
        if base.startswith("."):
            temp += 1
            continue
        parts = rel.split("/")
        if len(parts) != 3 or not is_id(parts[1] + parts[2]):
            problems.append(f"a file that is not an object under objects/: {rel}")
            continue
        objects += 1
        oid = parts[1] + parts[2]
        try:
            kind, _ = store.space.read_object(oid)
            if kind == "chunks":
                store.space.get(oid)
        except CasError as exc:
            problems.append(f"object {oid} is visible but not whole: {exc}")
    return objects, temp, problems


def check_store(store: Any, out: Outcome, where: str, *, killed: bool = False) -> None:
    """fsck clean, every name loads, every journal entry reads. After a kill, fsck may
    report the update the dead writer claimed and never published (what the next writer
    is then told to clear): only with its dead owner and the command that clears it."""
    from cas.admin import fsck
    from cas.errors import CasError

    report = fsck.check(store)
    for problem in report.problems:
        if (
            killed
            and problem.kind == "unpublished-update"
            and "no longer running" in problem.detail
            and "roll the update back with: " in problem.detail
        ):
            out.figures["unpublished_reported_by_fsck"] = (
                out.figures.get("unpublished_reported_by_fsck", 0) + 1
            )
            continue
        out.fail(f"{where}: fsck: {problem.describe()}")
    for name, rid in store.refs.items():
        try:
            store.load(rid)
        except CasError as exc:
            out.fail(f"{where}: name {name} -> {rid} does not load: {exc}")
    try:
        for _ in store.journal.read(store.journal.stamps()):
            pass
    except CasError as exc:
        out.fail(f"{where}: the catalog journal does not read: {exc}")


def check_saves(store: Any, saves: list[dict[str, Any]], out: Outcome, where: str) -> int:
    """Every reported save loads by id, verified, and is in its name's history."""
    from cas.errors import CasError

    histories: dict[str, set[str | None]] = {}
    checked = 0
    for ev in saves:
        rid = ev["id"]
        try:
            value = store.load(rid)
            meta = store.get_metadata(rid)
        except CasError as exc:
            out.fail(f"{where}: reported save {ev['name']} -> {rid} does not load: {exc}")
            continue
        if b3(value) != ev["b3"] or meta["content_id"] != ev["b3"]:
            out.fail(f"{where}: save {ev['name']} -> {rid} loads other bytes than were saved")
        if ev["name"] not in histories:
            histories[ev["name"]] = {e.new for e in store.refs.log(ev["name"])}
        if rid not in histories[ev["name"]]:
            out.fail(
                f"{where}: save {ev['name']} -> {rid} returned but is not in the name's history"
            )
        checked += 1
    return checked


def clear_stale_lock(message: str, target: Target, out: Outcome, where: str) -> str:
    """Run the command a RefLocked message gives; return what kind of lock it was."""
    marker = "clear it with: "
    if marker not in message:
        out.fail(f"{where}: a stale-lock error does not say how to clear it: {message}")
        return "unclear"
    command = message.split(marker, 1)[1].strip()
    if target.local:
        argv = shlex.split(command)
        if argv[:1] != ["rm"] or len(argv) != 2 or not argv[1].startswith(target.url + "/"):
            out.fail(f"{where}: the command to clear a lock is not 'rm <a file of the store>': {command}")  # fmt: skip
            return "unclear"
        if argv[1] not in message.split(marker, 1)[0]:
            out.fail(f"{where}: the error does not name the file its command removes: {message}")
    # As a user would run it: in a shell whose `python` is the one cas is installed in,
    # with the credentials and endpoint of the store's service in the environment.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, **target.env, "PATH": path}
    done = subprocess.run(command, shell=True, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        out.fail(f"{where}: the command the error gave failed ({done.returncode}): {command}\n{done.stderr[-800:]}")  # fmt: skip
    kind = "lock file" if ".lock" in command else "unpublished update"
    if "no longer running" in message:
        return kind
    # A writer killed between creating its lock file (O_EXCL) and writing its pid into
    # it leaves an empty lock: the error still names it and the command, but cannot
    # say that its owner is dead.
    return f"{kind}, owner unknown"


# -- 1. crash ---------------------------------------------------------------------------


def _fresh_root(base: Path, target: Target | None, group: int) -> Target:
    if target is None:
        return Target(str(base / f"store-{group}"))
    return Target(f"{target.url}/crash-{group}", target.options, target.env, local=False)


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
    after it opened the store; a tenth of them in its first save); checks after each."""
    rng = random.Random(seed)
    out = Outcome()
    figures = out.figures
    figures.update(
        runs=0, saves=0, tags=0, multi_chunk=0, stale_locks=0, temp_files_seen=0, verifications=0
    )
    kinds: dict[str, int] = {}
    saves: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    root = _fresh_root(base, target, 0)
    started = time.monotonic()
    for run in range(runs):
        if run % group == 0 and run:
            if root.local and not out.failures:
                shutil.rmtree(root.url, ignore_errors=True)
            root, saves, tags = _fresh_root(base, target, run // group), [], []
        fsync = run % 2 == 0
        run_seed = rng.randrange(10**9)
        delay = rng.uniform(0.0, 0.08) if rng.random() < 0.1 else rng.uniform(0.05, max_delay)
        where = f"crash run {run} (seed {seed}, run seed {run_seed}, fsync={fsync}, kill after {delay:.3f}s, store {root.url})"
        report = base / f"run-{run}.jsonl"
        proc = spawn(
            "crash-writer",
            {
                "root": root.url,
                "options": root.options,
                "seed": run_seed,
                "fsync": fsync,
                "out": str(report),
            },
            base / f"run-{run}.err",
        )
        try:
            wait_for(_started(report, proc), 60, "the writer")
        finally:
            if proc.poll() is None:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait()
        if rc != -signal.SIGKILL:
            out.fail(
                f"{where}: the writer stopped by itself (exit {rc}):\n{_tail(base / f'run-{run}.err')}"
            )
            break
        events = read_report(report)
        new = [e for e in events if e["ev"] == "save"]
        saves += new
        tags += [e for e in events if e["ev"] == "tag"]
        figures["runs"] += 1
        figures["saves"] += len(new)
        figures["tags"] += sum(1 for e in events if e["ev"] == "tag")
        figures["multi_chunk"] += sum(1 for e in new if e["size"] > 4 * MiB)
        _after_crash(root, fsync, saves, tags, out, where, kinds)
        if out.failures:
            out.fail(f"{where}: the writer's report is {report}")
            break
    figures["stale_locks"] = sum(kinds.values())
    figures["stale_lock_kinds"] = kinds
    figures["seconds"] = round(time.monotonic() - started, 1)
    return out


def _after_crash(
    root: Target,
    fsync: bool,
    saves: list[dict[str, Any]],
    tags: list[dict[str, Any]],
    out: Outcome,
    where: str,
    kinds: dict[str, int],
) -> None:
    from cas.errors import RefLocked

    store = open_root(root.url, root.options, fsync=fsync)
    try:
        objects, temp, problems = check_objects(store)
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
        # The next writer: each name once more. The writer that held a ref's lock is
        # dead, so a RefLocked here must name the lock and the command that clears it.
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
                out.fail(
                    f"{where}: the next writer could not save {name} even after clearing locks"
                )
    finally:
        store.close()


# -- 2. concurrency ---------------------------------------------------------------------


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
            out.fail(f"writer {w} exited {proc.returncode}:\n{_tail(base / f'w{w}.err')}")
    out.figures["seconds"] = round(time.time() - start_at, 1)


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
        entries = 0
        for name, ids in sorted(by_name.items()):
            log = store.refs.log(name)  # newest first
            entries += len(log)
            for newer, older in zip(log, log[1:], strict=False):
                if newer.old != older.new:
                    out.fail(
                        f"history of {name} is not a chain: {older.new} then an update from {newer.old}"
                    )
            news = {e.new for e in log}
            for lost in sorted(ids - news):
                out.fail(
                    f"lost update: a save of {name} returned {lost}, which its history never held"
                )
            for extra in sorted(news - ids):
                out.fail(f"history of {name} holds {extra}, which no save returned")
            if len(log) != len(ids):
                out.fail(f"{name}: {len(log)} history entries for {len(ids)} successful sets")
            if log and store.refs.read(name) != log[0].new:
                out.fail(
                    f"{name} holds {store.refs.read(name)}, its newest history entry says {log[0].new}"
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


# -- 3. gc beside writers ---------------------------------------------------------------


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
    wait_for(_started(gc_out, procs[0]), 60, "gc")
    deadline = time.time() + seconds
    for w in range(writers):
        args = {"root": root.url, "options": root.options, "seed": seed * 100 + w, "worker": w,
                "deadline": deadline, "pool": pool, "out": str(base / f"w{w}.jsonl")}  # fmt: skip
        procs.append(spawn("gc-writer", args, base / f"w{w}.err"))
    for w, proc in enumerate(procs[1:]):
        if proc.wait(timeout=seconds + 600) != 0:
            out.fail(f"writer {w} exited {proc.returncode}:\n{_tail(base / f'w{w}.err')}")
    stop.touch()
    if procs[0].wait(timeout=600) != 0:
        out.fail(f"gc exited {procs[0].returncode}:\n{_tail(base / 'gc.err')}")


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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
