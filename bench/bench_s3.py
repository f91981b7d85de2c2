"""S3 benchmark: cas on moto's S3 server beside s3fs moving the same bytes, in one run.

Run: ``python -m bench.bench_s3 [--large-mib 200] [--small 2000] [--threads 16]``
(or ``python -m bench s3``). It starts moto itself (``cas.testing.servers.s3()``).

Large data: 200 MiB of random bytes (incompressible: cas gains nothing from zstd),
also written as 50 files of 4 MiB. The targets (issue 16, >= 0.8x) compare cas storing
the 200 MiB as one artifact (``store.save(path)``; ``store.load(name, dest=...)``) with
s3fs ``put_file`` / ``get_file`` of the same bytes in 4 MiB objects, one at a time; and
cas saving (loading) the 50 files as 50 artifacts in a loop with the same s3fs loop.
Also shown: s3fs moving the 200 MiB as one object (multipart, 50 MiB parts), s3fs
moving cas's own chunk objects from 16 threads (the most this server gives that layout;
absent when the chunks are packed), and ``store.save_many`` of the 50 files. The same
targets run again through bench/_proxy.py (``--proxy-ms`` each way, 20 by default: a
40 ms round trip, where requests in sequence cost what they cost on a real bucket).
Peak RSS: cas saving and loading the 200 MiB artifact, each in a child process that
reports its own ``VmHWM``, beside an idle one (import cas, open the store): bounded
means under 128 MiB over idle, whatever the artifact's size.

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
import shutil
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
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=20.0,
        help="simulated round trip for the second small-artifact table (20; 0: skip)",
    )
    ap.add_argument("--latency-small", type=int, default=400, help="artifacts in it (400)")
    ap.add_argument("--proxy-ms", type=float, default=20.0,
                    help="the large data again through bench/_proxy.py, this delay each way (20; 0: skip)")  # fmt: skip
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
    marks = _large_run(srv, work, args, files, whole, None)
    marks.update(_large_memory(srv, work, files, whole))
    if args.proxy_ms > 0:
        from bench._proxy import latency_proxy

        with latency_proxy(srv.endpoint, delay=args.proxy_ms / 1000) as proxy:
            marks.update(_large_run(srv, work, args, files, whole, proxy))
    return marks


def _large_run(srv: Any, work: Path, args: argparse.Namespace, files: list[Path], whole: Path,
               proxy: Any) -> dict[str, bool]:  # fmt: skip
    """cas beside s3fs on the large data, directly (with the reference rows) or through
    the latency proxy (``proxy``: only the rows with targets)."""
    import cas

    n, total = len(files), len(files) * files[0].stat().st_size
    direct = proxy is None
    over = {} if direct else {"endpoint_url": proxy.endpoint}
    fs = srv.filesystem(**over)
    bucket = srv.new_bucket("bench")
    out_dir = work / "out"
    out_dir.mkdir(exist_ok=True)
    r = Rounds()
    per_save: collections.Counter[str] = collections.Counter()
    seen_save: Any = None
    chunk_count = 0
    has_many = False
    for rnd in range(args.rounds):
        raw, root = f"{bucket}/raw{rnd}", srv.url(bucket, f"cas{rnd}")
        store = cas.open_store(root, **{**srv.storage_options, **over})
        has_many = hasattr(store, "save_many")
        r.run("raw put loop", lambda raw=raw: [fs.put_file(str(p), f"{raw}/{p.name}") for p in files])  # fmt: skip
        if direct:
            r.run("raw put file", lambda raw=raw: fs.put_file(str(whole), f"{raw}/whole"))
        r.run("cas put", lambda store=store: store.save(whole, "whole"))
        stored: list[str] = []
        if direct:
            # The limit for cas's layout here: the large objects it stored for this
            # artifact (chunks, or the packs holding them), 16 requests at once.
            listing = fs.find(root.removeprefix("s3://"), detail=True)
            stored = [k for k, info in listing.items() if int(info.get("size") or 0) >= MIB]
            chunk_count = len(stored)
            if stored:
                bodies = [(f"{raw}/same/{k}", fs.cat_file(p)) for k, p in enumerate(stored)]
                r.run("raw put same", lambda b=bodies: _in_threads(16, fs.pipe_file, b))
                del bodies
        r.run("raw get loop", lambda raw=raw: [fs.get_file(f"{raw}/{p.name}", str(out_dir / p.name)) for p in files])  # fmt: skip
        if direct:
            r.run("raw get file", lambda raw=raw: fs.get_file(f"{raw}/whole", str(out_dir / "w")))
        r.run("cas get", lambda store=store: store.load("whole", dest=out_dir / "c"))
        if stored:
            r.run("raw get same", lambda s=stored: _in_threads(16, fs.cat_file, [(p,) for p in s]))
        counts: collections.Counter[str] = collections.Counter()
        window = proxy.window() if proxy is not None else contextlib.nullcontext(None)
        with counted_requests(counts), window as seen:
            r.run("cas put many", lambda store=store: [store.save(p, f"parts/{p.name}") for p in files])  # fmt: skip
        per_save = collections.Counter({k: v // n for k, v in counts.items()})
        seen_save = seen
        r.run("cas get many", lambda store=store: [store.load(f"parts/{p.name}", dest=out_dir / f"c-{p.name}") for p in files])  # fmt: skip
        if direct and has_many:
            r.run("cas put save_many", lambda store=store: store.save_many([(p, f"many/{p.name}") for p in files]))  # fmt: skip
        if rnd == 0:
            loaded = store.load("whole", dest=out_dir / "check")
            assert Path(loaded).read_bytes() == whole.read_bytes(), "cas returned other bytes"
        store.close()
        shutil.rmtree(out_dir)
        out_dir.mkdir()

    def mbs(key: str) -> str:
        return fmt_rate(r.rate(key, total)) if key in r.best else ""

    def x(a: str, b: str) -> float:
        return r.best[b] / r.best[a]

    def also(a: str, b: str) -> str:
        return f"{x(a, b):.2f}x" if a in r.best and b in r.best else ""

    tag = "" if direct else " +rtt"
    marks = {
        f"large put{tag}": x("cas put", "raw put loop") >= TARGET_LARGE,
        f"large get{tag}": x("cas get", "raw get loop") >= TARGET_LARGE,
        f"many put{tag}": x("cas put many", "raw put loop") >= TARGET_LARGE,
        f"many get{tag}": x("cas get many", "raw get loop") >= TARGET_LARGE,
    }
    rows = []
    for op in ("put", "get"):
        target = x(f"cas {op}", f"raw {op} loop")
        rows.append([
            f"{op}, one {total / MIB:.0f} MiB artifact", mbs(f"cas {op}"), mbs(f"raw {op} loop"),
            f"{target:.2f}x {mark(target >= TARGET_LARGE)}", mbs(f"raw {op} file"),
            also(f"cas {op}", f"raw {op} file"), mbs(f"raw {op} same"),
            also(f"cas {op}", f"raw {op} same"),
        ])  # fmt: skip
    for op in ("put", "get"):
        ratio = x(f"cas {op} many", f"raw {op} loop")
        rows.append([
            f"{op}, {n} artifacts of {args.object_mib} MiB", mbs(f"cas {op} many"),
            mbs(f"raw {op} loop"), f"{ratio:.2f}x {mark(ratio >= TARGET_LARGE)}", "", "", "", "",
        ])  # fmt: skip
    if "cas put save_many" in r.best:
        ratio = x("cas put save_many", "raw put loop")
        rows.append([f"put, {n} of {args.object_mib} MiB, save_many", mbs("cas put save_many"),
                     mbs("raw put loop"), f"{ratio:.2f}x (reported)", "", "", "", ""])  # fmt: skip
    requests = ", ".join(f"{op} {count}" for op, count in sorted(per_save.items()))
    notes = [f"requests per {args.object_mib} MiB save: {requests}"]
    if seen_save is not None:
        notes.append(f"at the proxy, per {args.object_mib} MiB save: {seen_save.summary(per=n)},"
                     f" {seen_save.round_trips / n:.1f} round trips")  # fmt: skip
    if direct:
        notes.insert(0, "s3fs: put_file / get_file, one at a time; 'same objects': the objects of"
                     " 1 MiB or more cas stored (chunks or packs), whole, by s3fs from 16 threads:"
                     " what this server gives cas's layout")  # fmt: skip
        notes.append(range_get_cost(srv))
        if not has_many:
            notes.append("store.save_many: not built yet")
        where = "moto S3"
        header = ["", "cas", f"s3fs {n} x {args.object_mib} MiB", f"ratio >= {TARGET_LARGE}x",
                  "s3fs one file", "ratio", f"same {chunk_count} objects, 16 at once", "ratio"]  # fmt: skip
    else:
        where = f"moto S3 through the proxy, {args.proxy_ms:g} ms each way"
        notes.append("the proxy runs in this process: it shares the GIL with both clients")
        header = ["", "cas", f"s3fs {n} x {args.object_mib} MiB", f"ratio >= {TARGET_LARGE}x"]
        rows = [row[:4] for row in rows]
    print(table(f"large data: {total / MIB:.0f} MiB of random bytes on {where} (best of {args.rounds})",
                header, rows, notes))  # fmt: skip
    return marks


def range_get_cost(srv: Any, big: int = 64 * MIB, n: int = 20) -> str:
    """What this server charges for a small range GET of a large object (as reads of
    packed objects send) beside a GET of a small object: moto reads the whole object
    for a range; real S3 does not."""
    fs = srv.filesystem()
    bucket = srv.new_bucket("calibrate")
    fs.pipe_file(f"{bucket}/big", os.urandom(big))
    fs.pipe_file(f"{bucket}/small", os.urandom(4096))
    t0 = time.perf_counter()
    for _ in range(n):
        fs.cat_file(f"{bucket}/small")
    t1 = time.perf_counter()
    for i in range(n):
        fs.cat_file(f"{bucket}/big", start=i * 4096, end=(i + 1) * 4096)
    t2 = time.perf_counter()
    fs.rm(f"{bucket}/big")
    return (
        f"this server: a GET of a 4 KiB object {(t1 - t0) / n * 1e3:.0f} ms, a 4 KiB range GET of a"
        f" {big / MIB:.0f} MiB object {(t2 - t1) / n * 1e3:.0f} ms (moto reads the whole object"
        " for a range; real S3 does not)"
    )


#: A child process that saves or loads the large artifact, or only opens the store
#: (the baseline): its peak RSS is the cost of the path alone.
_CHILD = """
import json, pathlib, sys, time
import cas
op, root, path, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
store = cas.open_store(root, **options)
t0 = time.perf_counter()
if op == "save":
    store.save(pathlib.Path(path), "whole")
elif op == "load":
    store.load("whole", dest=path)
else:
    store.exists("whole")
"""
_CHILD_S3FS = """
import json, pathlib, sys
import s3fs
op, prefix, folder, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
fs = s3fs.S3FileSystem(**options)
for p in sorted(pathlib.Path(folder).glob("part-*")):
    if op == "put":
        fs.put_file(str(p), f"{prefix}/{p.name}")
    else:
        fs.get_file(f"{prefix}/{p.name}", str(p) + ".got")
"""
#: The ``cas`` command itself (its entry point, malloc bound included), then its peak RSS.
_CLI = """
import atexit, sys
from cas.cli.main import run
atexit.register(lambda: print(next(int(l.split()[1]) * 1024 for l in open("/proc/self/status")
                                   if l.startswith("VmHWM:"))))
sys.argv = ["cas", *sys.argv[1:]]
run()
"""
MEMORY_BOUND = 128 * MIB  # peak RSS above an idle process: bounded, whatever the size


def _large_memory(srv: Any, work: Path, files: list[Path], whole: Path) -> dict[str, bool]:
    """Peak RSS of cas saving and loading the large artifact, each in a child process."""
    import json
    import sys

    from bench._procs import PEAK_RSS_SNIPPET, run

    bucket = srv.new_bucket("rss")
    options = json.dumps(srv.storage_options)
    root = srv.url(bucket, "cas")
    got = work / "rss-out"
    parts = work / "rss-parts"
    parts.mkdir(exist_ok=True)
    for p in files:
        os.link(p, parts / p.name)
    cas_child, s3fs_child = _CHILD + PEAK_RSS_SNIPPET, _CHILD_S3FS + PEAK_RSS_SNIPPET
    runs = {
        "idle (import cas, open the store)": run([sys.executable, "-c", cas_child, "open", root, "-", options]),
        "cas save": run([sys.executable, "-c", cas_child, "save", root, str(whole), options]),
        "cas load": run([sys.executable, "-c", cas_child, "load", root, str(got), options]),
        "s3fs put_file loop": run([sys.executable, "-c", s3fs_child, "put", f"{bucket}/raw", str(parts), options]),
        "s3fs get_file loop": run([sys.executable, "-c", s3fs_child, "get", f"{bucket}/raw", str(parts), options]),
    }  # fmt: skip
    cli_env = {**os.environ, **srv.env}
    cli = {
        "cas put (the command)": run([sys.executable, "-c", _CLI, "--root", root, "put", str(whole), "--name", "cli/whole"], env=cli_env),
        "cas get (the command)": run([sys.executable, "-c", _CLI, "--root", root, "get", "cli/whole", "-o", str(got) + ".cli"], env=cli_env),
    }  # fmt: skip
    rss = {k: int(d.stdout.split()[-1]) if d.ok else 0 for k, d in runs.items()}
    rss.update({k: int(d.stdout.split()[-1]) if d.ok else 0 for k, d in cli.items()})
    runs.update(cli)
    Path(str(got) + ".cli").unlink(missing_ok=True)
    shutil.rmtree(got, ignore_errors=True)
    shutil.rmtree(parts)
    idle = rss["idle (import cas, open the store)"]
    rows, marks = [], {}
    for label, d in runs.items():
        rows.append([label, f"{rss[label] / MIB:,.0f} MiB" if d.ok else d.why[:60],
                     f"{(rss[label] - idle) / MIB:+,.0f} MiB" if d.ok and idle and label != "idle (import cas, open the store)" else "",
                     f"{d.seconds:,.1f}" if d.ok else ""])  # fmt: skip
    for key in ("cas save", "cas load", "cas put (the command)", "cas get (the command)"):
        marks[f"large {key.split()[1]}{' (command)' if 'command' in key else ''} memory"] = (
            runs[key].ok and idle > 0 and rss[key] - idle < MEMORY_BOUND
        )
    size = whole.stat().st_size
    print(table(
        f"peak RSS, each a child process, one {size / MIB:.0f} MiB artifact on moto S3",
        ["", "peak RSS (VmHWM)", "over idle", "seconds (start-up included)"], rows,
        [f"target: cas's save and load stay under {MEMORY_BOUND / MIB:.0f} MiB over an idle"
         f" process (bounded, not growing with the {size / MIB:.0f} MiB): "
         + ", ".join(f"{k} {mark(v)}" for k, v in marks.items())],
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
