"""Who holds a lock: the owner record written into locks and history entries, and
how a stuck one is described to a human (owner, liveness, the command that clears it).
"""

from __future__ import annotations

import getpass
import os
import socket


def hostname() -> str:
    """This host's name, as recorded in locks and history entries."""
    return socket.gethostname()


def default_identity() -> str:
    """``user@host`` for history entries, from the login name and the host name."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{hostname()}"


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` of this host is running (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # state is the field after the parenthesised command name
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def describe_owner(pid: object, host: object) -> tuple[str, bool | None]:
    """``("pid@host", alive)``; alive is None when the owner is on another host or unknown."""
    if not isinstance(pid, int) or not isinstance(host, str):
        return "an unknown owner", None
    if host != hostname():
        return f"{pid}@{host}", None
    return f"{pid}@{host}", pid_alive(pid)


def quote(path: str) -> str:
    """``path`` in single quotes for a POSIX shell."""
    return "'" + path.replace("'", "'\"'\"'") + "'"


def remove_command(protocol: str, path: str) -> str:
    """The shell command that deletes ``path`` on a filesystem of ``protocol``."""
    if protocol in ("file", "local"):
        return f"rm {quote(path)}"
    url = f"{protocol}://{path}"
    return (
        'python -c "import fsspec; fs, p = fsspec.core.url_to_fs(' + repr(url) + '); fs.rm_file(p)"'
    )
