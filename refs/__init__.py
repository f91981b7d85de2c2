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

from .conditional import Conditional
from .errors import (
    InvalidId,
    InvalidRefName,
    NameConflict,
    RefConflict,
    RefError,
    RefLocked,
    RefNotFound,
)
from .ids import ANY, check_id
from .local import LocalConditional
from .log import LogEntry
from .memory import ProcessLocalConditional
from .names import check_ref_name
from .store import RefStore

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
