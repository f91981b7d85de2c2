"""The exception tree of the catalog.

::

    CatalogError                                  root: anything the catalog raises on purpose
     ├── FormatMismatch                           a catalog folder of another format (rebuild it)
     ├── CatalogDamaged                           files that are not a readable LMDB catalog (rebuild it)
     ├── InvalidInput         (also ValueError)   a record, event, id or argument that is malformed
     └── QueryError           (also ValueError)   a search query that does not parse (says where)

LMDB's own exceptions are translated at the boundary into ``CatalogError`` with
``raise ... from exc``; callers never need to import ``lmdb``.
"""

from __future__ import annotations


class CatalogError(Exception):
    """Root of every error the catalog raises on purpose."""


class FormatMismatch(CatalogError):
    """The catalog folder was written in another format; the index is derived, so the
    caller deletes it and rebuilds it from its events."""

    def __init__(self, path: str, found: bytes, message: str) -> None:
        self.path = path
        self.found = found
        super().__init__(message)


class CatalogDamaged(CatalogError):
    """The catalog folder's files are not a readable LMDB environment (overwritten,
    truncated, a lock file of garbage); the index is derived, so the caller sets the
    folder aside and rebuilds it from its events. ``path`` is the folder."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class InvalidInput(CatalogError, ValueError):
    """A record, event, id or argument that the catalog refuses, with the reason."""


class QueryError(CatalogError, ValueError):
    """A malformed search query.

    ``query`` is the text given, ``position`` the 0-based character offset where the
    problem was found; the message shows both.
    """

    def __init__(self, query: str, position: int, reason: str) -> None:
        self.query = query
        self.position = position
        self.reason = reason
        pointer = " " * position + "^"
        super().__init__(f"bad query at position {position}: {reason}\n  {query}\n  {pointer}")
