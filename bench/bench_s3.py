"""S3 benchmark: cas on moto's S3 server beside s3fs moving the same bytes, in one run.

Run: ``python -m bench.bench_s3 [--large-mib 200] [--small 2000] [--threads 16]``
(or ``python -m bench s3``). It starts moto itself (``cas.testing.servers.s3()``).

Large data: 200 MiB of random bytes (incompressible: cas gains nothing from zstd),
also written as 50 files of 4 MiB. The target (>= 0.8x) compares cas storing the
200 MiB as one artifact (``store.save(path)`` cuts it into chunk objects of at most
4 MiB and writes them on the I/O pool, 16 requests in flight; ``store.load(name,
dest=...)`` reads them ahead the same way) with s3fs ``put_file`` / ``get_file`` of
the same bytes in 4 MiB objects, one at a time. Also shown: s3fs moving the 200 MiB
as one object (multipart, 50 MiB parts), s3fs moving cas's own chunk objects from 16
threads (the most this server gives that layout), and cas saving the 50 files as 50
artifacts in a loop (each also writes a record, a journal entry and a ref with its
history: the small requests per save are counted).

Small artifacts: ``--small`` artifacts of 2 KiB each, saved and loaded by name with
``store.save`` / ``store.load`` from a pool of ``--threads`` threads, beside a
one-at-a-time loop (timed on ``--sample`` of them, to keep the run short: rates
compare). Target: the pool >= 3x the loop. ``--latency-ms`` adds a delay to every
request (aiobotocore's send), as a network to a real region would: moto on this
machine answers in a few milliseconds, so without it the server's own CPU, not the
round trips, bounds what any parallelism can gain (s3fs alone is measured too).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import MIB, Rounds, fmt_rate, mark, table, workdir

TARGET_LARGE = 0.8  # x s3fs put_file / get_file
TARGET_SMALL = 3.0  # x a one-at-a-time loop
SMALL_SIZE = 2048


@contextlib.contextmanager
def added_latency(seconds: float) -> Iterator[None]:
    """Every request aiobotocore sends waits ``seconds`` first (a simulated round trip)."""
    if seconds <= 0:
        yield
        return
    from aiobotocore.endpoint import AioEndpoint

    real = AioEndpoint._send

    async def slow(self: Any, request: Any) -> Any:
        await asyncio.sleep(seconds)
        return await real(self, request)

    AioEndpoint._send = slow  # type: ignore[method-assign]
    try:
        yield
    finally:
        AioEndpoint._send = real  # type: ignore[method-assign]


@contextlib.contextmanager
def counted_requests(counts: collections.Counter[str]) -> Iterator[None]:
    """Count the S3 operations sent (by name) while the block runs."""
    from aiobotocore.client import AioBaseClient

    real = AioBaseClient._make_api_call

    async def counting(self: Any, operation_name: str, api_params: Any) -> Any:
        counts[operation_name] += 1
        return await real(self, operation_name, api_params)

    AioBaseClient._make_api_call = counting  # type: ignore[method-assign]
    try:
        yield
    finally:
        AioBaseClient._make_api_call = real  # type: ignore[method-assign]


def _pool_map(threads: int, fn: Callable[[int], object], n: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, range(n)):
            pass


def _in_threads(threads: int, fn: Callable[..., object], calls: list[tuple[Any, ...]]) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda call: fn(*call), calls):
            pass


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_s3", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--large-mib", type=int, default=200, help="large data, MiB (default 200)")
    ap.add_argument("--object-mib", type=int, default=4, help="size of each large file (4)")
    ap.add_argument("--small", type=int, default=2000, help="small artifacts (default 2000)")
    ap.add_argument("--sample", type=int, default=200, help="of them timed one at a time (200)")
    ap.add_argument("--threads", type=int, default=16, help="pool for small artifacts (16)")
    ap.add_argument("--latency-ms", type=float, default=20.0,
                    help="simulated round trip for the second small-artifact table (20; 0: skip)")
    ap.add_argument("--latency-small", type=int, default=400, help="artifacts in it (400)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)

    from cas.testing import servers

    os.environ.setdefault("AWS_DEFAULT_REGION", servers.AWS_REGION)
    with workdir("cas-bench-s3-") as work, servers.s3() as srv:
        os.environ["CAS_CACHE_DIR"] = str(work / "cache")
        marks = _large(srv, work, args)
        marks.update(_small(srv, args, args.small, args.sample, 0.0, ""))
        if args.latency_ms > 0:
            count = min(args.latency_small, args.small)
            sample = max(1, min(args.sample, count) // 5)
            marks.update(_small(srv, args, count, sample, args.latency_ms, " +rtt"))
    return {"pass": marks}


# -- large data -------------------------------------------------------------------------


def _large(srv: Any, work: Path, args: argparse.Namespace) -> dict[str, bool]:
    import cas
    from cas.objects.kinds import ChunkList
    from cas.objects.space import object_path

    n = max(1, args.large_mib // args.object_mib)
    size = args.object_mib * MIB
    rng = np.random.default_rng(20261123)
    files = []
    for i in range(n):
        path = work / f"part-{i:03d}"
        path.write_bytes(rng.bytes(size))
        files.append(path)
    whole = work / "whole.bin"
    with open(whole, "wb") as out:
        for path in files:
            out.write(path.read_bytes())
    total = n * size
    fs = srv.filesystem()
    bucket = srv.new_bucket("bench")
    out_dir = work / "out"
    out_dir.mkdir()
    r = Rounds()
    per_save: collections.Counter[str] = collections.Counter()
    chunk_count = 0
    for rnd in range(args.rounds):
        raw, root = f"{bucket}/raw{rnd}", srv.url(bucket, f"cas{rnd}")
        store = cas.open_store(root, **srv.storage_options)
        r.run("raw put loop", lambda raw=raw: [fs.put_file(str(p), f"{raw}/{p.name}") for p in files])
        r.run("raw put file", lambda raw=raw: fs.put_file(str(whole), f"{raw}/whole"))
        r.run("cas put", lambda store=store: store.save(whole, "whole"))
        # The limit for cas's layout here: its own stored objects, 16 PUTs at once.
        content = store.get_metadata("whole")["content_id"]
        listing = ChunkList.parse(content, store.space.read_object(content)[1])
        stored = [store.storage._path(object_path(cid)) for cid, _ in listing.chunks]
        chunk_count = len(stored)
        bodies = [(f"{raw}/same/{k}", fs.cat_file(p)) for k, p in enumerate(stored)]
        r.run("raw put same", lambda b=bodies: _in_threads(16, fs.pipe_file, b))
        r.run("raw get loop", lambda raw=raw: [fs.get_file(f"{raw}/{p.name}", str(out_dir / p.name)) for p in files])  # fmt: skip
        r.run("raw get file", lambda raw=raw: fs.get_file(f"{raw}/whole", str(out_dir / "w")))
        r.run("cas get", lambda store=store: store.load("whole", dest=out_dir / "c"))
        r.run("raw get same", lambda s=stored: _in_threads(16, fs.cat_file, [(p,) for p in s]))
        counts: collections.Counter[str] = collections.Counter()
        with counted_requests(counts):
            r.run("cas put many", lambda store=store: [store.save(p, f"parts/{p.name}") for p in files])  # fmt: skip
        per_save = collections.Counter({k: v // n for k, v in counts.items()})
        r.run("cas get many", lambda store=store: [store.load(f"parts/{p.name}", dest=out_dir / f"c-{p.name}") for p in files])  # fmt: skip
        loaded = store.load("whole", dest=out_dir / "check")
        assert Path(loaded).read_bytes() == whole.read_bytes(), "cas returned other bytes"
        store.close()

    def mbs(key: str) -> str:
        return fmt_rate(r.rate(key, total))

    def x(a: str, b: str) -> float:
        return r.best[b] / r.best[a]

    marks = {
        "large put": x("cas put", "raw put loop") >= TARGET_LARGE,
        "large get": x("cas get", "raw get loop") >= TARGET_LARGE,
    }
    rows = []
    for op in ("put", "get"):
        target = x(f"cas {op}", f"raw {op} loop")
        rows.append([
            f"{op}, one {total / MIB:.0f} MiB artifact", mbs(f"cas {op}"), mbs(f"raw {op} loop"),
            f"{target:.2f}x {mark(target >= TARGET_LARGE)}", mbs(f"raw {op} file"),
            f"{x(f'cas {op}', f'raw {op} file'):.2f}x", mbs(f"raw {op} same"),
            f"{x(f'cas {op}', f'raw {op} same'):.2f}x",
        ])  # fmt: skip
    for op in ("put", "get"):
        ratio = x(f"cas {op} many", f"raw {op} loop")
        rows.append([
            f"{op}, {n} artifacts of {args.object_mib} MiB", mbs(f"cas {op} many"),
            mbs(f"raw {op} loop"), f"{ratio:.2f}x (reported)", "", "", "", "",
        ])  # fmt: skip
    requests = ", ".join(f"{op} {count}" for op, count in sorted(per_save.items()))
    print(table(
        f"large data: {total / MIB:.0f} MiB of random bytes on moto S3 (best of {args.rounds})",
        ["", "cas", f"s3fs {n} x {args.object_mib} MiB", f"ratio >= {TARGET_LARGE}x",
         "s3fs one file", "ratio", f"same {chunk_count} objects, 16 at once", "ratio"], rows,
        ["s3fs: put_file / get_file, one at a time; 'same objects': the chunk objects cas stored,"
         " by s3fs from 16 threads: what this server gives cas's layout",
         f"requests per {args.object_mib} MiB save: {requests}"
         " (cas itself: a HEAD and a PUT of the content, a PUT each of record and journal"
         " entry, and a GET of the ref; the rest is the ref update)"],
    ))  # fmt: skip
    return marks


# -- small artifacts ------------------------------------------------------------------------


def _small(
    srv: Any, args: argparse.Namespace, count: int, sample: int, latency_ms: float, tag: str
) -> dict[str, bool]:
    import cas

    rng = np.random.default_rng(7)
    blob = rng.bytes(count * SMALL_SIZE)
    items = [blob[i * SMALL_SIZE : (i + 1) * SMALL_SIZE] for i in range(count)]
    names = [f"small/{i:05d}" for i in range(count)]
    sample = min(sample, count - 1)
    fs = srv.filesystem()
    r = Rounds()
    per_save: collections.Counter[str] = collections.Counter()
    per_load: collections.Counter[str] = collections.Counter()

    def in_pool(fn: Callable[[int], object], indexes: range) -> float:
        t0 = time.perf_counter()
        _pool_map(args.threads, lambda k: fn(indexes[k]), len(indexes))
        return time.perf_counter() - t0

    def one_by_one(fn: Callable[[int], object], indexes: range) -> float:
        t0 = time.perf_counter()
        for i in indexes:
            fn(i)
        return time.perf_counter() - t0

    with added_latency(latency_ms / 1000):
        for _ in range(args.rounds):
            bucket = srv.new_bucket("small")
            store = cas.open_store(srv.url(bucket, "store"), **srv.storage_options)

            def save(i: int, store: Any = store) -> None:
                store.save(items[i], names[i])

            def load(i: int, store: Any = store) -> None:
                store.load(names[i])

            # moto lists a prefix by scanning every key of the bucket, so a save (which
            # lists) slows as the bucket fills: the loop runs half-way through the
            # pool's saves, at the bucket's average size.
            half = (count - sample) // 2
            first = in_pool(save, range(0, half))
            with counted_requests(per_save):
                r.record("save loop", one_by_one(save, range(half, half + sample)))
            r.record("save pool", first + in_pool(save, range(half + sample, count)))
            with counted_requests(per_load):
                r.record("load loop", one_by_one(load, range(sample)))
            r.record("load pool", in_pool(load, range(count)))
            raw = f"{bucket}/raw"
            r.record("pipe loop", one_by_one(lambda i, raw=raw: fs.pipe_file(f"{raw}/{i}", items[i]), range(sample)))  # fmt: skip
            r.record("pipe pool", in_pool(lambda i, raw=raw: fs.pipe_file(f"{raw}/p{i}", items[i]), range(count)))  # fmt: skip
            store.close()

    def rate(key: str) -> float:
        done = sample if key.endswith("loop") else count
        return (done - sample if key == "save pool" else done) / r.best[key]

    rows, marks = [], {}
    for what, label in (("save", "cas save"), ("load", "cas load"), ("pipe", "s3fs pipe_file (reference)")):  # fmt: skip
        x = rate(f"{what} pool") / rate(f"{what} loop")
        targeted = what != "pipe"
        if targeted:
            marks[f"small {what}{tag}"] = x >= TARGET_SMALL
        rows.append([label, f"{rate(what + ' loop'):,.1f}/s", f"{rate(what + ' pool'):,.1f}/s",
                     f"{x:.2f}x", mark(x >= TARGET_SMALL) if targeted else "(reference)"])  # fmt: skip
    latency = f", +{latency_ms:g} ms a request (a simulated round trip)" if latency_ms else ""
    saves, loads = sample * args.rounds, sample * args.rounds

    def each(counts: collections.Counter[str], n: int) -> str:
        ops = ", ".join(f"{op} {k / n:g}" for op, k in sorted(counts.items()))
        return f"{sum(counts.values()) / n:g} ({ops})"

    print(table(
        f"small artifacts: {count} of {SMALL_SIZE} bytes, moto S3{latency}",
        ["", f"loop ({sample})", f"{args.threads} threads", "pool / loop", f">= {TARGET_SMALL}x"], rows,
        ["s3fs's own pool/loop ratio is about the most this server and machine allow a client;",
         "the loop's saves run half-way through the pool's (moto's listings slow as a bucket fills)",
         f"requests per save of a new name: {each(per_save, saves)}; per load: {each(per_load, loads)}"],
    ))  # fmt: skip
    return marks


if __name__ == "__main__":
    main()
