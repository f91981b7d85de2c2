"""Workers for multi-process race tests. They live in the package, not in tests/, so a
spawned child process can import them whatever pytest's import mode is."""

from __future__ import annotations

from typing import Any

from cas.refs.cloud import conditional_for
from cas.refs.conditional import Conditional


def increment(cond: Conditional, path: str, times: int) -> int:
    """Add 1 to the counter at ``path`` ``times`` times by compare-and-swap; return how
    many races this caller lost (and retried)."""
    lost = 0
    for _ in range(times):
        while True:
            got = cond.read(path)
            assert got is not None
            if cond.replace(path, b"%d" % (int(got[0]) + 1), got[1]):
                break
            lost += 1
    return lost


def increment_on_server(server: Any, path: str, times: int) -> int:
    """:func:`increment` in a fresh process, on a fresh filesystem for ``server``."""
    return increment(conditional_for(server.filesystem()), path, times)
