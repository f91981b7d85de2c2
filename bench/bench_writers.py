"""Many writer processes on one bucket (issue 31), on moto S3.

Run: ``python -m bench.bench_writers [--proxy-ms 20]`` (or ``python -m bench writers``).
It starts moto itself (``cas.testing.servers.s3()``).

Each writer is a child process on a fresh machine (its own empty ``CAS_CACHE_DIR``)
that opens the store, says it is ready, waits until every writer is, then saves:

- distinct names: ``--writers`` (32) and ``--half`` (16) processes, each saving
  ``--saves`` (10) small values as ``w<i>/<k>``. Targets: 0 errors, 0 lost (every
  returned id loads and its name holds it), ``cas fsck`` clean; saves/s of 32 beside 16.
- one hot name: ``--hot-writers`` (16) processes each saving ``--hot-saves`` (20)
  distinct values as ``hot``. Targets: every save returns within 10 s, <= 15 requests
  per save, 0 errors, and the name's history holds each returned id exactly once (and
  nothing else).

Requests are counted in each child (aiobotocore's ``_make_api_call``, as
``cas.testing.servers.s3_calls`` does) while it saves, opening the store apart. Latency
is each save's own wall time in its child. Everything runs directly against moto, then
through bench/_proxy.py (``--proxy-ms`` each way, 20 by default) unless it is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import mark, table, workdir
from bench._procs import cas_command, run

TARGET_SECONDS = 10.0  # the slowest save of the hot name
TARGET_REQUESTS = 15  # requests per save of the hot name

#: One writer. argv: url, name pattern ("w3/{k}" or "hot"), saves, tag. Prints "ready"
#: once the store is open, waits for a line on stdin, saves, prints a JSON report.
_CHILD = r"""
import json, sys, time, traceback
from cas.testing import servers
import cas

url, pattern, saves, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with servers.s3_calls() as opening:
    store = cas.open_store(url)
print("ready", flush=True)
sys.stdin.readline()
ids, seconds, errors = [], [], []
with servers.s3_calls() as calls:
    for k in range(saves):
        t0 = time.perf_counter()
        try:
            ids.append(store.save(f"{tag} {k} {time.time_ns()}".encode(), pattern.format(k=k)))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        seconds.append(time.perf_counter() - t0)
print(json.dumps({"ids": ids, "seconds": seconds, "errors": errors,
                  "calls": sum(calls.values()), "by_op": dict(calls), "open": sum(opening.values())}))
"""


def _writers(env: dict[str, str], work: Path, url: str, patterns: list[str], saves: int,
             timeout: float) -> tuple[list[dict[str, Any]], float]:  # fmt: skip
    """Start one child per pattern, release them together; their reports and the wall
    seconds from release to the last one's end."""
    procs = []
    for i, pattern in enumerate(patterns):
        cache = tempfile.mkdtemp(prefix=f"cache-{i}-", dir=work)
        argv = [sys.executable, "-c", _CHILD, url, pattern, str(saves), f"writer {i}"]
        procs.append(subprocess.Popen(
            argv, env={**env, "CAS_CACHE_DIR": cache}, cwd=work, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True,
        ))  # fmt: skip
    deadline = time.monotonic() + timeout
    for p in procs:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = p.stdout.readline() if ready else ""
        if line.strip() != "ready":
            _kill(procs)
            raise SystemExit(
                f"a writer did not start: {line!r} {p.stderr.read()[-300:] if p.stderr else ''}"
            )
    t0 = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(procs)
            raise SystemExit(f"writers over {timeout:.0f} s (killed)") from None
        wall = time.perf_counter() - t0
        try:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            reports.append({"ids": [], "seconds": [], "calls": 0, "open": 0,
                            "errors": [f"exit {p.returncode}: {' '.join(err.split())[-300:]}"]})  # fmt: skip
    return reports, wall


def _kill(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _fsck(env: dict[str, str], work: Path, url: str) -> tuple[bool, str]:
    cache = tempfile.mkdtemp(prefix="cache-fsck-", dir=work)
    done = run([*cas_command(), "--root", url, "fsck"], env={**env, "CAS_CACHE_DIR": cache},
               cwd=work, timeout=600)  # fmt: skip
    return done.ok, "clean" if done.ok else done.why[:80]


def _distinct(env: dict[str, str], work: Path, srv: Any, n: int, saves: int,
              timeout: float) -> dict[str, Any]:  # fmt: skip
    import cas

    url = srv.url(srv.new_bucket("writers"), "store")
    cas.open_store(url)  # create it before the writers race to
    reports, wall = _writers(env, work, url, [f"w{i}/{{k}}" for i in range(n)], saves, timeout)
    ids = {f"w{i}/{k}": rid for i, r in enumerate(reports) for k, rid in enumerate(r["ids"])}
    errors = [e for r in reports for e in r["errors"]]
    store = cas.open_store(url)
    lost = 0
    for name, rid in ids.items():
        try:
            store.load(rid)
            lost += store.repo.names.read(name) != rid
        except Exception:  # noqa: BLE001 - a lost save is what this counts
            lost += 1
    fsck_ok, fsck_line = _fsck(env, work, url)
    calls = sum(r["calls"] for r in reports)
    return {"writers": n, "saves": len(ids), "errors": errors, "lost": lost, "wall": wall,
            "rate": len(ids) / wall, "per_save": calls / max(1, len(ids)),
            "seconds": [s for r in reports for s in r["seconds"]],
            "fsck": fsck_ok, "fsck_line": fsck_line}  # fmt: skip


def _hot(env: dict[str, str], work: Path, srv: Any, n: int, saves: int,
         timeout: float) -> dict[str, Any]:  # fmt: skip
    import cas

    url = srv.url(srv.new_bucket("hot"), "store")
    cas.open_store(url)
    reports, wall = _writers(env, work, url, ["hot"] * n, saves, timeout)
    ids = [rid for r in reports for rid in r["ids"]]
    errors = [e for r in reports for e in r["errors"]]
    history = Counter(e.new for e in cas.open_store(url).repo.names.log("hot"))
    returned = Counter(ids)
    twice = sum(1 for rid, c in returned.items() if c > 1 or history[rid] > 1)
    missing = sum(1 for rid in returned if history[rid] == 0)
    extra = sum(1 for rid in history if rid not in returned)
    seconds = [s for r in reports for s in r["seconds"]]
    calls = sum(r["calls"] for r in reports)
    by_op: Counter[str] = Counter()
    for r in reports:
        by_op.update(r.get("by_op", {}))
    return {"writers": n, "saves": len(ids), "errors": errors, "wall": wall,
            "rate": len(ids) / wall, "per_save": calls / max(1, len(ids)), "by_op": by_op,
            "seconds": seconds, "twice": twice, "missing": missing, "extra": extra}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_writers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--writers", type=int, default=32, help="processes saving distinct names (32)")
    ap.add_argument("--half", type=int, default=16, help="the smaller run beside it (16)")
    ap.add_argument("--saves", type=int, default=10, help="saves per distinct-name writer (10)")
    ap.add_argument("--hot-writers", type=int, default=16, help="processes saving 'hot' (16)")
    ap.add_argument("--hot-saves", type=int, default=20, help="saves of 'hot' per writer (20)")
    ap.add_argument("--proxy-ms", type=float, default=20.0,
                    help="delay each way of the proxied runs, ms (20; 0: direct only)")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per run (1200)")
    args = ap.parse_args(argv)

    from bench._proxy import latency_proxy
    from cas.testing import servers

    os.environ.setdefault("AWS_DEFAULT_REGION", servers.AWS_REGION)
    distinct: list[tuple[str, dict[str, Any]]] = []
    hot: list[tuple[str, dict[str, Any]]] = []
    with workdir("cas-bench-writers-") as work, servers.s3() as srv:
        os.environ["CAS_CACHE_DIR"] = str(work / "cache-parent")
        os.environ.update(srv.env)  # the parent checks what the writers left, directly
        env = dict(os.environ)
        with contextlib.ExitStack() as stack:
            routes = [("direct", srv.endpoint)]
            if args.proxy_ms > 0:
                proxy = stack.enter_context(latency_proxy(srv.endpoint, args.proxy_ms / 1000))
                routes.append((f"+{args.proxy_ms:g} ms", proxy.endpoint))
            for route, endpoint in routes:
                renv = {**env, "AWS_ENDPOINT_URL_S3": endpoint}
                for n in (args.half, args.writers):
                    print(f"  {route}: {n} writers, distinct names", flush=True)
                    distinct.append(
                        (route, _distinct(renv, work, srv, n, args.saves, args.timeout))
                    )
                print(f"  {route}: {args.hot_writers} writers, one hot name", flush=True)
                hot.append(
                    (route, _hot(renv, work, srv, args.hot_writers, args.hot_saves, args.timeout))
                )
    return _report(distinct, hot)


def _report(distinct: list[tuple[str, dict[str, Any]]],
            hot: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:  # fmt: skip
    marks: dict[str, bool] = {}

    def note(key: str, ok: bool) -> str:
        marks[key] = marks.get(key, True) and ok
        return mark(ok)

    rows = []
    for route, d in distinct:
        ok = not d["errors"] and d["lost"] == 0 and d["fsck"]
        rows.append([f"{route}, {d['writers']} writers", f"{d['saves']:,}", f"{d['rate']:,.1f}",
                     f"{d['per_save']:.1f}", f"{_pct(d['seconds'], 0.95):.2f}",
                     f"{max(d['seconds'], default=0):.2f}", str(len(d["errors"])), str(d["lost"]),
                     d["fsck_line"], note("distinct", ok)])  # fmt: skip
    print(table(
        "writer processes on one bucket, each saving names of its own (moto S3)",
        ["", "saves", "saves/s", "requests/save", "p95 s", "max s", "errors", "lost", "fsck",
         "0 errors, 0 lost, clean"], rows,
        ["a fresh machine per writer (own CAS_CACHE_DIR); requests counted in each child "
         "while it saves; saves/s from release to the last writer's end"],
    ))  # fmt: skip
    rows = []
    for route, h in hot:
        secs = h["seconds"]
        history_ok = h["twice"] == 0 and h["missing"] == 0 and h["extra"] == 0
        rows.append([f"{route}, {h['writers']} writers", f"{h['saves']:,}", f"{h['rate']:,.1f}",
                     f"{h['per_save']:.1f} {note('hot requests', h['per_save'] <= TARGET_REQUESTS)}",
                     f"{_pct(secs, 0.5):.2f}", f"{_pct(secs, 0.95):.2f}",
                     f"{max(secs, default=0):.2f} {note('hot max latency', max(secs, default=0) <= TARGET_SECONDS)}",
                     str(len(h["errors"])),
                     f"{h['twice']}/{h['missing']}/{h['extra']} {note('hot history', history_ok and not h['errors'])}"])  # fmt: skip
    print(table(
        "writer processes saving one hot name (moto S3)",
        ["", "saves", "saves/s", f"requests/save (<= {TARGET_REQUESTS})", "p50 s", "p95 s",
         f"max s (<= {TARGET_SECONDS:g})", "errors", "history twice/missing/extra (0/0/0)"], rows,
        [f"{route}: requests by operation {dict(h['by_op'])}" for route, h in hot],
    ))  # fmt: skip
    for _, r in [*distinct, *hot]:
        for e in r["errors"][:3]:
            print(f"  error: {e}")
    return {"pass": marks}


if __name__ == "__main__":
    main()
