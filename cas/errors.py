"""The one exception tree of cas.

::

    CasError
     ├── ObjectNotFound        (also KeyError)    an object, name or id that is not there
 ├── IsAFolder             (also IsADirectoryError) a folder where a file was asked for
     ├── IntegrityError                           bytes that do not hash to their id; a lying header
     ├── InvalidId             (also ValueError)  text that is not a 64-hex id
     ├── InvalidRefName        (also ValueError)  a name that breaks git's check-ref-format rules
     ├── RefConflict                              a compare-and-swap lost: the ref moved meanwhile
     ├── RefLocked                                a ref's lock is held (or stale: the message says how to clear it)
     ├── FormatError                              not a cas store, or one of a format this version cannot read
     ├── MaterializerError     (also TypeError)   no way to serialize a value; pickle refused; an extra missing
     ├── QueryError            (also ValueError)  a malformed catalog query
     ├── InvalidInput          (also ValueError, TypeError)  an argument refused before anything is written
     ├── ReadOnlyStore         (also PermissionError) a write to a store this process may only read
     └── BackendError          (also OSError)     the storage service failed (network, auth, missing bucket)

Foreign exceptions are translated at the boundary with ``raise ... from exc``; a
transient backend failure is a ``BackendError``, never "absent".
"""

from __future__ import annotations

import reprlib

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 60, 60


def shown(value: object, width: int = 40) -> str:
    """``value``'s repr for a message, at most ``width`` characters: bounded in depth and
    length, so a cyclic, 10,000-deep or huge argument is named too."""
    return _SHOWN.repr(value)[:width]


class CasError(Exception):
    """Root of every error cas raises on purpose."""


class ObjectNotFound(CasError, KeyError):
    """An object, artifact name or id that the store does not hold."""

    def __init__(self, what: str, message: str | None = None) -> None:
        self.what = what
        super().__init__(message or f"{what} not found")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class IsAFolder(CasError, IsADirectoryError):
    """A folder (artifact or entry) where a file's content was asked for."""

    def __init__(self, what: str, message: str) -> None:
        self.what = what
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class IntegrityError(CasError):
    """Stored bytes that are not what their id promises."""

    def __init__(self, object_id: str, message: str) -> None:
        self.object_id = object_id
        super().__init__(message)


class InvalidId(CasError, ValueError):
    """Text that is not a 64-character lowercase hex id."""


class InvalidRefName(CasError, ValueError):
    """A name that breaks git's check-ref-format rules."""

    def __init__(self, name: str, message: str) -> None:
        self.name = name
        super().__init__(message)


class RefConflict(CasError):
    """A compare-and-swap on a ref lost: its value was not the one expected."""

    def __init__(self, name: str, expected: str | None, actual: str | None, message: str) -> None:
        self.name = name
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class RefLocked(CasError):
    """A ref's lock is held by another writer, or was left behind by a dead one."""


class FormatError(CasError):
    """The root is not a cas store, or is one of an unknown format version."""


class MaterializerError(CasError, TypeError):
    """A value cas cannot serialize or deserialize as asked."""


class QueryError(CasError, ValueError):
    """A malformed catalog query."""


class InvalidInput(CasError, ValueError, TypeError):
    """An argument a call refuses, before it writes anything: a tag key that is too long,
    metadata that cannot be stored, a parent that is not a list of ids, ...

    ``argument`` names it (``"tags"``, ``"metadata"``, ``"parent_ids"``, ...), ``rule``
    says what it must be. Also a ``ValueError`` and a ``TypeError``: the builtins a wrong
    value and a wrong type raise, which callers may already catch.
    """

    def __init__(self, argument: str, rule: str) -> None:
        self.argument = argument
        self.rule = rule
        super().__init__(f"invalid {argument}: {rule}")


class ReadOnlyStore(CasError, PermissionError):
    """A write to a store whose folder this process cannot write (a read-only folder or
    mount, another user's files); reads of it work. ``path`` is what refused."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:  # OSError would format its own
        return str(self.args[0])


class BackendError(CasError, OSError):
    """The storage service failed; the original exception is the cause."""
