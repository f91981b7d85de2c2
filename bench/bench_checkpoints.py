"""Checkpoint benchmark (issue 35): a network's weights after successive training steps,
each checkpoint under a name of its own, stored by cas beside zstd, byte-grouped zstd
and restic, in the same run.

Run: ``python -m bench.bench_checkpoints [--hidden 2048] [--checkpoints 6] [--steps 5]``
(or ``python -m bench checkpoints``).

The data, deterministic: an MLP of float32 weights (1024 -> hidden -> hidden -> 1024 ->
256, ReLU; about 35 MB at ``--hidden 2048``) trained on random data with Adam
(``--lr``, ``--steps`` steps between checkpoints, batches of 128): every weight moves
a little between checkpoints, as in real training. Each checkpoint is written as a
safetensors file (an 8-byte header length, a JSON header, the raw little-endian
float32 tensors) and saved as that file under ``ckpt/step-N`` in one store, and as
one flat numpy array under ``ckpt/step-N`` in another (both ``fsync=False``).

Measured, stored MB of the whole series:

- **cas**: files under ``objects/`` and ``packs/`` after every save (chunk dedup and
  deltas as cas chooses them today), and after ``cas gc --pack --aggressive`` (bases
  chosen again over a window across the store).
- **zstd -3** of each file alone: the plain compression limit; **zstd -3, previous as
  prefix**: each file compressed with the previous checkpoint's file as its
  dictionary (raw content; long-distance matching, a window over the whole base):
  the best a delta of the bytes as they are could do.
- **byte-grouped zstd -3** of each file alone: the float32 bytes split in 4 planes
  (byte 0 of every float, then byte 1, ...; Parquet's ``BYTE_STREAM_SPLIT``, what Xet
  does for model weights), the header kept in front; **byte-grouped, previous as
  prefix**: each plane compressed with the previous checkpoint's same plane as its
  dictionary; **byte-grouped XOR previous**: the planes of each float XORed with the
  previous checkpoint's (unchanged high bytes become zeros), then zstd -3: the best a
  delta on byte-grouped floats could do.
- **restic**: ``restic backup`` of each checkpoint file in turn into one repository
  (compression auto); the repository's size.
- **times** of the newest checkpoint: ``store.save`` and ``store.load`` beside writing
  and reading the file (``np.save``/``np.load`` for the array), and the byte-grouped
  encoding's seconds beside zstd -3's: ratios in the same run (best of ``--rounds``).

The stored bytes have no target: the figures say what pays (issue 35 asks for them
against plain zstd of each file and against restic, with the choice kept: cas stores
new checkpoints as XOR deltas, format 4). The times do: the newest checkpoint's save
and load within 1.5x of the first's (stored plain), PASS or FAIL printed for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

import cas
from bench._common import fresh, table, workdir
from bench._procs import tool, version
from cas.admin import gc

LEVEL = 3
PAYS = 0.10  # a saving over what cas stores today worth a change of the codec
#: A new version's save and load against the first's, stored plain (issue 35's target).
SAME = 1.5
IN, OUT, BATCH = 1024, 256, 128

# -- the data --------------------------------------------------------------------------------


def _init(hidden: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [IN, hidden, hidden, IN, OUT]
    params: dict[str, np.ndarray] = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        params[f"layer{i}.weight"] = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(
            np.float32
        )
        params[f"layer{i}.bias"] = np.zeros(b, np.float32)
    return params


def _grads(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Gradients of the mean squared error of the ReLU MLP on one batch."""
    n = len(params) // 2
    acts = [x]
    for i in range(n):
        z = acts[-1] @ params[f"layer{i}.weight"] + params[f"layer{i}.bias"]
        acts.append(np.maximum(z, 0) if i < n - 1 else z)
    delta = (2.0 / len(x)) * (acts[-1] - y)
    grads: dict[str, np.ndarray] = {}
    for i in reversed(range(n)):
        grads[f"layer{i}.weight"] = acts[i].T @ delta
        grads[f"layer{i}.bias"] = delta.sum(axis=0)
        if i:
            delta = (delta @ params[f"layer{i}.weight"].T) * (acts[i] > 0)
    return grads


def checkpoints(
    hidden: int, count: int, steps: int, lr: float, seed: int = 35
) -> list[dict[str, np.ndarray]]:
    """The weights after each of ``count`` rounds of ``steps`` Adam steps on random data."""
    params = _init(hidden, seed)
    rng = np.random.default_rng(seed + 1)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2, eps, t = 0.9, 0.999, 1e-8, 0
    out = []
    for _ in range(count):
        for _ in range(steps):
            t += 1
            x = rng.standard_normal((BATCH, IN), dtype=np.float32)
            y = rng.standard_normal((BATCH, OUT), dtype=np.float32)
            for k, g in _grads(params, x, y).items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                step = lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
                params[k] = (params[k] - step).astype(np.float32)
        out.append({k: p.copy() for k, p in params.items()})
    return out


def safetensors(params: dict[str, np.ndarray]) -> bytes:
    """The checkpoint as a safetensors file: header length, JSON header, raw tensors."""
    header: dict[str, Any] = {}
    offset = 0
    for k, p in params.items():
        header[k] = {"dtype": "F32", "shape": list(p.shape),
                     "data_offsets": [offset, offset + p.nbytes]}  # fmt: skip
        offset += p.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the tensors to 8 bytes
    body = b"".join(np.ascontiguousarray(p, "<f4").tobytes() for p in params.values())
    return len(head).to_bytes(8, "little") + head + body


def flat(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([p.ravel() for p in params.values()])


# -- the compressions ------------------------------------------------------------------------


def _split(data: bytes) -> tuple[bytes, np.ndarray]:
    """(header, the float32 bytes as 4 planes: a (4, n) array of uint8)."""
    start = 8 + int.from_bytes(data[:8], "little")
    floats = np.frombuffer(data, np.uint8, offset=start)
    return data[:start], floats.reshape(-1, 4).T.copy()


def grouped(data: bytes) -> bytes:
    """The file byte-grouped: its header, then byte 0 of every float, byte 1, ..."""
    head, planes = _split(data)
    return head + planes.tobytes()


def _zstd(data: bytes, prefix: bytes | None = None) -> int:
    """Bytes of a zstd -3 frame of ``data``; with ``prefix``, a raw-content dictionary
    (long-distance matching and a window over the whole prefix, so no match is lost to
    the window or the hash table)."""
    if prefix is None:
        return len(zstandard.ZstdCompressor(level=LEVEL).compress(data))
    window = max(20, min(31, (len(prefix) + len(data)).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(
        LEVEL, window_log=window, enable_ldm=True, threads=0
    )
    zdict = zstandard.ZstdCompressionDict(prefix, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return len(zstandard.ZstdCompressor(compression_params=params, dict_data=zdict).compress(data))


def compressed(files: Sequence[bytes]) -> dict[str, int]:
    """Total bytes of the series under each of the compressions."""
    out = dict.fromkeys(("zstd", "zstd_prefix", "grouped", "grouped_prefix", "grouped_xor"), 0)
    prev: bytes | None = None
    prev_planes: np.ndarray | None = None
    for data in files:
        head, planes = _split(data)
        out["zstd"] += _zstd(data)
        out["zstd_prefix"] += _zstd(data, prev)
        out["grouped"] += _zstd(head + planes.tobytes())
        if prev_planes is None or prev_planes.shape != planes.shape:
            size = _zstd(head + planes.tobytes())
            out["grouped_prefix"] += size
            out["grouped_xor"] += size
        else:
            out["grouped_prefix"] += len(head) + sum(
                _zstd(planes[b].tobytes(), prev_planes[b].tobytes()) for b in range(4)
            )
            out["grouped_xor"] += _zstd(head + (planes ^ prev_planes).tobytes())
        prev, prev_planes = data, planes
    return out


# -- cas and restic ----------------------------------------------------------------------------


def _bytes_under(*paths: Path) -> int:
    return sum(
        os.path.getsize(os.path.join(r, f)) for p in paths for r, _, fs in os.walk(p) for f in fs
    )


def store_series(root: Path, items: Sequence[Any], out: Path) -> dict[str, Any]:
    """Save each item under ``ckpt/step-N``; load the newest; then ``cas gc --pack
    --aggressive``. Returns stored bytes before and after, and the seconds of each."""
    store = cas.open_store(str(fresh(root)), fsync=False)
    saves = []
    for n, item in enumerate(items, 1):
        t0 = time.perf_counter()
        store.save(item, f"ckpt/step-{n}")
        saves.append(time.perf_counter() - t0)
    loads: dict[int, list[float]] = {1: [], len(items): []}
    for _ in range(3):
        for n in loads:  # the first (stored plain) and the newest
            name, item = f"ckpt/step-{n}", items[n - 1]
            if isinstance(item, Path):
                fresh(out).mkdir(parents=True)
                t0 = time.perf_counter()
                got = store.load(name, dest=out / item.name)
                loads[n].append(time.perf_counter() - t0)
                same = Path(got).read_bytes() == item.read_bytes()
            else:
                t0 = time.perf_counter()
                got = store.load(name)
                loads[n].append(time.perf_counter() - t0)
                same = np.array_equal(got, item)
            if not same:
                raise AssertionError(f"{name} did not load back the same")
    newest = f"ckpt/step-{len(items)}"
    stored = _bytes_under(root / "objects", root / "packs")
    t0 = time.perf_counter()
    gc.execute(store, gc.plan(store, grace=0, pack_loose_from=1), aggressive=True)
    repack_s = time.perf_counter() - t0
    repacked = _bytes_under(root / "objects", root / "packs")
    got = store.load(newest, dest=fresh(out) / "again") if isinstance(items[-1], Path) else None
    if got is not None and Path(got).read_bytes() != items[-1].read_bytes():
        raise AssertionError(f"{newest} did not load back the same after the repack")
    store.close()
    return {"bytes": stored, "repacked": repacked, "saves": saves, "load": min(loads[len(items)]),
            "load_first": min(loads[1]), "repack_s": repack_s}  # fmt: skip


def restic_series(exe: str, repo: Path, files: Sequence[Path]) -> int | None:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": str(repo) + "-cache"}
    if subprocess.run([exe, "init", "-r", str(fresh(repo)), "-q"], env=env,
                      capture_output=True, check=False).returncode:  # fmt: skip
        return None
    for path in files:
        done = subprocess.run([exe, "-r", str(repo), "backup", "-q", "--host", "bench", path.name],
                              cwd=path.parent, env=env, capture_output=True, check=False)  # fmt: skip
        if done.returncode:
            return None
    return _bytes_under(repo)


def _best(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def plain_times(work: Path, data: bytes, array: np.ndarray, rounds: int) -> dict[str, float]:
    """Seconds to write and read the newest checkpoint as a file and as ``.npy``; and
    to compress it with zstd -3 and byte-grouped."""
    path, npy = work / "plain.safetensors", work / "plain.npy"
    return {
        "write": _best(lambda: path.write_bytes(data), rounds),
        "read": _best(path.read_bytes, rounds),
        "np_save": _best(lambda: np.save(npy, array), rounds),
        "np_load": _best(lambda: np.load(npy), rounds),
        "zstd": _best(lambda: _zstd(data), rounds),
        "grouped": _best(lambda: _zstd(grouped(data)), rounds),
    }


# -- the run ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_checkpoints", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--hidden", type=int, default=2048, help="hidden width (2048: ~35 MB)")
    ap.add_argument("--checkpoints", type=int, default=6, help="checkpoints in the series (6)")
    ap.add_argument("--steps", type=int, default=5, help="Adam steps between checkpoints (5)")
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate (1e-4)")
    ap.add_argument("--rounds", type=int, default=2, help="series in fresh stores; best of (2)")
    args = ap.parse_args(argv)
    restic = tool("restic")
    t0 = time.perf_counter()
    series = checkpoints(args.hidden, args.checkpoints, args.steps, args.lr)
    train_s = time.perf_counter() - t0
    with workdir("cas-bench-checkpoints-") as work:
        files = []
        for n, params in enumerate(series, 1):
            path = work / "ckpt" / f"step-{n}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(safetensors(params))
            files.append(path)
        arrays = [flat(p) for p in series]
        raw = sum(p.stat().st_size for p in files)
        print(f"checkpoint benchmark: {len(files)} checkpoints of an MLP (hidden {args.hidden}), "
              f"{args.steps} Adam steps (lr {args.lr}) apart, {raw / len(files) / 1e6:.1f} MB each "
              f"(made in {train_s:.1f} s); restic: {version(restic, 'version')}")  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {"file": [], "array": []}
        for _ in range(max(1, args.rounds)):
            runs["file"].append(store_series(work / "store-file", files, work / "out"))
            runs["array"].append(store_series(work / "store-array", arrays, work / "out"))
        sizes = compressed([p.read_bytes() for p in files])
        sizes["restic"] = restic_series(restic, work / "restic", files) if restic else None
        plain = plain_times(work, files[-1].read_bytes(), arrays[-1], max(3, args.rounds))
    return _report(raw, runs, sizes, plain)


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}"


def _x(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _report(
    raw: int, runs: dict[str, list[dict[str, Any]]], sizes: dict[str, Any], plain: dict[str, float]
) -> dict[str, Any]:
    file_, array = runs["file"][0], runs["array"][0]
    today = file_["repacked"]
    rows_: list[tuple[str, int | None]] = [
        ("raw (the files)", raw),
        ("cas, files", file_["bytes"]),
        ("cas, files, after gc --pack --aggressive", file_["repacked"]),
        ("cas, arrays", array["bytes"]),
        ("cas, arrays, after gc --pack --aggressive", array["repacked"]),
        ("zstd -3 of each file", sizes["zstd"]),
        ("zstd -3, previous file as prefix", sizes["zstd_prefix"]),
        ("byte-grouped zstd -3 of each file", sizes["grouped"]),
        ("byte-grouped, previous planes as prefix", sizes["grouped_prefix"]),
        ("byte-grouped, XOR previous, zstd -3", sizes["grouped_xor"]),
        ("restic", sizes["restic"]),
    ]
    print(table(
        "stored MB of the series",
        ["", "MB", "x raw", "x zstd -3", "x cas (gc)", "x restic"],
        [[what, _mb(n), _x(n, raw), _x(n, sizes["zstd"]), _x(n, today), _x(n, sizes["restic"])]
         for what, n in rows_],
        ["cas (gc): the files' store after `cas gc --pack --aggressive --grace 0`",
         "prefix: each checkpoint against the previous one (raw-content dictionary, "
         "long-distance matching); XOR: each float's bytes XOR the previous checkpoint's"],
    ))  # fmt: skip
    timing_rows = []
    times: dict[str, float] = {}
    for kind, write, read in (("file", "write", "read"), ("array", "np_save", "np_load")):
        first = min(r["saves"][0] for r in runs[kind])
        newest = min(r["saves"][-1] for r in runs[kind])
        load = min(r["load"] for r in runs[kind])
        load_first = min(r["load_first"] for r in runs[kind])
        times.update({f"{kind}_save_first": first, f"{kind}_save_newest": newest,
                      f"{kind}_load": load, f"{kind}_load_first": load_first})  # fmt: skip
        timing_rows.append([f"{kind}: save step-1", f"{first:.3f}", f"{plain[write]:.3f}",
                            _x(first, plain[write])])  # fmt: skip
        timing_rows.append([f"{kind}: save the newest", f"{newest:.3f}", f"{plain[write]:.3f}",
                            _x(newest, plain[write])])  # fmt: skip
        timing_rows.append([f"{kind}: load step-1", f"{load_first:.3f}", f"{plain[read]:.3f}",
                            _x(load_first, plain[read])])  # fmt: skip
        timing_rows.append([f"{kind}: load the newest", f"{load:.3f}", f"{plain[read]:.3f}",
                            _x(load, plain[read])])  # fmt: skip
    timing_rows.append(["byte-grouped zstd -3 / zstd -3", f"{plain['grouped']:.3f}",
                        f"{plain['zstd']:.3f}", _x(plain["grouped"], plain["zstd"])])  # fmt: skip
    print(table(
        "seconds, one checkpoint (best of the rounds)",
        ["", "cas", "plain", "cas / plain"], timing_rows,
        ["plain: write_bytes/read_bytes of the file, np.save/np.load of the array "
         "(no fsync; the store runs with fsync=False)"],
    ))  # fmt: skip
    for kind in ("file", "array"):
        save_x = times[f"{kind}_save_newest"] / times[f"{kind}_save_first"]
        load_x = times[f"{kind}_load"] / times[f"{kind}_load_first"]
        print(f"  {kind}: the newest against step-1 (stored plain): save {save_x:.2f}x "
              f"({'PASS' if save_x <= SAME else 'FAIL'}), load {load_x:.2f}x "
              f"({'PASS' if load_x <= SAME else 'FAIL'}); target <= {SAME}x (issue 35)")  # fmt: skip
    print(f"  gc --pack --aggressive took {file_['repack_s']:.1f} s (files), "
          f"{array['repack_s']:.1f} s (arrays)")  # fmt: skip
    labels = {"zstd_prefix": "a delta on the previous file (zstd prefix)",
              "grouped": "byte-grouped zstd of each file",
              "grouped_prefix": "byte-grouped with the previous planes as prefix",
              "grouped_xor": "byte-grouped XOR the previous checkpoint"}  # fmt: skip
    winner = min(labels, key=lambda k: sizes[k])
    saving = 1 - sizes[winner] / today
    verdict = "pays" if saving > PAYS else "does not pay"
    nothing = " (chunk dedup and deltas save nothing)" if today > 0.98 * sizes["zstd"] else ""
    print(f"  conclusion: cas stores the series at {today / raw:.2f}x raw, "
          f"{today / sizes['zstd']:.2f}x zstd -3 of each file{nothing}; "
          + ", ".join(f"{labels[k]} {sizes[k] / today:.2f}x" for k in labels)
          + f" of cas; the best, {labels[winner]}, {verdict}: {saving:.0%} less than cas "
          f"(threshold {PAYS:.0%})")  # fmt: skip
    return {"raw": raw, "cas_files": file_["bytes"], "cas_files_gc": file_["repacked"],
            "cas_arrays": array["bytes"], "cas_arrays_gc": array["repacked"], **sizes,
            "times": times, "plain_times": plain}  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
