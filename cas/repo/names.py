"""A root's names (refs) with cas's errors: the refs package's ``RefStore``, each call
translated at this one boundary into cas's exception tree, so nothing above the
repository catches a leaf's errors itself."""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from cas import refs as _refs
from cas.errors import (
    IntegrityError,
    InvalidRefName,
    ObjectNotFound,
    RefConflict,
    RefLocked,
    shown,
)
from cas.refs.packed import RefState
from cas.storage import Storage

#: Called by the names between an update's claim and its publish (``refs``'
#: ``before_publish``): (name, history entry, whether to write durably).
BeforePublish = Callable[[str, _refs.LogEntry, bool], None]


@contextlib.contextmanager
def ref_errors() -> Iterator[None]:
    """Translate the refs package's errors into cas's tree, keeping the cause."""
    try:
        yield
    except _refs.InvalidRefName as exc:
        raise InvalidRefName(str(exc.name), str(exc)) from exc
    except _refs.RefConflict as exc:
        raise RefConflict(exc.name, exc.expected, exc.actual, str(exc)) from exc
    except _refs.RefLocked as exc:
        raise RefLocked(str(exc)) from exc
    except _refs.RefNotFound as exc:
        raise ObjectNotFound(str(exc.args[0]) if exc.args else "ref", str(exc)) from exc
    except _refs.RefError as exc:  # a damaged ref or history file, named in the message
        raise IntegrityError("ref", f"{exc}; run 'cas fsck'") from exc


def check_name(name: str) -> str:
    """``name`` if it follows git's ref-name rules, else :class:`InvalidRefName`."""
    if not isinstance(name, str):  # named here: any value, a cyclic or deep one too
        raise InvalidRefName(
            shown(name), f"a name must be a str, not {type(name).__name__} {shown(name)}"
        )
    with ref_errors():
        _refs.check_ref_name(name)
    return name


class Names:
    """Names -> artifact ids of one root: read, list, compare-and-swap, history."""

    def __init__(
        self, storage: Storage, *, fsync: bool = True, before_publish: BeforePublish | None = None
    ) -> None:
        self._storage = storage
        self._fsync = fsync
        self._before_publish = before_publish
        self._unsynced: Names | None = None
        hook = None
        if before_publish is not None:

            def hook(name: str, entry: _refs.LogEntry) -> None:
                before_publish(name, entry, fsync)

        with ref_errors():
            self.store = _refs.RefStore(
                storage.fs, storage.root, fsync=fsync,
                conditional=storage.conditional(durable=fsync), before_publish=hook,
            )  # fmt: skip

    def unsynced(self) -> Names:
        """The same names, written without a sync each (a batch publishes many, then
        syncs the storage once); where writes are durable anyway, these names."""
        if not self._fsync or self._storage.local_dir is None:
            return self
        if self._unsynced is None:
            self._unsynced = Names(self._storage, fsync=False, before_publish=self._before_publish)
        return self._unsynced

    @property
    def lock_timeout(self) -> float:
        return self.store.lock_timeout

    def read(self, name: str) -> str | None:
        with ref_errors():
            return self.store.read(name)

    def list(self, prefix: str = "") -> builtins.list[str]:
        with ref_errors():
            return self.store.list(prefix)

    def items(self, prefix: str = "") -> builtins.list[tuple[str, str]]:
        with ref_errors():
            return self.store.items(prefix)

    def set(
        self, name: str, new_id: str, *, expected: Any = _refs.ANY, message: str = ""
    ) -> str | None:
        with ref_errors():
            return self.store.set(name, new_id, expected=expected, message=message)

    def check_new(self, name: str) -> None:
        """``RefConflict`` now if a new ``name`` cannot be created (a parent or child of
        it is a name), before the caller writes anything."""
        with ref_errors():
            self.store.check_new(name)

    def delete(self, name: str, *, expected: Any = _refs.ANY, message: str = "") -> str:
        with ref_errors():
            return self.store.delete(name, expected=expected, message=message)

    def log(self, name: str) -> builtins.list[_refs.LogEntry]:
        """Every update of ``name``, newest first."""
        with ref_errors():
            return self.store.log(name)

    def log_names(self) -> builtins.list[str]:
        with ref_errors():
            return self.store.log_names()

    def state(self) -> RefState | None:
        """Every ref and history entry in a few listings (object stores), else None."""
        with ref_errors():
            return self.store.state()

    def prune_log(self, name: str, older_than: float) -> int:
        with ref_errors():
            return self.store.prune_log(name, older_than)

    def restore(self, name: str) -> tuple[bytes, str | None] | None:
        with ref_errors():
            return self.store.restore(name)

    def unpublished(self, name: str) -> tuple[_refs.LogEntry, str, bool | None, str] | None:
        with ref_errors():
            return self.store.unpublished(name)
