"""What every ``cas`` command shares: exit codes, the usage error, opening the root,
``key=value`` arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Final

from cas.api.artifact_store import ArtifactStore, open_store
from cas.cli.output import Output
from cas.errors import CasError

DEFAULT_ROOT: Final = ".cas"
EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_ERROR: Final = 2

Command = Callable[[argparse.Namespace, Output], int]
#: How a module of commands adds one: ``add(name, run, help)`` returns its parser.
Add = Callable[[str, Command, str], argparse.ArgumentParser]


class UsageError(CasError):
    """A request that cannot be carried out as asked (exit 2, like argparse's errors)."""


def open_root(args: argparse.Namespace, *, create: bool = False) -> ArtifactStore:
    """The store at ``--root`` / ``CAS_ROOT``; only ``init`` (and pull) create one."""
    return open_store(args.root, create=create)


def key_values(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} is not key=value")
        out[key] = value
    return out


def positive(text: str) -> int:
    """A whole number >= 0 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value
