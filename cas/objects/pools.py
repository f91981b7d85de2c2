"""The thread pools chunk work runs on, and a window of tasks in flight on one.

Only leaf tasks run on them (hash+compress+write one chunk, read+verify one chunk);
nothing on them waits for another task on them, so they cannot deadlock.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_io_pools: dict[int, ThreadPoolExecutor] = {}


def worker_pool() -> ThreadPoolExecutor:
    """One pool for chunk work: BLAKE3 and zstd release the GIL, so threads use every core.

    Only leaf tasks run on it (hash+compress+write one chunk, read+verify one chunk);
    nothing on it waits for another task on it, so it cannot deadlock.
    """
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="cas-chunk"
            )
        return _pool


def io_pool(threads: int) -> ThreadPoolExecutor:
    """A pool for chunk work on storage where each request waits on the network (object
    stores): many requests in flight, as the CPU pool's two would leave the link idle.
    The same leaf tasks as :func:`worker_pool`, so it cannot deadlock either."""
    with _pool_lock:
        pool = _io_pools.get(threads)
        if pool is None:
            pool = _io_pools[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="cas-io"
            )
        return pool


def ahead(
    pool: ThreadPoolExecutor, window: int, task: Callable[[T], R], items: Iterable[T]
) -> Generator[R, None, None]:
    """``task`` of each item, in the items' order, run on ``pool`` at most ``window`` at
    a time: memory stays flat however many items there are. Tasks not yet started are
    cancelled when the caller stops early or one fails."""
    waiting: deque[Future[R]] = deque()
    try:
        for item in items:
            waiting.append(pool.submit(task, item))
            while len(waiting) >= window:
                yield waiting.popleft().result()
        while waiting:
            yield waiting.popleft().result()
    finally:
        for fut in waiting:
            fut.cancel()
