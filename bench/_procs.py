"""Child processes for the benchmarks: cas's command line and the peers (git, restic).

Each run is timed from the parent (start-up included: it is what a user waits for),
bounded by a time limit (a run over it is killed, and reported as "over N s", so a
slow path costs the suite a known amount of time, never an unknown one), and measured
through ``os.wait4``: the child's own CPU seconds, not those of every child the suite
ran so far (which ``RUSAGE_CHILDREN`` gives). Not its peak RSS: Linux carries the
``ru_maxrss`` of the forked copy of this (large) process across ``exec``, so a child
that wants its peak known prints its own ``VmHWM`` (:data:`PEAK_RSS_SNIPPET`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TAIL = 300  # characters of a failing child's stderr kept for the report


@dataclass(frozen=True)
class Done:
    """How one child process went."""

    argv: tuple[str, ...]
    seconds: float  # wall time; the limit when it was killed
    ok: bool  # exited 0 within the limit
    timed_out: bool
    cpu: float  # user + system seconds of the child
    stdout: str
    why: str = ""  # when not ok: "over 60 s (killed)" or "exit 2: <stderr tail>"

    def check(self) -> Done:
        """Self, or SystemExit naming the command when it failed (not a time-out)."""
        if not self.ok and not self.timed_out:
            raise SystemExit(f"{' '.join(self.argv[:4])} ... failed: {self.why}")
        return self


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> Done:
    """Run ``argv`` to its end or to ``timeout`` seconds (then kill it, by its pid)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            # its own session: the group is this child and whatever it started
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer is not None:
                timer.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: keep Popen quiet
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    cpu = usage.ru_utime + usage.ru_stime
    if killed.is_set():
        assert timeout is not None
        return Done(tuple(argv), timeout, False, True, cpu, stdout,
                    f"over {timeout:,.0f} s (killed)")  # fmt: skip
    if proc.returncode != 0:
        tail = " ".join(stderr.strip().split())[-_TAIL:]
        return Done(tuple(argv), seconds, False, False, cpu, stdout,
                    f"exit {proc.returncode}: {tail}")  # fmt: skip
    return Done(tuple(argv), seconds, True, False, cpu, stdout)


#: Python source that prints the process's peak resident set (bytes) as its last line.
PEAK_RSS_SNIPPET = """
with open("/proc/self/status") as _f:
    print(next(int(l.split()[1]) * 1024 for l in _f if l.startswith("VmHWM:")))
"""


def cas_command() -> list[str]:
    """The ``cas`` console script of this interpreter's environment (as users call it)."""
    script = Path(sys.executable).parent / "cas"
    if script.exists():
        return [str(script)]
    found = shutil.which("cas")
    if found is None:
        raise SystemExit("no 'cas' command next to this Python or on PATH (pip install -e .)")
    return [found]


def tool(name: str) -> str | None:
    """The path of a peer's program, or None when it is not installed."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/local/bin/{name}") if os.access(p, os.X_OK)), None
    )


def version(exe: str | None, *args: str) -> str:
    """The first line a program prints for ``--version`` (or ``args``), or why not."""
    if exe is None:
        return "not installed"
    try:
        done = subprocess.run([exe, *(args or ("--version",))], capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"does not run ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"
