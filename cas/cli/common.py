"""What every ``cas`` command shares: exit codes, the usage error, opening the root,
``key=value`` arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Final

from cas.api.artifact_store import ArtifactStore, open_store
from cas.cli.output import Output
from cas.errors import CasError, ObjectNotFound

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


def resolve(store: ArtifactStore, text: str) -> tuple[str, str | None]:
    """(id, name or None) of a name or id, and as git does, of a unique prefix of an
    artifact id (4 hex digits or more, as ``cas ls -l``, ``log`` and ``search`` print
    them), tried only when no name is ``text``."""
    try:
        return store.resolve(text)
    except ObjectNotFound:
        if not 4 <= len(text) < 64 or text.strip("0123456789abcdef"):
            raise
    found = store.repo.index.catalog.ids_with_prefix(text, limit=3)
    if len(found) == 1:
        return found[0], None
    if found:
        listed = ", ".join(f[:16] for f in found[:2]) + (", ..." if len(found) > 2 else "")
        raise ObjectNotFound(text, f"short id {text!r} is ambiguous ({listed}): give more digits")
    raise ObjectNotFound(
        text, f"no artifact named {text!r} and no artifact id starts with it in {store.url} "
        "('cas ls' lists names, 'cas search' ids)",
    )  # fmt: skip


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
