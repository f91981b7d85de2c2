"""cas:// benchmark (issue 19): reads through fsspec beside ``store.load``, and the
requests one file of a large folder artifact costs on S3.

Run: ``python -m bench.bench_fsspec [--mib 200] [--files 20000]`` (or
``python -m bench fsspec``).

- A ``--mib`` artifact of random bytes in a local store, read whole through
  ``fsspec.open("cas://big", root=...)`` and through ``store.load("big")`` (best of
  ``--rounds``). Target: the cas:// read >= 0.9x ``store.load``.
- A folder artifact of ``--files`` files of 4 KiB saved to an S3 store (moto on
  127.0.0.1), then one file of it read through ``cas://<name>/<path>``: by a process of
  its own on a machine new to the store (an empty ``CAS_CACHE_DIR``: it lists the packs
  and reads their indexes), by a process of its own on the machine that saved it (its
  cache folder holds the pack indexes and its catalog the name), and again by one
  filesystem that has read a file already. Every request is counted at the S3 client.
  Target: <= 4 requests (once a machine has met the store).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec

import cas
from bench._common import MB, MIB, workdir
from cas.testing import servers


def _local(root: Path, mib: int, rounds: int) -> tuple[float, float]:
    store = cas.open_store(str(root), fsync=False)
    data = os.urandom(mib * MIB)
    store.save(data, "big")
    fs = fsspec.filesystem("cas", root=str(root))
    best_fs = best_load = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        with fs.open("cas://big", "rb") as f:
            got = f.read()
        best_fs = min(best_fs, time.perf_counter() - t0)
        assert got == data
        t0 = time.perf_counter()
        got = store.load("big")
        best_load = min(best_load, time.perf_counter() - t0)
        assert got == data
    return best_fs, best_load


#: A reader in a process of its own: how many requests one file costs it, by kind.
_READER = """
import json, sys, fsspec
from cas.testing import servers
url, options, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
fs = fsspec.filesystem("cas", root=url, **options)
kinds = {}
def count(op, params):
    key = op + (" .idx" if str(params.get("Key", "")).endswith(".idx") else "")
    kinds[key] = kinds.get(key, 0) + 1
    return op
with servers.s3_calls(count), fs.open(path, "rb") as f:
    size = len(f.read())
print(json.dumps({"size": size, "kinds": kinds}))
"""


def _read_in_a_process(url: str, options: dict[str, Any], path: str, cache: Path) -> dict[str, int]:
    env = {**os.environ, "CAS_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", _READER, url, json.dumps(options), path],
        env=env, capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    got = json.loads(out.splitlines()[-1])
    assert got["size"] == 4096, got
    return dict(got["kinds"])


def _s3(work: Path, files: int) -> dict[str, dict[str, int]]:
    """Requests by kind for one file read by: a process on a machine new to the store,
    a new process on the machine that wrote it, the first one's filesystem again."""
    folder = work / "folder"
    folder.mkdir()
    for i in range(files):
        (folder / f"f{i:05d}.bin").write_bytes(os.urandom(4096))
    writer_cache, new_machine = work / "cache-writer", work / "cache-new"
    with servers.start("s3") as srv:
        url = srv.url(srv.new_bucket(), f"cas-{uuid.uuid4().hex[:6]}")
        old = os.environ.get("CAS_CACHE_DIR")
        os.environ["CAS_CACHE_DIR"] = str(writer_cache)
        try:
            cas.open_store(url, **srv.storage_options).save(folder, "data/images")
        finally:
            os.environ.pop("CAS_CACHE_DIR") if old is None else os.environ.update(CAS_CACHE_DIR=old)
        one = f"cas://data/images/f{files // 2:05d}.bin"
        options = dict(srv.storage_options)
        seen = {
            "a machine new to the store": _read_in_a_process(url, options, one, new_machine),
            "a new process where it was saved": _read_in_a_process(url, options, one, writer_cache),
        }
        fs = fsspec.filesystem("cas", root=url, **srv.storage_options)
        with fs.open(one, "rb") as f:
            f.read()
        kinds: dict[str, int] = {}

        def count(op: str, params: Any) -> str:
            kinds[op] = kinds.get(op, 0) + 1
            return op

        with (
            servers.s3_calls(count),
            fs.open(f"cas://data/images/f{files // 3:05d}.bin", "rb") as f,
        ):
            f.read()
        seen["the same filesystem, another file"] = kinds
    return seen


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_fsspec", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--mib", type=int, default=200)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    with workdir("cas-bench-fsspec") as work:
        t_fs, t_load = _local(work / "local", args.mib, args.rounds)
        seen = _s3(work, args.files)
    size = args.mib * MIB
    ratio = t_load / t_fs
    print(f"cas:// read of a {args.mib} MiB artifact (local store, best of {args.rounds})")
    print(f"  fsspec.open('cas://big').read()  {size / MB / t_fs:8.0f} MB/s  {t_fs:6.2f} s")
    print(f"  store.load('big')                {size / MB / t_load:8.0f} MB/s  {t_load:6.2f} s")
    ok_read = ratio >= 0.9
    print(f"  cas:// / store.load: {ratio:.2f}x, target >= 0.9x: {'PASS' if ok_read else 'FAIL'}")
    print(f"one 4 KiB file of a {args.files:,}-file folder artifact on S3 (moto), "
          "fsspec.open('cas://data/images/<file>'), requests counted at the S3 client")  # fmt: skip
    verdicts = {}
    for who, kinds in seen.items():
        total = sum(kinds.values())
        verdicts[who] = total <= 4
        by_kind = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        print(f"  {who + ':':36} {total:3d} requests ({by_kind})"
              f"  target <= 4: {'PASS' if total <= 4 else 'FAIL'}")  # fmt: skip
    print("  (a machine new to the store lists packs/ and reads each pack's index once, then")
    print("   keeps them in its cache folder: every later process reads as the second line)")
    ok_req = (
        verdicts["a new process where it was saved"]
        and verdicts["the same filesystem, another file"]
    )
    return {"pass": {"cas:// read >= 0.9x load": ok_read, "one file <= 4 requests": ok_req}}


if __name__ == "__main__":
    main()
