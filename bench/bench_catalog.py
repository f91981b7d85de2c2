"""Catalog benchmark: register, search, lineage and rebuild beside raw LMDB rates.

Run: ``python -m bench.bench_catalog [--records N] [--dir PATH]`` (default 1,000,000).
Targets (issue 5, at 1,000,000 records): register >= 20,000 records/s batched; a
two-term tag search returning 100 results p50 < 5 ms; lineage of depth 10 p50 < 5 ms;
rebuild < 2 min. Raw LMDB put/get rates are measured in the same run, same machine.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lmdb

from cas.catalog import Catalog

BATCH = 10_000
STAGES = ("dev", "staging", "production", "archived")
TEAMS = tuple(f"team{i:02d}" for i in range(20))
TYPES = ("model", "dataset", "metrics", "features", "report")
WORDS = ("resnet", "xgboost", "bert", "fraud", "churn", "ranking", "vision", "tabular")
CHAIN = 12  # versions per name: lineage depth 10 needs chains longer than 10


def _hex(i: int, salt: int = 0) -> str:
    return f"{salt:08x}{i:056x}"


def make_records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """n synthetic records: names with CHAIN versions each, every version the child of
    the previous one, two tags, a few metadata words."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    base = 1_790_000_000  # seconds, 2026
    for i in range(n):
        group, version = divmod(i, CHAIN)
        team = TEAMS[group % len(TEAMS)]
        t = base + i
        micro = rnd.randrange(1_000_000)
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{micro:06d}Z"
        out.append(
            {
                "id": _hex(i, 1),
                "name": f"{team}/{rnd.choice(WORDS)}_{group}",
                "artifact_type": TYPES[group % len(TYPES)],
                "content_id": _hex(i, 2),
                "size": rnd.randrange(1 << 30),
                "tags": {"stage": rnd.choice(STAGES), "team": team},
                "parent_ids": [_hex(i - 1, 1)] if version else [],
                "source_project": "default",
                "source_pipeline": f"pipe{group % 50}",
                "source_run_id": f"run{group}",
                "source_step": rnd.choice(("prepare", "train", "evaluate")),
                "metadata": {"framework": rnd.choice(WORDS), "auc": rnd.random(), "epochs": 10},
                "created_at": created,
            }
        )
    return out


def _p50_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def raw_lmdb(path: Path, n: int, value_size: int) -> tuple[float, float]:
    """Raw py-lmdb rates on one sub-database: (puts/s in BATCH-sized txns, gets/s)."""
    env = lmdb.open(str(path), map_size=1 << 36, max_dbs=2, metasync=False)
    db = env.open_db(b"raw")
    rnd = random.Random(1)
    keys = [rnd.randbytes(32) for _ in range(n)]
    value = rnd.randbytes(value_size)
    t0 = time.perf_counter()
    for start in range(0, n, BATCH):
        with env.begin(write=True, db=db) as txn:
            for k in keys[start : start + BATCH]:
                txn.put(k, value)
    put_rate = n / (time.perf_counter() - t0)
    sample = rnd.sample(keys, min(n, 200_000))
    t0 = time.perf_counter()
    with env.begin(db=db) as txn:
        for k in sample:
            txn.get(k)
    get_rate = len(sample) / (time.perf_counter() - t0)
    env.close()
    return put_rate, get_rate


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table, return the figures and a ``pass`` dict
    (target name -> met) for the ``python -m bench`` runner."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_catalog", description=__doc__)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    n = max(args.records, CHAIN * 2)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_catalog_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(n, work)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


def _run(n: int, work: Path) -> dict[str, Any]:
    print(f"catalog benchmark: {n:,} records, {os.cpu_count()} cores, work folder {work}")
    print(f"  load average at start: {os.getloadavg()[0]:.1f} (wall times suffer when > cores)")
    t0 = time.perf_counter()
    records = make_records(n)
    print(f"  (generated records in {time.perf_counter() - t0:.1f} s, not counted)")
    res: dict[str, Any] = {}

    raw_n = min(n, 1_000_000)
    res["raw_put_per_s"], res["raw_get_per_s"] = raw_lmdb(work / "raw", raw_n, 400)
    shutil.rmtree(work / "raw", ignore_errors=True)

    live = Catalog(work / "live")
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n, BATCH):
        live.put_many(records[start : start + BATCH])
    res["register_per_s"] = n / (time.perf_counter() - t0)
    res["register_per_cpu_s"] = n / (time.process_time() - c0)
    stats = live.stats()
    entries = sum(stats["entries"].values())

    # tag events: promote 1% of records (so rebuild replays tags too)
    rnd = random.Random(3)
    tag_events = [
        {
            "op": "tag",
            "id": r["id"],
            "tags": {"stage": "production"},
            "stamp": f"{r['created_at']}-{i:08d}",
        }
        for i, r in enumerate(rnd.sample(records, max(1, n // 100)))
    ]
    live.apply(tag_events)

    queries = [f"stage:production team:{t}" for t in TEAMS]
    for q in queries:  # warm the page cache once
        live.search(q, limit=100)
    hits = len(live.search(queries[0], limit=100))
    res["search_2tags_p50_ms"] = _p50_ms(lambda: live.search(rnd.choice(queries)), 400)
    word_q = [f"{w} stage:archived" for w in WORDS]
    res["search_word_tag_p50_ms"] = _p50_ms(lambda: live.search(rnd.choice(word_q)), 400)
    rare = records[n // 2]
    rare_q = f"{(n // 2) // CHAIN} stage:{rare['tags']['stage']}"
    rare_hits = len(live.search(rare_q))
    res["search_selective_p50_ms"] = _p50_ms(lambda: live.search(rare_q), 400)
    res["list_newest_p50_ms"] = _p50_ms(lambda: live.list(limit=100), 200)
    tips = [records[g * CHAIN + CHAIN - 1]["id"] for g in range(n // CHAIN)]
    res["lineage_depth10_p50_ms"] = _p50_ms(
        lambda: live.ancestors(rnd.choice(tips), depth=10), 1000
    )
    res["get_p50_ms"] = _p50_ms(lambda: live.get(rnd.choice(tips)), 1000)
    live.close()

    events: list[dict[str, Any]] = [{"op": "put", "record": r} for r in records]
    events += tag_events
    rnd.shuffle(events)
    rebuilt = Catalog(work / "rebuilt")
    t0, c0 = time.perf_counter(), time.process_time()
    rebuilt.rebuild(events)
    res["rebuild_s"] = time.perf_counter() - t0
    res["rebuild_cpu_s"] = time.process_time() - c0
    rebuilt.close()

    disk = sum(f.stat().st_size for f in (work / "live").iterdir())
    ms_per_get = 1e3 / res["raw_get_per_s"]
    print(
        f"  index: {entries:,} entries, {disk / 2**20:,.0f} MiB on disk, map {stats['map_size'] >> 20} MiB"
    )
    rows = [
        ("raw LMDB put (32 B key, 400 B value)", f"{res['raw_put_per_s']:,.0f} /s", ""),
        ("raw LMDB get", f"{res['raw_get_per_s']:,.0f} /s", ""),
        (
            "register, batched 10k/txn",
            f"{res['register_per_s']:,.0f} rec/s",
            f"target >= 20,000; {res['register_per_cpu_s']:,.0f}/CPU-s; "
            f"{res['raw_put_per_s'] / res['register_per_s']:.1f}x raw put time",
        ),
        (
            f"search 2 tags -> {hits} results, p50",
            f"{res['search_2tags_p50_ms']:.2f} ms",
            f"target < 5 ms; = {res['search_2tags_p50_ms'] / ms_per_get:,.0f} raw gets",
        ),
        ("search word + tag, 100 results, p50", f"{res['search_word_tag_p50_ms']:.2f} ms", ""),
        (
            f"search selective word + tag -> {rare_hits}, p50",
            f"{res['search_selective_p50_ms']:.2f} ms",
            "",
        ),
        ("list newest 100, p50", f"{res['list_newest_p50_ms']:.2f} ms", ""),
        ("get one record, p50", f"{res['get_p50_ms']:.3f} ms", ""),
        (
            "ancestors depth 10, p50",
            f"{res['lineage_depth10_p50_ms']:.2f} ms",
            f"target < 5 ms; = {res['lineage_depth10_p50_ms'] / ms_per_get:,.0f} raw gets",
        ),
        (
            f"rebuild {len(events):,} events",
            f"{res['rebuild_s']:.1f} s",
            f"target < 120 s; {res['rebuild_cpu_s']:.1f} s of CPU",
        ),
    ]
    for name, value, note in rows:
        print(f"  {name:<40} {value:>16}   {note}")
    print(f"  load average at end: {os.getloadavg()[0]:.1f}")
    res["pass"] = {
        "register": res["register_per_s"] >= 20_000,
        "search": res["search_2tags_p50_ms"] < 5,
        "lineage": res["lineage_depth10_p50_ms"] < 5,
        "rebuild": res["rebuild_s"] < 120,
    }
    return res


if __name__ == "__main__":
    main()
