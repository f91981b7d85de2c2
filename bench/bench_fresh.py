"""A fresh machine on a large bucket: what the first command costs, on moto S3.

Run: ``python -m bench.bench_fresh [--artifacts 100000] [--proxy-ms 20]`` (or
``python -m bench fresh``). It starts moto itself (``cas.testing.servers.s3()``).

"A fresh machine" is a new process with an empty cache folder (``CAS_CACHE_DIR`` set to
a new, empty directory): nothing of the store is known locally, as on a new laptop or
a CI runner.

The buckets. ``--artifacts`` small artifacts (``value i`` as ``data/<i // 1000>/a<i>``,
metadata ``{"i": i}``, every 100th tagged ``stage=production``) are saved to a local
store (``fsync=False``), and every file of that store's folder but its ``index/``
(the local catalog, which never leaves a machine) is copied to a bucket: the bucket
holds what those saves would have left on S3. Twice: "single saves", each artifact
saved on its own in a plain loop; "batches", the same saves inside ``with
store.batch():`` blocks of 1000.

How a bucket is filled (``--upload``): ``bulk`` (the default) sends the files to the
server's bulk load (``cas.testing.moto_atomic.bulk_put``, 2,000 files a request), which
stores each as its PUT would (same ETag, size, checksum, content type); ``s3fs`` puts
them one request a file (s3fs ``put`` of 500 files at a time from ``--threads``
threads), as a user's copy would, at about 250 files a second. The buckets are the same
either way; what is measured afterwards goes through S3's API as before.

Measured, for each bucket, directly against moto and again through bench/_proxy.py
(``--proxy-ms`` each way, 20 by default: a 40 ms round trip, as to a nearby region),
each in a new child process on a fresh machine:

- the first ``cas ls`` (the command line, every name);
- the first ``store.catalog.search("stage:production")`` (checked: artifacts / 100 hits);
- the first ``store.save(b"new", "ci/job")`` (the run through the proxy saves a second
  version of the name the direct run saved).

Requests are counted in the child (aiobotocore's ``_make_api_call``, as
``cas.testing.servers.s3_calls`` does; opening the store included), and at the proxy
for the runs through it; wall seconds are the parent's (start-up included: what a user
waits for); peak RSS is the child's own ``VmHWM``. Targets: <= 100 requests, <= 30 s
through the proxy, peak RSS < 256 MiB.

Incremental sync: the machine that ran the search (its cache folder kept) syncs after
another machine (another cache folder) saved ``--new`` (100) artifacts:
``store.repo.sync()`` sends <= 20 requests + 1 per 1000 new events (the events it
applied); then, in a new process on the same machine, a sync with nothing new sends
<= 5. Through the proxy when there is one.

``cas gc --dry-run`` from a fresh machine on the single-saves bucket, counted at a proxy
with no delay (so that a run cut off at ``--timeout`` still has its count) and in the
child: <= 1 request per 100 artifacts, peak RSS < 256 MiB. Three runs: the bucket's
first gc (it reads every name, history entry and content header, and leaves a ref
snapshot and the objects it found to point at nothing for the next: docs/gc.md), then
a fresh machine's (the target), then a fresh machine's through the proxy.

Catalog checkpoints, on the local store of the "batches" bucket once it is copied (and
alone, with no S3, with ``--checkpoints-only``): a whole checkpoint written, then an
incremental one after 999 more saves (its size against the whole one's), the bytes
written per journal entry that gives (a whole one every ``incremental_limit`` entries,
incremental ones between) beside every checkpoint whole, and a new machine's catalog
made from them with its first search (a child process, a new catalog folder over the
same root): its peak RSS, target < 256 MiB.

moto is our wrapper (``cas.testing.moto_atomic``): besides the bulk load it answers a
listing page in O(page) from a sorted index of the bucket's names (moto alone walks and
sorts the whole bucket for each page), with moto's answer exactly.

Time, with the bulk load, on a shared 2-core machine: about 16 minutes at 30,000
artifacts and 44 at 100,000 (the bulk load stored 8,000-10,000 files a second; most of
the time is the local saves and the bucket's first gc, 300,948 requests in 17 minutes
at 100,000). With ``--upload s3fs`` moto stores about 250 files a second: 5 minutes at
3,000 artifacts (``--quick``), and at 100,000 the buckets alone take the better part of
an hour. A step over ``--timeout`` is killed (its requests, counted at the proxy, are
then shown as ">= N").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import mimetypes
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import MIB, mark, table, workdir
from bench._procs import Done, run

TARGET_REQUESTS = 100  # the first ls / search / save on a fresh machine
TARGET_SECONDS = 30.0  # the same, through the proxy
TARGET_RSS = 256 * MIB  # peak RSS of any of them, and of gc --dry-run
SYNC_BASE, SYNC_PER_EVENTS = 20, 1000  # <= 20 requests + 1 per 1000 new events
SYNC_IDLE = 5  # a sync with nothing new
GC_PER_ARTIFACTS = 100  # gc --dry-run: <= 1 request per 100 artifacts
BATCH = 1000  # saves per store.batch() block, in the "batches" bucket
BULK_FILES = 2000  # files per bulk-load request
LAYOUTS = ("single saves", "batches")

#: One fresh-machine step in a child process. Prints, as its last line, a JSON document:
#: the requests it sent by operation (``calls``; ``open`` for opening the store, apart),
#: its own seconds, its peak RSS and what the step returned.
_CHILD = r"""
import contextlib, json, sys, time
from cas.testing import servers

op, root, arg = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else "")


class Lines:
    # where the command line's output goes: counted, the last lines kept
    def __init__(self):
        self.count, self.last, self.part = 0, [], ""

    def write(self, text):
        self.count += text.count("\n")
        self.part = (self.part + text)[-2000:]
        return len(text)

    def flush(self):
        pass


out, opening = {}, {}
t0 = time.perf_counter()
if op in ("ls", "gc"):
    from cas.cli.main import main

    argv = ["--root", root, "ls"] if op == "ls" else ["--root", root, "gc", "--dry-run"]
    sink = Lines()
    with servers.s3_calls() as calls, contextlib.redirect_stdout(sink):
        out["exit"] = main(argv)
    out.update(lines=sink.count, last=sink.part.splitlines()[-6:])
else:
    import cas

    with servers.s3_calls() as opening:
        store = cas.open_store(root)
    with servers.s3_calls() as calls:
        if op == "search":
            out["hits"] = len(store.catalog.search("stage:production", limit=int(arg)))
        elif op == "save":
            store.save(b"new", "ci/job")
        elif op == "sync":
            out["events"] = store.repo.sync()
        elif op == "write":
            for i in range(int(arg)):
                store.save(f"new {i}".encode(), f"new/{i}", metadata={"i": i})
        else:
            raise SystemExit(f"unknown step {op!r}")
out["seconds"] = time.perf_counter() - t0
out["calls"], out["open"] = dict(calls), dict(opening)
with open("/proc/self/status") as f:
    out["rss"] = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps(out))
"""


@dataclass
class Step:
    """How one child step went: the process, what it reported, what the proxy saw."""

    done: Done
    report: dict[str, Any] = field(default_factory=dict)
    at_proxy: int | None = None  # requests the proxy carried (None: not through one)
    round_trips: int | None = None

    @property
    def ok(self) -> bool:
        return self.done.ok and bool(self.report) and self.report.get("exit", 0) == 0

    @property
    def requests(self) -> int | None:
        """Requests the child counted (opening the store included, except for a sync),
        or, when it did not report (cut off), what the proxy carried."""
        if self.report:
            calls = sum(self.report.get("calls", {}).values())
            opened = 0 if "events" in self.report else sum(self.report.get("open", {}).values())
            return calls + opened
        return self.at_proxy

    def count_text(self) -> str:
        """The requests as the table shows them: ">= N" when the child was cut off."""
        n = self.requests
        if n is None:
            return "?"
        return f"{n:,}" if self.report else f">= {n:,}"

    @property
    def rss(self) -> int | None:
        return self.report.get("rss") if self.report else None

    def why(self) -> str:
        if not self.done.ok:
            return self.done.why[:70]
        if self.report.get("exit", 0) != 0:
            return f"exit {self.report['exit']}: {' / '.join(self.report.get('last', []))[:60]}"
        return "no report" if not self.report else ""


class Machines:
    """Child processes on machines of their own (a cache folder each), aimed at moto
    directly or through a proxy."""

    def __init__(self, srv: Any, work: Path, timeout: float) -> None:
        self.work = work
        self.timeout = timeout
        creds = {k: v for k, v in srv.env.items() if "ENDPOINT" not in k}
        self.base = {**os.environ, **creds}
        self.direct = srv.endpoint

    def new_cache(self, label: str) -> Path:
        """An empty cache folder: a fresh machine."""
        return Path(tempfile.mkdtemp(prefix=f"cache-{label}-", dir=self.work))

    def step(self, op: str, root: str, cache: Path, proxy: Any = None, arg: str = "",
             timeout: float | None = None) -> Step:  # fmt: skip
        endpoint = proxy.endpoint if proxy is not None else self.direct
        env = {**self.base, "AWS_ENDPOINT_URL_S3": endpoint, "CAS_CACHE_DIR": str(cache)}
        argv = [sys.executable, "-c", _CHILD, op, root, *([arg] if arg else [])]
        window = proxy.window() if proxy is not None else contextlib.nullcontext(None)
        with window as seen:
            done = run(argv, env=env, cwd=self.work, timeout=timeout or self.timeout)
        report: dict[str, Any] = {}
        if done.ok:
            with contextlib.suppress(ValueError, IndexError):
                report = json.loads(done.stdout.strip().splitlines()[-1])
        step = Step(done, report)
        if seen is not None:
            step.at_proxy, step.round_trips = seen.count, seen.round_trips
        return step


# -- building the buckets ------------------------------------------------------------------


def _build_local(path: Path, n: int, batches: bool) -> float:
    """Save the ``n`` artifacts to a local store at ``path``; return the seconds."""
    import cas

    store = cas.open_store(str(path), fsync=False)

    def save(i: int) -> None:
        store.save(f"value {i}".encode(), f"data/{i // 1000}/a{i}", metadata={"i": i},
                   tags={"stage": "production"} if i % 100 == 0 else None)  # fmt: skip

    t0 = time.perf_counter()
    last = t0
    for start in range(0, n, BATCH):
        block = store.batch() if batches else contextlib.nullcontext()
        with block:
            for i in range(start, min(n, start + BATCH)):
                save(i)
        now = time.perf_counter()
        if now - last > 15:
            print(f"    saved {min(n, start + BATCH):,} of {n:,} ({now - t0:,.0f} s)", flush=True)
            last = now
    seconds = time.perf_counter() - t0
    store.close()
    return seconds


_FRESH_CATALOG = r"""
import json, sys, time
from pathlib import Path
import cas
from cas.repo.local_catalog import LocalCatalog
t0 = time.perf_counter()
repo = cas.open_store(sys.argv[1], create=False).repo
machine = LocalCatalog(repo.space, repo.journal, Path(sys.argv[2]))
machine.sync()
hits = len(machine.catalog.search("stage:production", limit=100_000))
seconds = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"seconds": seconds, "hits": hits, "rss": int(status["VmHWM"].split()[0]) * 1024}))
"""


def _checkpoint_costs(local: Path, n: int, work: Path) -> dict[str, Any]:
    """What catalog checkpoints cost at ``n`` records, on the local store just built: a
    whole one written, an incremental one after 1,000 more saves, and a new machine's
    catalog made from them (a child process over the same root, its catalog folder
    new) with its first search."""
    import cas
    from cas.repo import checkpoints

    store = cas.open_store(str(local), fsync=False)
    repo = store.repo
    repo.sync()
    t0 = time.perf_counter()
    whole = repo.index.checkpoint(whole=True)
    whole_s = time.perf_counter() - t0
    with store.batch():
        for i in range(checkpoints.EVERY - 1):  # the 1,000th would checkpoint on its own
            store.save(f"more {i}".encode(), f"more/{i}", metadata={"i": i})
    repo.sync()
    t0 = time.perf_counter()
    inc = repo.index.checkpoint()
    inc_s = time.perf_counter() - t0
    store.close()
    assert whole is not None and inc is not None and inc.base == whole.digest, (whole, inc)
    size = {c.name: (local / c.path).stat().st_size for c in (whole, inc)}
    out = run([sys.executable, "-c", _FRESH_CATALOG, str(local), str(work / "fresh-catalog")],
              timeout=1800)  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1]) if out.ok else {}
    limit = checkpoints.incremental_limit(n)
    per_change = size[inc.name] / (checkpoints.EVERY - 1)
    return {
        "whole_s": whole_s, "whole_bytes": size[whole.name], "inc_s": inc_s,
        "inc_bytes": size[inc.name], "limit": limit,
        # a whole one every `limit` entries, an incremental one every EVERY entries
        # holding on average limit / 2 changes
        "per_entry": size[whole.name] / limit + per_change * limit / 2 / checkpoints.EVERY,
        "per_entry_whole": size[whole.name] / checkpoints.EVERY,
        "fresh": got, "fresh_why": "" if out.ok else out.why,
    }  # fmt: skip


def _upload(srv: Any, folder: Path, bucket: str, how: str, threads: int) -> tuple[int, float]:
    """Copy every file of ``folder`` but its ``index/`` to ``bucket/store/``, by ``how``
    (``bulk``: the server's bulk load; ``s3fs``: s3fs puts from ``threads`` threads);
    return the files and seconds."""
    from cas.testing.moto_atomic import bulk_put

    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).parts[0] != "index"
    )
    size = BULK_FILES if how == "bulk" else 500
    chunks = [files[k : k + size] for k in range(0, len(files), size)]
    done, lock = [0], threading.Lock()
    fs = srv.filesystem() if how == "s3fs" else None
    t0 = time.perf_counter()
    last = [t0]

    def put(chunk: list[Path]) -> None:
        rpaths = [f"store/{p.relative_to(folder).as_posix()}" for p in chunk]
        if fs is not None:
            fs.put([str(p) for p in chunk], [f"{bucket}/{r}" for r in rpaths])
        else:  # the content type s3fs would send, so that the bucket is the same
            items = [(r, p.read_bytes(), mimetypes.guess_type(str(p))[0])
                     for p, r in zip(chunk, rpaths, strict=True)]  # fmt: skip
            assert bulk_put(srv.endpoint, bucket, items) == len(items)
        with lock:
            done[0] += len(chunk)
            now = time.perf_counter()
            if now - last[0] > 15 or done[0] == len(files):
                rate = done[0] / max(now - t0, 1e-9)
                print(f"    {how}: {done[0]:,} of {len(files):,} files ({rate:,.0f}/s)", flush=True)  # fmt: skip
                last[0] = now

    # bulk: two requests at a time, so that reading the files overlaps the server's work
    with ThreadPoolExecutor(threads if fs is not None else 2) as pool:
        for _ in pool.map(put, chunks):
            pass
    return len(files), time.perf_counter() - t0


def _build(
    srv: Any, work: Path, args: argparse.Namespace, costs: dict[str, Any]
) -> tuple[dict[str, str], list[list[str]]]:
    """The two buckets; their store URLs by layout, and a row per build for the report;
    ``costs`` gets what checkpoints cost on the local store of the last."""
    urls, rows = {}, []
    for layout in LAYOUTS:
        print(
            f"  building the {layout!r} bucket: {args.artifacts:,} artifacts,"
            f" filled by {args.upload}",
            flush=True,
        )
        local = work / f"local-{layout.replace(' ', '-')}"
        save_s = _build_local(local, args.artifacts, batches=layout == "batches")
        bucket = srv.new_bucket("fresh")
        files, put_s = _upload(srv, local, bucket, args.upload, args.threads)
        if layout == LAYOUTS[-1]:
            print("  catalog checkpoints on the local store", flush=True)
            costs.update(_checkpoint_costs(local, args.artifacts, work))
        shutil.rmtree(local, ignore_errors=True)
        urls[layout] = srv.url(bucket, "store")
        rows.append([layout, f"{save_s:,.1f}", f"{args.artifacts / save_s:,.0f}/s",
                     f"{files:,}", f"{put_s:,.1f}", f"{files / put_s:,.0f}/s"])  # fmt: skip
        print(
            f"    saved in {save_s:,.1f} s, {files:,} files uploaded in {put_s:,.1f} s", flush=True
        )
    return urls, rows


# -- the measurements ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_fresh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--artifacts", type=int, default=100_000, help="artifacts per bucket (100000)")
    ap.add_argument("--proxy-ms", type=float, default=20.0,
                    help="delay each way of the proxied runs, ms (20; 0: direct only)")  # fmt: skip
    ap.add_argument("--new", type=int, default=100, help="artifacts another machine saves (100)")
    ap.add_argument("--upload", choices=("bulk", "s3fs"), default="bulk",
                    help="how the buckets are filled: the server's bulk load (the default)"
                         " or s3fs puts, a request a file")  # fmt: skip
    ap.add_argument("--threads", type=int, default=16, help="s3fs upload threads (16)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds before a child step is killed (1800)")  # fmt: skip
    ap.add_argument("--checkpoints-only", action="store_true",
                    help="only what catalog checkpoints cost, on a local store (no S3)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.checkpoints_only:
        with workdir("cas-bench-fresh-") as work:
            print(f"  building a local store of {args.artifacts:,} artifacts", flush=True)
            _build_local(work / "local", args.artifacts, batches=True)
            alone = _checkpoint_costs(work / "local", args.artifacts, work)
        return {"pass": _report_checkpoints(args.artifacts, alone)}

    from bench._proxy import latency_proxy
    from cas.testing import servers

    n = args.artifacts
    os.environ.setdefault("AWS_DEFAULT_REGION", servers.AWS_REGION)
    with workdir("cas-bench-fresh-") as work, servers.s3() as srv:
        os.environ["CAS_CACHE_DIR"] = str(work / "cache-builder")
        t0 = time.perf_counter()
        costs: dict[str, Any] = {}
        urls, build_rows = _build(srv, work, args, costs)
        build_s = time.perf_counter() - t0
        machines = Machines(srv, work, args.timeout)
        delay = args.proxy_ms / 1000
        with contextlib.ExitStack() as stack:
            proxy = stack.enter_context(latency_proxy(srv.endpoint, delay)) if delay > 0 else None
            routes: list[tuple[str, Any]] = [("direct", None)]
            if proxy is not None:
                routes.append((f"+{args.proxy_ms:g} ms", proxy))
            first, searched = _first_steps(machines, urls, routes, n)
            syncs = _syncs(machines, urls, routes[-1], searched, args.new)
            gcs = _gcs(machines, urls["single saves"], srv.endpoint, routes[-1])
    marks = _report(args, build_rows, build_s, first, syncs, gcs)
    marks.update(_report_checkpoints(n, costs))
    return {"pass": marks}


def _report_checkpoints(n: int, costs: dict[str, Any]) -> dict[str, bool]:
    """The table of what checkpoints cost; the mark of the new machine's memory."""
    fresh = costs["fresh"]
    rss = fresh.get("rss")
    ok = rss is not None and rss < TARGET_RSS and fresh.get("hits") == math.ceil(n / 100)
    rows = [
        ["a whole checkpoint", f"{costs['whole_bytes'] / 1e6:,.2f} MB",
         f"{costs['whole_s']:.3f}", ""],
        ["an incremental one, 999 saves later", f"{costs['inc_bytes'] / 1e3:,.1f} KB",
         f"{costs['inc_s']:.3f}", f"{costs['inc_bytes'] / costs['whole_bytes']:.3f}x the whole"],
        [f"written per journal entry (a whole one every {costs['limit']:,})",
         f"{costs['per_entry']:,.0f} B", "",
         f"every checkpoint whole: {costs['per_entry_whole']:,.0f} B"],
        ["a new machine's catalog and first search", "",
         f"{fresh['seconds']:.1f}" if fresh else "", _cell(
             f"peak RSS {rss / MIB:,.0f} MiB, {fresh.get('hits')} hits" if rss else costs["fresh_why"], ok)],
    ]  # fmt: skip
    print(table(
        f"catalog checkpoints at {n:,} records (a local store; the new machine a child process)",
        ["", "size", "seconds", ""], rows,
        ["per journal entry: the whole one over the entries between whole ones, plus the"
         " incremental ones (one every 1,000 entries, half the limit of changes on average)",
         f"the new machine's peak RSS: target < {TARGET_RSS / MIB:.0f} MiB (as its first search on a bucket)"],
    ))  # fmt: skip
    return {"new machine's catalog memory": ok}


def _first_steps(machines: Machines, urls: dict[str, str], routes: list[tuple[str, Any]],
                 n: int) -> tuple[dict[tuple[str, str, str], Step], dict[str, Path]]:  # fmt: skip
    """ls, search and save, each the first on a fresh machine; the search's cache folder
    per layout (of the last route) for the sync."""
    steps: dict[tuple[str, str, str], Step] = {}
    searched: dict[str, Path] = {}
    for layout in LAYOUTS:
        for route, proxy in routes:
            for op in ("ls", "search", "save"):
                cache = machines.new_cache(op)
                arg = str(n + 1) if op == "search" else ""
                print(f"  {layout}, {route}: first {op}", flush=True)
                steps[layout, route, op] = machines.step(op, urls[layout], cache, proxy, arg)
                if op == "search":
                    searched[layout] = cache
                else:
                    shutil.rmtree(cache, ignore_errors=True)
    return steps, searched


def _syncs(machines: Machines, urls: dict[str, str], route: tuple[str, Any],
           searched: dict[str, Path], new: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Per layout: another machine saves ``new`` artifacts (directly); the machine that
    searched syncs (through ``route``), then syncs again in a new process."""
    out: dict[str, dict[str, Any]] = {}
    name, proxy = route
    for layout in LAYOUTS:
        print(f"  {layout}: another machine saves {new}; sync, {name}", flush=True)
        other = machines.new_cache("other")
        wrote = machines.step("write", urls[layout], other, None, str(new))
        shutil.rmtree(other, ignore_errors=True)
        cache = searched[layout]
        synced = machines.step("sync", urls[layout], cache, proxy)
        idle = machines.step("sync", urls[layout], cache, proxy)
        out[layout] = {"route": name, "write": wrote, "sync": synced, "idle": idle}
    return out


def _gcs(machines: Machines, url: str, endpoint: str,
         route: tuple[str, Any]) -> list[tuple[str, Step]]:  # fmt: skip
    """The bucket's first gc, then a fresh machine's (both counted at a proxy with no
    delay), then a fresh machine's through ``route``."""
    from bench._proxy import latency_proxy

    print("  gc --dry-run: the bucket's first, then fresh machines'", flush=True)
    out = []
    with latency_proxy(endpoint, 0.0) as counter:
        for label in ("the bucket's first gc", "a fresh machine's, after it"):
            out.append((label, machines.step("gc", url, machines.new_cache("gc"), counter)))
    name, proxy = route
    if proxy is not None:
        out.append((f"the same, {name}", machines.step("gc", url, machines.new_cache("gc"), proxy)))
    return out


def _cell(value: str, ok: bool | None) -> str:
    return value if ok is None else f"{value} {mark(ok)}"


def _report(args: argparse.Namespace, build_rows: list[list[str]], build_s: float,
            first: dict[tuple[str, str, str], Step], syncs: dict[str, dict[str, Any]],
            gcs: list[tuple[str, Step]]) -> dict[str, bool]:  # fmt: skip
    n = args.artifacts
    want_hits = math.ceil(n / 100)
    print(table(
        f"the buckets: {n:,} artifacts each, saved locally then copied to moto S3 by {args.upload}"
        f" ({build_s:,.0f} s in all)",
        ["", "saves, s", "saves", "files (no index/)", "upload, s", "upload"], build_rows,
        [f"upload: s3fs put of 500 files at a time from {args.threads} threads (a request a file)"
         if args.upload == "s3fs" else
         f"upload: the server's bulk load (cas.testing.moto_atomic.bulk_put), {BULK_FILES:,}"
         " files a request, each stored as its PUT would be"],
    ))  # fmt: skip

    marks: dict[str, bool] = {}

    def note(key: str, ok: bool) -> bool:
        marks[key] = marks.get(key, True) and ok
        return ok

    rows = []
    for (layout, route, op), s in first.items():
        proxied = s.at_proxy is not None
        req, rss = s.requests, s.rss
        req_ok = note(f"{op} requests", s.ok and req is not None and req <= TARGET_REQUESTS)
        rss_ok = note(f"{op} memory", s.ok and rss is not None and rss < TARGET_RSS)
        sec_ok = note(f"{op} seconds +rtt", s.ok and s.done.seconds <= TARGET_SECONDS) if proxied else None  # fmt: skip
        if op == "search":
            hits = s.report.get("hits")
            check = f"{hits} hits" if hits == want_hits else f"{hits} hits, want {want_hits}"
            note("search hits", hits == want_hits)
        elif op == "ls":
            check = f"{s.report.get('lines', 0):,} names" if s.ok else ""
        else:
            check = "saved" if s.ok else ""
        if not s.ok:
            check = s.why()
        rows.append([
            f"{layout}, {route}: first {op}",
            _cell(s.count_text(), req_ok),
            f"{s.at_proxy:,} / {s.round_trips:,}" if proxied else "",
            _cell(f"{s.done.seconds:,.1f}", sec_ok),
            _cell(f"{rss / MIB:,.0f} MiB" if rss else "?", rss_ok),
            check,
        ])  # fmt: skip
    print(table(
        f"a fresh machine (new process, empty CAS_CACHE_DIR) on {n:,} artifacts in moto S3",
        ["", f"requests (<= {TARGET_REQUESTS})", "at proxy / round trips",
         f"seconds (<= {TARGET_SECONDS:g} +rtt)", f"peak RSS (< {TARGET_RSS / MIB:.0f} MiB)", ""],
        rows,
        ["requests: counted in the child (aiobotocore calls, opening the store included);"
         " seconds: the parent's wall clock, start-up included",
         "the save through the proxy is the second version of ci/job (the direct run saved the first)"],
    ))  # fmt: skip

    rows = []
    for layout, got in syncs.items():
        wrote, synced, idle = got["write"], got["sync"], got["idle"]
        events = synced.report.get("events")
        allowed = SYNC_BASE + (events or 0) / SYNC_PER_EVENTS
        req = synced.requests
        ok = note("sync requests", synced.ok and req is not None and req <= allowed)
        opened = sum(synced.report.get("open", {}).values())
        rows.append([f"{layout}, {got['route']}: sync after {args.new} new",
                     _cell(synced.count_text(), ok), f"<= {allowed:g}",
                     f"{events:,} events" if events is not None else synced.why(),
                     f"{synced.done.seconds:,.1f}", f"{opened}"])  # fmt: skip
        req = idle.requests
        ok = note("sync idle requests", idle.ok and req is not None and req <= SYNC_IDLE)
        events = idle.report.get("events")
        rows.append([f"{layout}, {got['route']}: sync, nothing new",
                     _cell(idle.count_text(), ok), f"<= {SYNC_IDLE}",
                     f"{events:,} events" if events is not None else idle.why(),
                     f"{idle.done.seconds:,.1f}", f"{sum(idle.report.get('open', {}).values())}"])  # fmt: skip
        if not wrote.ok:
            rows.append([f"{layout}: the other machine's saves", "", "", wrote.why(), "", ""])
    writes = ", ".join(f"{k} {v['write'].done.seconds:,.1f} s" for k, v in syncs.items())
    print(table(
        "incremental sync: the machine that searched, after another machine saved",
        ["", "requests", "target", "applied", "seconds", "open (not counted)"], rows,
        [f"requests: store.repo.sync() only, counted in the child; the target is {SYNC_BASE} + 1"
         f" per {SYNC_PER_EVENTS} events it applied; nothing new: <= {SYNC_IDLE}",
         "the second sync is a new process on the same machine (the same cache folder)",
         f"the other machine's {args.new} saves (a child, directly): {writes}"],
    ))  # fmt: skip

    allowed = n / GC_PER_ARTIFACTS
    rows = []
    for i, (label, gc) in enumerate(gcs):
        req, rss = gc.requests, gc.rss
        req_ok = rss_ok = None
        if i == 1:  # the target: a fresh machine on a bucket that has been gc-ed before
            req_ok = note("gc requests", gc.ok and req is not None and req <= allowed)
        if i <= 1:
            rss_ok = note("gc memory", gc.ok and rss is not None and rss < TARGET_RSS)
        plan = " / ".join(" ".join(line.split()) for line in gc.report.get("last", [])[:4])
        rows.append([label, _cell(gc.count_text(), req_ok),
                     f"{gc.at_proxy:,}" if gc.at_proxy is not None else "",
                     f"{gc.done.seconds:,.1f}",
                     _cell(f"{rss / MIB:,.0f} MiB" if rss else "?", rss_ok),
                     plan if gc.ok else f"did not finish: {gc.why()}"])  # fmt: skip
    print(table(
        "cas gc --dry-run from a fresh machine, the single-saves bucket",
        ["", f"requests (<= {allowed:g})", "at proxy", "seconds",
         f"peak RSS (< {TARGET_RSS / MIB:.0f} MiB)", "plan"],
        rows,
        [f"target: <= 1 request per {GC_PER_ARTIFACTS} artifacts, for a fresh machine on a"
         " bucket a gc has planned on before (the first leaves a ref snapshot and the objects"
         " it found to point at nothing: docs/gc.md); counted in the child, and at a proxy"
         " (with no delay for the first two: its count stands when a run is cut off)"],
    ))  # fmt: skip
    print("targets: " + ", ".join(f"{k} {mark(v)}" for k, v in marks.items()))
    return marks


if __name__ == "__main__":
    main()
