"""Checks the torture scenarios share: where a scenario's store lives (:class:`Target`),
and what must hold of a store after a crash or a race."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cas.testing.torture_run import Outcome
from cas.testing.torture_workers import b3


@dataclass(frozen=True, slots=True)
class Target:
    """Where a scenario's store lives: a folder or an object-store URL."""

    url: str
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what a shell command needs (S3)
    local: bool = True


def object_files(store: Any) -> Iterator[tuple[str, str]]:
    """(relative path, file name) of every file under objects/, dot-files included."""
    for rel, _ in store.storage.walk("objects"):
        yield rel, rel.rsplit("/", 1)[-1]


def check_objects(store: Any) -> tuple[int, int, list[str]]:
    """Read every object under its final name: (objects, temp files, problems). A chunk
    list is read whole, so a list whose chunks are not all there is a problem."""
    from cas.errors import CasError
    from cas.objects.ids import is_id

    objects = temp = 0
    problems: list[str] = []
    for rel, base in object_files(store):
        if base.startswith("."):
            temp += 1
            continue
        parts = rel.split("/")
        if len(parts) != 3 or not is_id(parts[1] + parts[2]):
            problems.append(f"a file that is not an object under objects/: {rel}")
            continue
        objects += 1
        oid = parts[1] + parts[2]
        try:
            kind, _ = store.space.read_object(oid)
            if kind == "chunks":
                store.space.get(oid)
        except CasError as exc:
            problems.append(f"object {oid} is visible but not whole: {exc}")
    return objects, temp, problems


def check_store(store: Any, out: Outcome, where: str, *, killed: bool = False) -> None:
    """fsck clean, every name loads, every journal entry reads. After a kill, fsck may
    report the update the dead writer claimed and never published (what the next writer
    is then told to clear): only with its dead owner and the command that clears it."""
    from cas.admin import fsck
    from cas.errors import CasError

    report = fsck.check(store)
    for problem in report.problems:
        if (
            killed
            and problem.kind == "unpublished-update"
            and "no longer running" in problem.detail
            and "roll the update back with: " in problem.detail
        ):
            out.figures["unpublished_reported_by_fsck"] = (
                out.figures.get("unpublished_reported_by_fsck", 0) + 1
            )
            continue
        out.fail(f"{where}: fsck: {problem.describe()}")
    for name, rid in store.refs.items():
        try:
            store.load(rid)
        except CasError as exc:
            out.fail(f"{where}: name {name} -> {rid} does not load: {exc}")
    try:
        for _ in store.journal.read(store.journal.stamps()):
            pass
    except CasError as exc:
        out.fail(f"{where}: the catalog journal does not read: {exc}")


def check_saves(store: Any, saves: list[dict[str, Any]], out: Outcome, where: str) -> int:
    """Every reported save loads by id, verified, and is in its name's history."""
    from cas.errors import CasError

    histories: dict[str, set[str | None]] = {}
    checked = 0
    for ev in saves:
        rid = ev["id"]
        try:
            value = store.load(rid)
            meta = store.get_metadata(rid)
        except CasError as exc:
            out.fail(f"{where}: reported save {ev['name']} -> {rid} does not load: {exc}")
            continue
        if b3(value) != ev["b3"] or meta["content_id"] != ev["b3"]:
            out.fail(f"{where}: save {ev['name']} -> {rid} loads other bytes than were saved")
        if ev["name"] not in histories:
            histories[ev["name"]] = {e.new for e in store.refs.log(ev["name"])}
        if rid not in histories[ev["name"]]:
            out.fail(
                f"{where}: save {ev['name']} -> {rid} returned but is not in the name's history"
            )
        checked += 1
    return checked


def clear_stale_lock(message: str, target: Target, out: Outcome, where: str) -> str:
    """Run the command a RefLocked message gives; return what kind of lock it was."""
    marker = "clear it with: "
    if marker not in message:
        out.fail(f"{where}: a stale-lock error does not say how to clear it: {message}")
        return "unclear"
    command = message.split(marker, 1)[1].strip()
    if target.local:
        argv = shlex.split(command)
        if argv[:1] != ["rm"] or len(argv) != 2 or not argv[1].startswith(target.url + "/"):
            out.fail(f"{where}: the command to clear a lock is not 'rm <a file of the store>': {command}")  # fmt: skip
            return "unclear"
        if argv[1] not in message.split(marker, 1)[0]:
            out.fail(f"{where}: the error does not name the file its command removes: {message}")
    # As a user would run it: in a shell whose `python` is the one cas is installed in,
    # with the credentials and endpoint of the store's service in the environment.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, **target.env, "PATH": path}
    done = subprocess.run(command, shell=True, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        out.fail(f"{where}: the command the error gave failed ({done.returncode}): {command}\n{done.stderr[-800:]}")  # fmt: skip
    kind = "lock file" if ".lock" in command else "unpublished update"
    if "no longer running" in message:
        return kind
    # A writer killed between creating its lock file (O_EXCL) and writing its pid into
    # it leaves an empty lock: the error still names it and the command, but cannot
    # say that its owner is dead.
    return f"{kind}, owner unknown"
