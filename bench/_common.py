"""Shared helpers of the benchmark suite: corpus, timing, tables.

The machine is shared, so absolute times drift from run to run: every benchmark
measures its limits in the same run on the same data and reports ratios. Repeated
measurements run in *rounds* (round 1: every measurement once, round 2: again, ...)
and keep each one's best, so a burst of load from another process hurts one round of
everything rather than every repetition of one figure.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MB = 1e6  # throughput is in MB/s (10^6 bytes), as b3sum, zstd and fio print it
MIB = 1 << 20


# -- timing -------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process (every thread) and of its finished children."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Rounds:
    """Best (least) wall time and CPU time per measurement over several rounds.

    CPU time (all threads, and child processes) barely moves with the load other
    processes put on the machine, so its ratios are the steady check of how much work
    a path does; wall time ratios say how well that work uses both cores.
    """

    best: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)

    def run(
        self,
        key: str,
        fn: Callable[[], object],
        *,
        setup: Callable[[], object] | None = None,
        teardown: Callable[[], object] | None = None,
        repeat: int = 1,
    ) -> float:
        """Time ``fn`` ``repeat`` times (``setup``/``teardown`` untimed, around each);
        keep the best wall and CPU times; return the last wall time."""
        seconds = 0.0
        for _ in range(repeat):
            if setup is not None:
                setup()
            try:
                c0 = cpu_seconds()
                t0 = time.perf_counter()
                fn()
                seconds = time.perf_counter() - t0
                cpu = cpu_seconds() - c0
            finally:
                if teardown is not None:
                    teardown()
            self.record(key, seconds, cpu)
        return seconds

    def record(self, key: str, seconds: float, cpu: float | None = None) -> None:
        self.best[key] = min(seconds, self.best.get(key, float("inf")))
        if cpu is not None:
            self.cpu[key] = min(cpu, self.cpu.get(key, float("inf")))
        self.runs[key] = self.runs.get(key, 0) + 1

    def rate(self, key: str, nbytes: int) -> float:
        """MB/s of the best run of ``key`` over ``nbytes``."""
        return nbytes / self.best[key] / MB

    def cpu_rate(self, key: str, nbytes: int) -> float:
        """MB per CPU-second of the least CPU any run of ``key`` used."""
        return nbytes / max(self.cpu[key], 1e-9) / MB


# -- tables -------------------------------------------------------------------------


def mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()
) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cols = list(zip(*([list(header)] + [list(r) for r in rows]), strict=True))
    widths = [max(len(c) for c in col) for col in cols]

    def line(cells: Sequence[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join(out).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    text = [title, line(header), rule, *(line(r) for r in rows)]
    text += [f"  {n}" for n in notes]
    return "\n".join(text)


def fmt_rate(value: float, unit: str = "MB/s") -> str:
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:,.1f} {unit}"


# -- temporary folders ----------------------------------------------------------------


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temporary folder under /tmp (or ``$CAS_BENCH_TMP``), removed afterwards."""
    base = os.environ.get("CAS_BENCH_TMP") or ("/tmp" if os.path.isdir("/tmp") else None)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh(path: Path) -> Path:
    """Remove ``path`` if present; return it (a store folder for the next round)."""
    shutil.rmtree(path, ignore_errors=True)
    return path


# -- the corpus ---------------------------------------------------------------------

SEGMENT = 8 * MIB  # random and text alternate in segments of this size

_POW10 = {w: 10 ** np.arange(w - 1, -1, -1, dtype=np.int64) for w in range(1, 11)}
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF")
_COUNTRIES = tuple(
    [
        "US",
        "DE",
        "FR",
        "GB",
        "JP",
        "CH",
        "IT",
        "ES",
        "NL",
        "SE",
        "NO",
        "DK",
        "FI",
        "PL",
        "CZ",
        "AT",
        "BE",
        "IE",
        "PT",
        "GR",
        "CA",
        "MX",
        "BR",
        "AR",
        "AU",
        "NZ",
        "IN",
        "CN",
        "KR",
        "SG",
    ]
)
_CATEGORIES = tuple(
    [
        "grocery",
        "electronics",
        "books",
        "toys",
        "garden",
        "apparel",
        "sports",
        "beauty",
        "health",
        "automotive",
        "pets",
        "music",
        "office",
        "travel",
        "dining",
        "fuel",
        "utilities",
        "rent",
        "insurance",
        "software",
    ]
)
_STATUS = ("ok",) * 6 + ("retry", "declined", "error")


def _digits(x: np.ndarray, width: int) -> np.ndarray:
    return (48 + (x.astype(np.int64)[:, None] // _POW10[width]) % 10).astype(np.uint8)


def _choice(rng: np.random.Generator, words: Sequence[str], n: int) -> np.ndarray:
    width = max(map(len, words))
    table_ = np.zeros((len(words), width), np.uint8)  # NUL padding is dropped below
    for i, word in enumerate(words):
        table_[i, : len(word)] = np.frombuffer(word.encode(), np.uint8)
    return table_[rng.integers(0, len(words), n)]


def _lit(text: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text.encode(), np.uint8), (n, len(text)))


def csv_text(rng: np.random.Generator, rows: int, first_row: int) -> bytes:
    """Transaction-log CSV rows, unique (row ids run on): zstd 3 keeps ~35% of it,
    like real CSV and logs (random ids, amounts and scores; repeated words and dates)."""
    n = rows
    row = np.arange(first_row, first_row + n, dtype=np.int64)
    tod = (40_000 + row // 7) % 86_400
    parts = [
        _digits(row % 10**9, 9), _lit(",2026-11-23T", n),
        _digits(tod // 3600, 2), _lit(":", n), _digits(tod // 60 % 60, 2), _lit(":", n),
        _digits(tod % 60, 2), _lit(".", n), _digits(rng.integers(0, 1000, n), 3), _lit("Z,", n),
        _HEX[rng.integers(0, 16, (n, 8), dtype=np.uint8)], _lit(",u", n),
        _digits(rng.integers(0, 200_000, n), 6), _lit(",", n),
        _digits(rng.integers(0, 100_000, n), 5), _lit(".", n), _digits(rng.integers(0, 100, n), 2),
        _lit(",", n), _choice(rng, _CURRENCIES, n), _lit(",", n), _choice(rng, _COUNTRIES, n),
        _lit(",", n), _choice(rng, _CATEGORIES, n), _lit(",0.", n),
        _digits(rng.integers(0, 10**6, n), 6), _lit(",", n), _choice(rng, _STATUS, n), _lit("\n", n),
    ]  # fmt: skip
    flat = np.concatenate(parts, axis=1).ravel()
    text: bytes = flat[flat != 0].tobytes()
    return text


def write_corpus(path: Path, size: int, seed: int = 20261123) -> dict[str, int]:
    """Write the mixed corpus: segments of random bytes and CSV text alternate, half
    each. Returns the byte counts of each half."""
    rng = np.random.default_rng(seed)
    counts = {"random": 0, "text": 0}
    next_row = 0
    with open(path, "wb") as f:
        written = 0
        i = 0
        while written < size:
            want = min(SEGMENT, size - written)
            if i % 2 == 0:
                data = rng.bytes(want)
                counts["random"] += want
            else:
                rows = want // 80 + 1000
                data = csv_text(rng, rows, next_row)[:want]
                next_row += rows
                counts["text"] += len(data)
            f.write(data)
            written += len(data)
            i += 1
    return counts
