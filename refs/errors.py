"""The exception tree of refs.

::

    RefError
     ├── InvalidRefName  (also ValueError)  a name that breaks the check-ref-format rules
     ├── InvalidId       (also ValueError)  a value that is not a 64-char lowercase hex id
     ├── RefNotFound     (also KeyError)    a ref (or a point of its history) that is not there
     ├── RefConflict                        a compare-and-swap lost: the ref is not what was expected
     │    └── NameConflict                  'a' and 'a/b' cannot both be refs
     └── RefLocked                          a lock (or an unpublished update) holds the ref; the
                                            message names its owner, age and how to clear it

I/O failures of the filesystem are not translated: they stay the builtin ``OSError``
subclasses fsspec raises, so a network error is never mistaken for "absent".
"""

from __future__ import annotations


class RefError(Exception):
    """Root of every error refs raises on purpose."""


class InvalidRefName(RefError, ValueError):
    """A name that breaks git's check-ref-format rules; ``reason`` says which one."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid ref name {name!r}: {reason}")


class InvalidId(RefError, ValueError):
    """A value that is not a 64-character lowercase hex id."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(f"not a 64-character lowercase hex id: {value!r}")


class RefNotFound(RefError, KeyError):
    """A ref that does not exist, or a point of history that is no longer kept."""

    def __init__(self, name: str, message: str | None = None) -> None:
        self.name = name
        super().__init__(message or f"ref {name!r} does not exist")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _show(value: str | None) -> str:
    return "absent" if value is None else value


class RefConflict(RefError):
    """A compare-and-swap lost: ref ``name`` was ``actual``, not ``expected``.

    ``None`` for either value means "absent".
    """

    def __init__(
        self, name: str, expected: str | None, actual: str | None, message: str | None = None
    ) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(
            message
            or f"ref {name!r} was not updated: expected {_show(expected)}, found {_show(actual)}"
        )


class NameConflict(RefConflict):
    """Ref ``name`` cannot be created because ref ``other`` is its parent or its child.

    Like git, refs form a tree of files: ``a`` and ``a/b`` cannot both exist.
    ``other`` is None when what is in the way is not a ref (a folder of other files).
    """

    def __init__(self, name: str, other: str | None) -> None:
        self.other = other
        in_the_way = (
            "a folder of other files is in its place"
            if other is None
            else (f"ref {other!r} exists (a ref cannot also be a folder of refs)")
        )
        super().__init__(
            name,
            None,
            None,
            f"cannot create ref {name!r}: {in_the_way}; delete or rename one of them",
        )


class RefLocked(RefError):
    """A write could not proceed: a lock, or an update never finished, holds the ref.

    Attributes: ``path`` (the lock file or the unpublished history entry), ``owner``
    (``pid@host`` or ``"unknown"``), ``age`` (seconds), ``owner_alive`` (``True``,
    ``False``, or ``None`` when it cannot be told from this host), ``command`` (the
    shell command that clears it once no writer is active).
    """

    def __init__(
        self,
        what: str,
        path: str,
        owner: str,
        age: float,
        owner_alive: bool | None,
        command: str,
    ) -> None:
        self.path = path
        self.owner = owner
        self.age = age
        self.owner_alive = owner_alive
        self.command = command
        if owner_alive is None:
            state = "its owner runs on another host or is unknown"
        elif owner_alive:
            state = "its owner is still running"
        else:
            state = "its owner is no longer running"
        super().__init__(
            f"{what}: {path} is held by {owner}, {age:.1f}s old ({state}); "
            f"if no writer is active, clear it with: {command}"
        )
