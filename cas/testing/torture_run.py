"""What a torture run is: its profile (``CAS_TORTURE``), its seed (``CAS_TORTURE_SEED``),
the command that reruns it, and the :class:`Outcome` a scenario returns."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    crash_runs: int
    conc_procs: int
    conc_saves: int
    gc_seconds: float
    gc_writers: int
    s3_crash_runs: int
    s3_conc_procs: int
    s3_conc_saves: int
    s3_gc_seconds: float
    fuzz_examples: int
    crash_group: int = 10  # runs sharing one store before a fresh one (bounds disk and fsck time)


PROFILES = {
    "short": Profile("short", 16, 4, 60, 10.0, 2, 3, 3, 15, 6.0, 60),
    "full": Profile("full", 200, 8, 500, 60.0, 3, 200, 4, 60, 20.0, 600),
}


def profile() -> Profile:
    name = os.environ.get("CAS_TORTURE", "short") or "short"
    if name not in PROFILES:
        raise ValueError(f"CAS_TORTURE={name!r}: use one of {sorted(PROFILES)}")
    return PROFILES[name]


def session_seed() -> int:
    """``CAS_TORTURE_SEED`` or a fresh random seed (printed with every failure)."""
    text = os.environ.get("CAS_TORTURE_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 10**9)


def repro(test: str, seed: int) -> str:
    mode = os.environ.get("CAS_TORTURE", "short") or "short"
    return (
        f"reproduce: CAS_TORTURE={mode} CAS_TORTURE_SEED={seed} "
        f".venv/bin/python -m pytest -q tests/test_torture.py -k {test}"
    )


@dataclass(slots=True)
class Outcome:
    """What a scenario saw: figures to print, failures (empty when all held)."""

    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        if len(self.failures) < 40:
            self.failures.append(text)
