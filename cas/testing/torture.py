"""The reliability ("torture") suite: one name for its parts, which live in four modules.

- :mod:`cas.testing.torture_run`: profiles, seeds, the rerun command, :class:`Outcome`.
- :mod:`cas.testing.torture_workers`: the worker processes (a writer killed at a random
  moment, concurrent writers, writers and gc beside each other), their deterministic
  content, their reports, and how drivers start and reap them.
- :mod:`cas.testing.torture_checks`: where a store lives (:class:`Target`) and what must
  hold of it after a crash or a race.
- :mod:`cas.testing.torture_crash` and :mod:`cas.testing.torture_races`: the scenarios
  (``docs/reliability.md`` says what each proves):

  - :func:`crash_scenario`: a writer SIGKILLed at a random moment, N times.
  - :func:`concurrency_scenario`: P processes x S saves on shared names and content.
  - :func:`gc_scenario`: gc looping beside writers that save and delete.

Drivers never assert: they return an :class:`Outcome` whose ``failures`` say what
broke and how to reproduce it (seed, run, the kept store), and whose ``figures`` the
tests print. ``CAS_TORTURE=full`` picks the long :data:`PROFILES` entry,
``CAS_TORTURE_SEED`` fixes the seed.
"""

from __future__ import annotations

import sys

from cas.testing.torture_checks import (
    Target,
    check_objects,
    check_saves,
    check_store,
    clear_stale_lock,
    object_files,
)
from cas.testing.torture_crash import crash_scenario
from cas.testing.torture_races import concurrency_scenario, gc_scenario
from cas.testing.torture_run import PROFILES, Outcome, Profile, profile, repro, session_seed
from cas.testing.torture_workers import (
    CRASH_NAMES,
    GC_NAMES,
    ROLES,
    SHARED_NAMES,
    MiB,
    Report,
    b3,
    conc_writer,
    content,
    crash_writer,
    gc_loop,
    gc_writer,
    main,
    open_root,
    read_report,
    reaped,
    spawn,
    started,
    tail,
    wait_for,
)

__all__ = [
    "CRASH_NAMES",
    "GC_NAMES",
    "PROFILES",
    "ROLES",
    "SHARED_NAMES",
    "MiB",
    "Outcome",
    "Profile",
    "Report",
    "Target",
    "b3",
    "check_objects",
    "check_saves",
    "check_store",
    "clear_stale_lock",
    "conc_writer",
    "concurrency_scenario",
    "content",
    "crash_scenario",
    "crash_writer",
    "gc_loop",
    "gc_scenario",
    "gc_writer",
    "main",
    "object_files",
    "open_root",
    "profile",
    "read_report",
    "reaped",
    "repro",
    "session_seed",
    "spawn",
    "started",
    "tail",
    "wait_for",
]

if __name__ == "__main__":  # workers used to start as ``python -m cas.testing.torture``
    sys.exit(main(sys.argv))
