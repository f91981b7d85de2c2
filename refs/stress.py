"""Adversity for RefStore tests: processes that hammer it, kill -9, lost answers.

Kept apart from ``cas.refs.testing`` so that spawned children import only refs and
fsspec. A backend's test passes a *picklable* factory (a module-level function, or
``functools.partial`` of one) that builds a ``RefStore`` on the shared root:
:func:`local_refstore`, or :func:`service_refstore` for S3, GCS and Azure Blob.

Kill points: :func:`kill_while_holding_lock` (a lock file and nothing else),
:func:`kill_between_claim_and_publish` (a history claim, before the ref is written),
:func:`kill_inside_publish` (local: a claim, and the ref's lock held mid-write) and
:func:`kill_at_random` (a process incrementing a counter, killed whenever).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .conditional import Conditional
from .errors import RefConflict
from .local import LocalConditional
from .store import RefStore

Factory = Callable[[], RefStore]


def counter_id(n: int) -> str:
    """A 64-hex id that encodes counter ``n`` (8 hex digits, then a hash)."""
    return f"{n:08x}" + hashlib.sha256(f"counter {n}".encode()).hexdigest()[8:]


def counter_of(value: str | None) -> int:
    """The counter an id from :func:`counter_id` encodes; 0 for an absent ref."""
    return 0 if value is None else int(value[:8], 16)


def local_refstore(root: str, fsync: bool = True, **options: Any) -> RefStore:
    """A RefStore on the local filesystem (picklable through ``functools.partial``)."""
    return RefStore(LocalFileSystem(), root, fsync=fsync, **options)


def service_refstore(
    protocol: str, storage_options: dict[str, Any], root: str, **options: Any
) -> RefStore:
    """A RefStore on S3 (``"s3"``), GCS (``"gs"``) or Azure Blob (``"az"``) with the
    service's conditional requests, on a filesystem of its own (picklable through
    ``functools.partial``: what a spawned process needs)."""
    from .cloud import conditional_for

    if protocol in ("gs", "gcs"):
        # The core class, whatever GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT said at import.
        from gcsfs.core import GCSFileSystem

        fs: Any = GCSFileSystem(**storage_options)
    else:
        fs = fsspec.filesystem(protocol, **storage_options)
    options.setdefault("conditional", conditional_for(fs))
    return RefStore(fs, root, **options)


def increment(store: RefStore, name: str, count: int) -> int:
    """Add 1 to counter ref ``name`` ``count`` times by compare-and-swap; return lost races."""
    lost = 0
    done = 0
    while done < count:
        current = store.read(name)
        try:
            store.set(name, counter_id(counter_of(current) + 1), expected=current)
        except RefConflict:
            lost += 1
            continue
        done += 1
    return lost


def _increment_process(
    factory: Factory, name: str, count: int, barrier: Barrier, results: Queue[int]
) -> None:
    store = factory()
    barrier.wait(60)
    results.put(increment(store, name, count))


def run_increments(factory: Factory, name: str, processes: int, count: int) -> list[int]:
    """Run ``processes`` spawned processes, each adding ``count`` to ref ``name``.

    Returns each process's number of lost races; raises if any process failed.
    """
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: Queue[int] = context.Queue()
    workers = [
        context.Process(target=_increment_process, args=(factory, name, count, barrier, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    lost = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(60)
    failed = [worker.exitcode for worker in workers if worker.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} incrementing processes failed: exit codes {failed}")
    return lost


class _StallOnPublish(Conditional):
    """Delegates to ``inner`` but, at the write of a ref file, signals and sleeps."""

    def __init__(self, inner: Conditional, refs: str, ready: Event) -> None:
        self.inner = inner
        self.refs = refs
        self.ready = ready

    def _stall(self, path: str) -> None:
        if path.startswith(self.refs):
            self.ready.set()
            time.sleep(600)

    def read(self, path: str) -> tuple[bytes, str] | None:
        return self.inner.read(path)

    def create(self, path: str, data: bytes) -> bool:
        self._stall(path)
        return self.inner.create(path, data)

    def replace(self, path: str, data: bytes, version: str) -> bool:
        self._stall(path)
        return self.inner.replace(path, data, version)

    def remove(self, path: str, version: str) -> bool:
        self._stall(path)
        return self.inner.remove(path, version)


class Faulty(Conditional):
    """Delegates to ``inner``; the first ``method`` call on a path containing ``where``
    fails with an OSError, ``after`` the write was applied (an answer lost on the way
    back) or before it (a request that never arrived)."""

    def __init__(self, inner: Conditional, method: str, where: str, *, after: bool) -> None:
        self.inner, self.method, self.where, self.after = inner, method, where, after
        self.fired = False

    def _call(self, method: str, path: str, *args: object) -> bool:
        function: Callable[..., bool] = getattr(self.inner, method)
        if self.fired or method != self.method or self.where not in path:
            return function(path, *args)
        self.fired = True
        if self.after:
            function(path, *args)
        raise TimeoutError(f"no answer for {method} {path}")

    def read(self, path: str) -> tuple[bytes, str] | None:
        return self.inner.read(path)

    def create(self, path: str, data: bytes) -> bool:
        return self._call("create", path, data)

    def replace(self, path: str, data: bytes, version: str) -> bool:
        return self._call("replace", path, data, version)

    def remove(self, path: str, version: str) -> bool:
        return self._call("remove", path, version)


class StallingLocal(LocalConditional):
    """A LocalConditional that, about to rename a ref file into place (holding its lock),
    signals ``ready`` and sleeps."""

    def __init__(self, refs: str, ready: Event, **options: Any) -> None:
        super().__init__(**options)
        self.refs = refs
        self.ready = ready

    def _write(self, path: str, data: bytes, lock: tuple[int, int] | None) -> bool:
        if path.startswith(self.refs):
            self.ready.set()
            time.sleep(600)
        return super()._write(path, data, lock)


def _publish_and_stall(root: str, name: str, new_id: str, ready: Event) -> None:
    stalling = StallingLocal(f"{root}/refs/", ready, fsync=False)
    RefStore(LocalFileSystem(), root, conditional=stalling).set(name, new_id)


def _increment_forever(factory: Factory, name: str, ready: Event) -> None:
    store = factory()
    increment(store, name, 1)
    ready.set()
    increment(store, name, 1 << 30)


def _hold_lock(path: str, ready: Event) -> None:
    with LocalConditional().locked(path):
        ready.set()
        time.sleep(600)


def _set_and_stall(factory: Factory, name: str, new_id: str, ready: Event) -> None:
    store = factory()
    stalling = _StallOnPublish(store.conditional, f"{store.root}/refs/", ready)
    RefStore(store.fs, store.root, conditional=stalling, identity=store.identity).set(name, new_id)


def killed_holding(target: Callable[..., None], *args: object) -> int:
    """Spawn ``target(*args, ready)``, wait until it is ready, SIGKILL it; return its pid."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=target, args=(*args, ready))
    process.start()
    if not ready.wait(60):
        process.kill()
        raise RuntimeError("the child process never got ready")
    process.kill()  # SIGKILL: no finally, no atexit, the lock stays
    process.join(30)
    assert process.pid is not None
    return process.pid


def kill_while_holding_lock(path: str) -> int:
    """A process takes ``<path>.lock`` and is SIGKILLed holding it; return its pid."""
    return killed_holding(_hold_lock, path)


def kill_between_claim_and_publish(factory: Factory, name: str, new_id: str) -> int:
    """A process runs ``set(name, new_id)`` and is SIGKILLed after its history entry
    is written, before the ref is; return its pid."""
    return killed_holding(_set_and_stall, factory, name, new_id)


def kill_inside_publish(root: str, name: str, new_id: str) -> int:
    """A process runs ``set(name, new_id)`` on the local folder ``root`` and is
    SIGKILLed holding the ref's lock, its new content written but not renamed into
    place: it leaves a claim and a lock. Returns its pid."""
    return killed_holding(_publish_and_stall, root, name, new_id)


def kill_at_random(factory: Factory, name: str, delay: float) -> int:
    """A process increments counter ``name`` without end (see :func:`increment`); it is
    SIGKILLed ``delay`` seconds after its first increment returned. Returns its pid."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_increment_forever, args=(factory, name, ready))
    process.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("the incrementing process never got going")
        time.sleep(delay)
    finally:
        process.kill()
        process.join(30)
    assert process.pid is not None
    if os.name == "posix":
        assert process.exitcode == -9, process.exitcode  # SIGKILL, not an error of its own
    return process.pid
