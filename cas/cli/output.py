"""What the ``cas`` command line shows: results on stdout, errors and progress on stderr.

Git's habits: quiet by default, one JSON document with ``--json``, progress only when
stderr is a terminal (a pipe or a log file never sees a bar or an escape code).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

#: ``--grace`` / ``--retention`` units, git-style: ``0``, ``90s``, ``30m``, ``12h``, ``1d``, ``2w``.
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\Z")


def duration(text: str) -> float:
    """Seconds in ``text`` (an argparse type: a bad value is a usage error, exit 2)."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h, d or w (0, 90s, 30m, 12h, 1d, 2w)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def show_duration(seconds: float) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def human_size(n: int | float) -> str:
    """Bytes for people: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def local_time(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def short(oid: str | None) -> str:
    return "(none)" if oid is None else oid[:12]


class Output:
    """Where a command writes: plain lines for people, or one JSON document."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.documented = False  # a JSON document was printed

    def line(self, text: str = "") -> None:
        """A line for people (suppressed with ``--json``)."""
        if not self.json:
            sys.stdout.write(text + "\n")

    def document(self, value: Any) -> None:
        """The one JSON document of a ``--json`` run."""
        if self.json:
            sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
            self.documented = True

    def note(self, text: str) -> None:
        """A message for people on stderr (warnings, hints), also with ``--json``."""
        sys.stderr.write(f"cas: {text}\n")


class Progress:
    """A rich progress display on stderr while long work runs, only on a terminal.

    Call it as ``progress(what, done, total=None)``; each ``what`` gets its own line.
    The display is transient: when the work ends it disappears, leaving only results.
    """

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich import progress as rp
            from rich.console import Console

            self._bar = rp.Progress(
                rp.SpinnerColumn(),
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.TextColumn("{task.completed:>10,.0f}{task.fields[of]}"),
                rp.TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __call__(self, what: str, done: int, total: int | None = None) -> None:
        if self._bar is None:
            return
        of = "" if total is None else f" / {total:,}"
        task = self._tasks.get(what)
        if task is None:
            task = self._bar.add_task(f"{self.label}: {what}", total=total, of=of)
            self._tasks[what] = task
        self._bar.update(task, completed=done, total=total, of=of)


@contextmanager
def progress(label: str, enabled: bool | None = None) -> Iterator[Progress]:
    with Progress(label, enabled) as bar:
        yield bar
