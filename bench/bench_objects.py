"""Object-space benchmark: put and get of a 256 MiB mixed corpus beside its limits.

Run: ``python -m bench.bench_objects [--size-mib 256] [--rounds 3]``.

The corpus is half random bytes, half CSV text that zstd 3 keeps ~35% of, alternating
in 8 MiB segments, written once to a temporary file. In the same run, on the same data,
the limits a put or get cannot beat on this machine are measured in memory:

- BLAKE3 + zstd (our level) on two threads, each hashing and compressing half of the
  data in 1 MiB pieces: the CPU work of a new write;
- BLAKE3 alone on two threads (``max_threads=AUTO``): the work of a write that finds
  its content already stored;
- zstd decompress + BLAKE3 on one thread, over the pieces as cas stores them
  (compressed when that pays, else raw): the work of a verified read;

and the peer, ``git hash-object -w`` on the same file in a fresh repository (SHA-1 and
zlib on one thread). Targets (issue 3): put new >= 0.8 x the hash+compress limit and
>= 8 x git; put existing >= 0.7 x two-thread BLAKE3; get >= 0.8 x one-thread
decompress + BLAKE3.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import zstandard

from bench._common import (
    MB,
    MIB,
    Rounds,
    fmt_rate,
    fresh,
    mark,
    table,
    timed,
    workdir,
    write_corpus,
)
from cas.objects import codec
from cas.objects.chunking import cut
from cas.objects.ids import blob_id
from cas.objects.kinds import ChunkList
from cas.objects.space import ObjectSpace, object_path
from cas.storage import LocalStorage

PIECE = MIB
TARGET_PUT_NEW = 0.8  # x two-thread BLAKE3 + zstd
TARGET_VS_GIT = 8.0  # x git hash-object -w
TARGET_PUT_EXISTING = 0.7  # x two-thread BLAKE3
TARGET_GET = 0.8  # x one-thread decompress + BLAKE3


# -- limits, in memory --------------------------------------------------------------


def pieces_of(data: bytes, size: int = PIECE) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + size] for i in range(0, len(view), size)]


def hash_compress_two_threads(pieces: Sequence[memoryview], level: int) -> None:
    """Each of two threads hashes and compresses every other piece (GIL released)."""

    def work(part: Sequence[memoryview]) -> None:
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        for p in part:
            blake3.blake3(p).digest()
            cctx.compress(p)

    half = (len(pieces) + 1) // 2
    threads = [threading.Thread(target=work, args=(s,)) for s in (pieces[:half], pieces[half:])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def compress_two_threads(pieces: Sequence[memoryview], level: int) -> None:
    def work(part: Sequence[memoryview]) -> None:
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
        for p in part:
            cctx.compress(p)

    half = (len(pieces) + 1) // 2
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(work, (pieces[:half], pieces[half:])))


def stored_pieces(pieces: Sequence[memoryview], level: int) -> list[tuple[bool, bytes]]:
    """The pieces as cas stores them: (compressed?, body)."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    out = []
    for p in pieces:
        packed = cctx.compress(p)
        if len(packed) <= len(p) * (1 - codec.MIN_SAVING):
            out.append((True, packed))
        else:
            out.append((False, bytes(p)))
    return out


def decompress_hash_one_thread(stored: Sequence[tuple[bool, bytes]]) -> None:
    dctx = zstandard.ZstdDecompressor()
    for packed, body in stored:
        raw = dctx.decompress(body) if packed else body
        blake3.blake3(raw).digest()


# -- cas ------------------------------------------------------------------------------


def stream_out(space: ObjectSpace, oid: str) -> int:
    n = 0
    with space.open(oid) as f:
        while chunk := f.read(MIB):
            n += len(chunk)
    return n


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def git_hash_object(corpus: Path, repo: Path, r: Rounds) -> int:
    """Time ``git hash-object -w`` in a fresh repository; return the object's size."""
    fresh(repo)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = {**os.environ, "GIT_DIR": str(repo / ".git")}
    out: list[str] = []
    r.run("git", lambda: out.append(subprocess.run(
        ["git", "hash-object", "-w", str(corpus)], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()))  # fmt: skip
    sha = out[0]
    return (repo / ".git" / "objects" / sha[:2] / sha[2:]).stat().st_size


# -- where the time goes --------------------------------------------------------------


def put_stages(corpus: Path, level: int, work: Path, r: Rounds) -> list[bytes]:
    """Each stage of a new put_file alone, on one thread unless said; returns the chunks."""
    params = ObjectSpace.from_url(fresh(work / "stages"), fsync=False).params
    chunks: list[bytes] = []

    def cut_all() -> None:
        with open(corpus, "rb") as f:
            for _ in cut(b"", f, params):
                pass  # dropped at once, as the pipeline does: no page faults for a kept copy

    with open(corpus, "rb") as f:
        chunks.extend(cut(b"", f, params))
    paths = [object_path(blob_id(c)) for c in chunks]

    def prehash() -> None:
        with open(corpus, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            blake3.blake3(mm, max_threads=blake3.blake3.AUTO).digest()

    def total() -> None:
        h = blake3.blake3()
        for c in chunks:
            h.update(c)
        h.digest()

    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    encoded: list[bytes] = []

    def encode() -> None:
        encoded[:] = [codec.encode("blob", c, level) for c in chunks]

    def write(fsync: bool) -> None:
        storage = LocalStorage(fresh(work / "stages"), fsync=fsync)
        for path, e in zip(paths, encoded, strict=True):
            storage.write_atomic(path, e)

    r.run("stage cut", cut_all, repeat=3)
    r.run("stage prehash", prehash, repeat=3)
    r.run("stage total", total, repeat=3)
    r.run("stage chunk ids", lambda: [blob_id(c) for c in chunks], repeat=3)
    r.run("stage compress", lambda: [cctx.compress(c) for c in chunks], repeat=3)
    r.run("stage encode", encode, repeat=3)
    r.run("stage write", lambda: write(False))
    r.run("stage write fsync", lambda: write(True))
    fresh(work / "stages")
    return chunks


def get_stages(space: ObjectSpace, oid: str, r: Rounds) -> None:
    """Each stage of a get alone, on one thread."""
    listing = ChunkList.parse(oid, space.read_object(oid)[1])
    paths = [object_path(cid) for cid, _ in listing.chunks]
    stored: list[bytes] = []
    plain: list[bytes] = []

    def read() -> None:
        stored[:] = [space.storage.read(p) for p in paths]

    def decode() -> None:
        plain[:] = [
            codec.decode(cid, s)[1] for (cid, _), s in zip(listing.chunks, stored, strict=True)
        ]

    def total() -> None:
        h = blake3.blake3()
        for c in plain:
            h.update(c)
        h.digest()

    def copy_out() -> None:
        buf = bytearray(MIB)
        for c in plain:
            view = memoryview(c)
            for i in range(0, len(view), MIB):
                part = view[i : i + MIB]
                buf[: len(part)] = part
                bytes(buf[: len(part)])

    r.run("gstage read", read, repeat=3)
    r.run("gstage decode", decode, repeat=3)
    r.run("gstage chunk ids", lambda: [blob_id(c) for c in plain], repeat=3)
    r.run("gstage total", total, repeat=3)
    r.run("gstage copy", copy_out, repeat=3)


PUT_STAGES = (
    ("stage cut", "read + FastCDC cut + copy out (chunking.cut, main thread)"),
    ("stage prehash", "BLAKE3 of the whole file first (put_file's dedup check)"),
    ("stage total", "BLAKE3 of the whole stream again (_put_chunked, main thread)"),
    ("stage chunk ids", "BLAKE3 of each chunk (blob_id)"),
    ("stage compress", "zstd compress of each chunk"),
    ("stage encode-", "header + copies in codec.encode (encode - compress)"),
    ("stage write", "write_atomic: temp file, write, rename (fsync=False)"),
)
GET_STAGES = (
    ("gstage read", "read each object file (storage.read)"),
    ("gstage decode", "header check + bounded zstd decompress (codec.decode)"),
    ("gstage chunk ids", "BLAKE3 of each chunk (verify)"),
    ("gstage total", "BLAKE3 of the whole content (main thread)"),
    ("gstage copy", "copy out to the caller in 1 MiB reads"),
)


def _stage_table(r: Rounds, n: int) -> str:
    cpu = dict(r.cpu)
    cpu["stage encode-"] = max(0.0, cpu["stage encode"] - cpu["stage compress"])
    limit_cpu = cpu["hash+zstd 2t"]
    rows: list[list[str]] = []

    def per_cpu(seconds: float) -> str:
        return fmt_rate(n / seconds / MB, "") if seconds > 0 else "-"

    def section(title: str, stages: Sequence[tuple[str, str]], whole: str, label: str) -> None:
        total = sum(cpu[key] for key, _ in stages)
        rows.append([title, "", "", ""])
        for key, what in stages:
            rows.append([f"  {what}", f"{cpu[key] * 1e3:,.0f}", per_cpu(cpu[key]),
                         f"{cpu[key] / total:.0%}"])  # fmt: skip
        rows.append(["  = sum of the stages, each alone", f"{total * 1e3:,.0f}", per_cpu(total),
                     "100%"])  # fmt: skip
        rows.append([f"  {label}, measured whole (pipelined, all threads)", f"{cpu[whole] * 1e3:,.0f}",
                     per_cpu(cpu[whole]), f"{cpu[whole] / total:.0%}"])  # fmt: skip

    section("put new (put_file, fsync=False)", PUT_STAGES, "put_file new", "put_file")
    rows.append(["  limit: BLAKE3 + zstd per 1 MiB piece, for comparison",
                 f"{limit_cpu * 1e3:,.0f}", per_cpu(limit_cpu), ""])  # fmt: skip
    rows.append(["  wall time of the writes alone: fsync=False / fsync=True",
                 f"{r.best['stage write'] * 1e3:,.0f} / {r.best['stage write fsync'] * 1e3:,.0f}",
                 "", ""])  # fmt: skip
    section("get (open(), streamed)", GET_STAGES, "get open()", "get")
    rows.append(["  limit: decompress + BLAKE3, for comparison",
                 f"{cpu['unzstd+b3 1t'] * 1e3:,.0f}", per_cpu(cpu["unzstd+b3 1t"]), ""])  # fmt: skip
    return table(
        "  where the time goes: CPU time of each stage alone, all threads, best of rounds",
        ["", "CPU ms", "MB/cpu-s", "share"],
        rows,
    )


# -- the run --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, return the figures (MB/s and ratios)."""
    ap = argparse.ArgumentParser(prog="python -m bench.bench_objects", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--size-mib", type=int, default=256, help="corpus size (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many (default 3)")
    ap.add_argument("--no-stages", action="store_true", help="skip the stage breakdown")
    args = ap.parse_args(argv)
    with workdir("cas-bench-objects-") as work:
        return _run(work, args.size_mib * MIB, max(1, args.rounds), not args.no_stages)


def _run(work: Path, size: int, rounds: int, stages: bool) -> dict[str, Any]:
    level = codec.DEFAULT_LEVEL
    corpus = work / "corpus.bin"
    print(f"objects benchmark: {size / MIB:,.0f} MiB mixed corpus, zstd level {level}, "
          f"{os.cpu_count()} cores, best of {rounds} rounds, work folder {work}")  # fmt: skip
    gen = timed(lambda: write_corpus(corpus, size))
    data = corpus.read_bytes()
    n = len(data)
    pieces = pieces_of(data)
    stored = stored_pieces(pieces, level)
    print(f"  (corpus written in {gen:.1f} s, not counted; zstd {level} keeps "
          f"{sum(len(b) for _, b in stored) / n:.2f} of it, {_text_ratio(data, level):.2f} of its text)")  # fmt: skip

    r = Rounds()
    sizes: dict[str, int] = {}
    want = blake3.blake3(data).hexdigest()
    get_root = work / "store-get"
    ObjectSpace.from_url(get_root, fsync=False).put_file(corpus)
    slow_rounds = min(rounds, 2)  # git and fsync=True are slow: best of 2
    for i in range(rounds):
        # limits, in memory; the quick ones several times a round
        r.run("hash+zstd 2t", lambda: hash_compress_two_threads(pieces, level))
        r.run("zstd 2t", lambda: compress_two_threads(pieces, level))
        r.run(
            "b3 2t", lambda: blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest(), repeat=5
        )
        r.run("b3 1t", lambda: blake3.blake3(data).digest(), repeat=3)
        r.run("unzstd+b3 1t", lambda: decompress_hash_one_thread(stored), repeat=3)

        # put of new data, into a fresh store each time
        space = ObjectSpace.from_url(fresh(work / "store"), fsync=False)
        r.run("put_file new", partial(_put_file, space, corpus, want))
        sizes["cas"] = tree_bytes(work / "store" / "objects")
        # put of existing data: the same file again, then the same bytes as a stream
        r.run("put_file existing", partial(_put_file, space, corpus, want), repeat=5)
        r.run("put stream existing", partial(_put_stream, space, corpus, want))
        space = ObjectSpace.from_url(fresh(work / "store"), fsync=False)
        r.run("put stream new", partial(_put_stream, space, corpus, want))

        # get, from one store written before the rounds
        getter = ObjectSpace.from_url(get_root, fsync=False, create=False)
        r.run("get open()", partial(_get_stream, getter, want, n), repeat=3)
        r.run("get get()", partial(_get_bytes, getter, want, n))

        if i < slow_rounds:
            space = ObjectSpace.from_url(fresh(work / "store"), fsync=True)
            r.run("put_file new fsync", partial(_put_file, space, corpus, want))
            sizes["git"] = git_hash_object(corpus, work / "git", r)
            exe = shutil.which("b3sum")
            if exe is not None:
                r.run(
                    "b3sum",
                    partial(subprocess.run, [exe, str(corpus)], check=True, capture_output=True),
                )
            if stages:
                put_stages(corpus, level, work, r)
                get_stages(getter, want, r)
        fresh(work / "store")
        fresh(work / "git")
    return _report(r, n, sizes, stages)


def _put_file(space: ObjectSpace, corpus: Path, want: str) -> None:
    _check_id(space.put_file(corpus), want)


def _put_stream(space: ObjectSpace, corpus: Path, want: str) -> None:
    with open(corpus, "rb") as f:
        _check_id(space.put(f), want)


def _get_stream(space: ObjectSpace, oid: str, n: int) -> None:
    _check_len(stream_out(space, oid), n)


def _get_bytes(space: ObjectSpace, oid: str, n: int) -> None:
    _check_len(len(space.get(oid)), n)


def _check_id(got: str, want: str) -> None:
    if got != want:
        raise SystemExit(f"cas returned id {got}, but the corpus's b3sum is {want}")


def _check_len(got: int, want: int) -> None:
    if got != want:
        raise SystemExit(f"get returned {got} bytes, expected {want}")


def _text_ratio(data: bytes, level: int) -> float:
    """zstd ratio of the corpus's second 8 MiB segment (text)."""
    seg = data[8 * MIB : 16 * MIB]
    return len(zstandard.ZstdCompressor(level=level).compress(seg)) / max(1, len(seg))


def _report(r: Rounds, n: int, sizes: dict[str, int], stages: bool) -> dict[str, Any]:
    rate = {k: r.rate(k, n) for k in r.best}
    crate = {k: r.cpu_rate(k, n) for k in r.cpu}

    def row(label: str, key: str, vs: str = "", limit: str | None = None,
            target: float | None = None) -> list[str]:  # fmt: skip
        cells = [label, fmt_rate(rate[key]), fmt_rate(crate[key], "")]
        if limit is None:
            return cells + ["", "", "", "", ""]
        return cells + _versus(key, vs, limit, target)

    def also(vs: str, key: str, limit: str, target: float | None) -> list[str]:
        return ["", "", ""] + _versus(key, vs, limit, target)

    def _versus(key: str, vs: str, limit: str, target: float | None) -> list[str]:
        ratio = rate[key] / rate[limit]
        cpu_ratio = crate[key] / crate[limit]
        goal = f">= {target:g}" if target is not None else ""
        verdict = mark(ratio >= target) if target is not None else ""
        return [vs, f"{ratio:.2f}x", goal, verdict, f"{cpu_ratio:.2f}x"]

    limits = [
        row("BLAKE3 + zstd, 2 threads, 1 MiB pieces", "hash+zstd 2t"),
        row("zstd only, 2 threads", "zstd 2t"),
        row("BLAKE3 only, 2 threads (AUTO)", "b3 2t"),
        row("BLAKE3 only, 1 thread", "b3 1t"),
        row("zstd decompress + BLAKE3, 1 thread", "unzstd+b3 1t"),
        row("git hash-object -w (peer: SHA-1 + zlib)", "git"),
    ]
    if "b3sum" in rate:
        limits.append(row("b3sum (peer)", "b3sum"))
    hz, b2, dz = "hash+zstd 2t", "b3 2t", "unzstd+b3 1t"
    figures = [
        row("put new: put_file", "put_file new", "hash+zstd", hz, TARGET_PUT_NEW),
        also("git", "put_file new", "git", TARGET_VS_GIT),
        row("put new: put(stream)", "put stream new", "hash+zstd", hz, TARGET_PUT_NEW),
        also("git", "put stream new", "git", TARGET_VS_GIT),
        row("put new: put_file, fsync=True", "put_file new fsync", "hash+zstd", hz),
        also("git", "put_file new fsync", "git", None),
        row("put existing: put_file", "put_file existing", "BLAKE3 2t", b2, TARGET_PUT_EXISTING),
        row("put existing: put(stream)", "put stream existing", "BLAKE3 2t", b2),
        row("get: open(), read 1 MiB at a time", "get open()", "unzstd+b3", dz, TARGET_GET),
        row("get: get() -> bytes", "get get()", "unzstd+b3", dz, TARGET_GET),
    ]
    header = ["", "MB/s", "MB/cpu-s", "vs", "ratio", "target", "", "cpu ratio"]
    print()
    print(
        table(
            "  limits, same data, in memory (best of rounds)", header[:3], [c[:3] for c in limits]
        )
    )
    print()
    print(table(
        "  cas ObjectSpace, local folder, fsync=False unless said",
        header,
        figures,
        notes=[
            f"stored size / raw: cas {sizes['cas'] / n:.2f}, git {sizes['git'] / n:.2f} "
            "(zstd 3 on ~1.25 MiB chunks vs zlib on the whole file)",
            f"the hash+zstd limit itself is {rate[hz] / rate['git']:.1f}x git here: put new >= "
            f"{TARGET_VS_GIT:g}x git needs >= {TARGET_VS_GIT * rate['git'] / rate[hz]:.2f}x the limit",
            "MB/s = 10^6 bytes of content per wall-clock second; ratio = MB/s over the limit's",
            "MB/s (the target). MB/cpu-s = per CPU-second, all threads: its ratio, cpu ratio,",
            "hardly moves with machine load and shows how much more work cas does than the limit.",
        ],
    ))  # fmt: skip
    if stages:
        print()
        print(_stage_table(r, n))
    result: dict[str, Any] = {
        f"{k} MB/s": v for k, v in rate.items() if not k.startswith(("stage", "gstage"))
    }
    result["stored ratio cas"] = sizes["cas"] / n
    result["stored ratio git"] = sizes["git"] / n
    result["pass"] = {
        "put new vs limit": rate["put_file new"] >= TARGET_PUT_NEW * rate[hz],
        "put new vs git": rate["put_file new"] >= TARGET_VS_GIT * rate["git"],
        "put existing": rate["put_file existing"] >= TARGET_PUT_EXISTING * rate[b2],
        "get": rate["get open()"] >= TARGET_GET * rate[dz],
    }
    return result


if __name__ == "__main__":
    main()
