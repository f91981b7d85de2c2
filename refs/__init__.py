"""refs: names that resolve to 64-hex ids on any fsspec filesystem.

Changed only by compare-and-swap, with a write-once history of every update. A leaf
package: it never imports ``cas`` or ``catalog`` and knows nothing of objects.

>>> import fsspec
>>> rs = RefStore(fsspec.filesystem("memory"), "/doctest-refs")
>>> rs.set("models/fraud", "ab" * 32, expected=None) is None
True
>>> rs.read("models/fraud") == "ab" * 32
True

See docs/refs.md for the name rules, the history format and each backend's guarantee.
"""

from cas.refs.conditional import Conditional
from cas.refs.errors import (
    InvalidId,
    InvalidRefName,
    NameConflict,
    RefConflict,
    RefError,
    RefLocked,
    RefNotFound,
)
from cas.refs.ids import ANY, check_id
from cas.refs.local import LocalConditional
from cas.refs.log import LogEntry
from cas.refs.memory import ProcessLocalConditional
from cas.refs.names import check_ref_name
from cas.refs.store import RefStore

__all__ = [
    "ANY",
    "Conditional",
    "InvalidId",
    "InvalidRefName",
    "LocalConditional",
    "LogEntry",
    "NameConflict",
    "ProcessLocalConditional",
    "RefConflict",
    "RefError",
    "RefLocked",
    "RefNotFound",
    "RefStore",
    "check_id",
    "check_ref_name",
]
