"""Run the benchmark suite: ``python -m bench [NAME ...] [--quick]``.

Benchmarks: objects (the object layer), artifacts (small saves, issue 6), saves (the
public API at its limits, issue 17), folders (many small files, put/get/push beside git
and restic, issue 16), catalog, s3 (large data and small artifacts on moto), serve
(``cas serve`` content), parquet, gc, fresh (a fresh machine's first commands on a large
bucket, incremental sync, and what catalog checkpoints cost at that size), writers (many writer processes on one bucket: distinct
names, and one hot name), checkpoints (a model's checkpoints under names of their own,
beside zstd, byte-grouped zstd and restic, issue 35). With no names every benchmark runs in turn. Each prints its own table, with the limits
it measured in the same run and PASS/FAIL against its targets; this runner ends with a
one-line summary per benchmark. ``CAS_BENCH_FULL=1`` runs the catalog at its full
1,000,000 records (default 200,000, to keep ``make bench`` around ten minutes); gc
always runs at its target's 1,000,000 objects (about ten minutes more: most of it is
writing and removing two million small files, the store and git's peer repository);
fresh at 20,000 artifacts (about 15 minutes), its target's 100,000 with
``CAS_BENCH_FULL=1`` (an hour or more: moto storing the files of its two buckets);
``--quick`` shrinks everything for a smoke run (its figures are not the targets' sizes).

Exit status: 0 when every benchmark ran (whatever its figures), 2 when one failed to run.
Missing targets are reported, not turned into a failing exit: this is a measurement,
and the machine it runs on is often shared.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

FULL = os.environ.get("CAS_BENCH_FULL", "") not in ("", "0")


def _args(name: str, quick: bool) -> list[str]:
    if name == "objects":
        return ["--size-mib", "64", "--rounds", "1"] if quick else []
    if name == "artifacts":
        return ["--count", "500", "--rounds", "1"] if quick else []
    if name == "s3":
        return ["--large-mib", "40", "--small", "200", "--sample", "50"] if quick else []
    if name == "gc":
        return ["--objects", "50000"] if quick else []
    if name == "catalog":
        if quick:
            return ["--records", "20000"]
        return [] if FULL else ["--records", "200000"]
    if name == "folders":
        return ["--files", "2000", "--rounds", "1", "--min-cap", "10"] if quick else []
    if name == "saves":
        quick_args = ["--size-mib", "64", "--count", "500", "--durable", "300", "--s3-ops", "5"]
        return [*quick_args, "--rounds", "1"] if quick else []
    if name == "serve":
        quick_args = ["--small", "300", "--large-mib", "16", "--large-gets", "3"]
        return [*quick_args, "--records", "10000", "--rounds", "1"] if quick else []
    if name == "parquet":
        return ["--rows", "300000", "--rounds", "1"] if quick else []
    if name == "delta":
        return ["--rounds", "1", "--chain", "6"] if quick else []
    if name == "checkpoints":
        return ["--hidden", "512", "--checkpoints", "4", "--rounds", "1"] if quick else []
    if name == "fresh":
        if quick:
            return ["--artifacts", "3000"]
        return [] if FULL else ["--artifacts", "20000"]
    if name == "writers":
        quick_args = ["--writers", "8", "--half", "4", "--saves", "3"]
        return [*quick_args, "--hot-writers", "8", "--hot-saves", "5"] if quick else []
    if name == "fsspec":
        return ["--mib", "40", "--files", "2000", "--rounds", "1"] if quick else []
    return []


BENCHMARKS = (
    "objects", "artifacts", "saves", "folders", "catalog", "s3", "serve", "parquet", "fsspec",
    "delta", "checkpoints", "gc", "fresh", "writers",
)  # fmt: skip


def _load(name: str) -> Callable[[Sequence[str]], Any] | None:
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.bench_{name}":
            return None  # not written yet
        raise
    main: Callable[[Sequence[str]], Any] = module.main
    return main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    print(f"cas benchmarks: {', '.join(names)}; {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average {_load_average()}")  # fmt: skip
    summary: list[str] = []
    broken = False
    for name in names:
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        t0 = time.perf_counter()
        try:
            run = _load(name)
            if run is None:
                summary.append(f"{name:<10} not present (bench/bench_{name}.py), skipped")
                print("  not present, skipped")
                continue
            result = run(_args(name, args.quick))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken benchmark must not stop the rest
            broken = True
            traceback.print_exc()
            summary.append(f"{name:<10} did not run: {exc!r}")
            continue
        seconds = time.perf_counter() - t0
        summary.append(f"{name:<10} {_verdicts(result)} ({seconds:,.0f} s)")
    print("\n=== summary " + "=" * 63)
    for line in summary:
        print(f"  {line}")
    print(
        f"  load average now {_load_average()}: figures are ratios to limits measured in the same run"
    )
    return 2 if broken else 0


def _verdicts(result: Any) -> str:
    if not isinstance(result, dict):
        return "ran"
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    marks = result.get("pass")
    if not isinstance(marks, dict) or not marks:
        return "ran (see its table)"
    return ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in marks.items())


def _load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
